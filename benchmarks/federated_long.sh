#!/usr/bin/env bash
# The long federated run behind BENCHMARKS.md "(a)": no DP, 700 rounds x 25 devices, from the
# public pre-trained model, in four legs. Each leg restarts the fleet and a fresh server from
# the previous leg's model (server momentum starts afresh), so the server learning rate runs
# 1.0, 0.3, 1.0, 0.3: two constant stretches, each ending with a short low-lr stretch.
# Leg 3 used the fleet's own defaults for the client lr (0.5) and the mean (example-weighted);
# the other legs use 0.316 and a uniform mean. Only the last leg evaluates on `test`.
# About 2.2 hours on 2 cores. Needs the cached pre-trained model of BENCHMARKS.md
# (`python -m model.pretrain --force --epochs 8 --dropout 0.2 --threads 1`).
#
#   bash benchmarks/federated_long.sh [OUT_DIR]      (default: runs/federated-long)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/federated-long}
py=${PYTHON:-.venv/bin/python}
fleet=(--devices-per-round 25 --check-in by-data --max-examples 256 --clip-norm 10
       --server-optimizer fedavgm --server-momentum 0.9)

"$py" -m fleet.simulate "${fleet[@]}" --run-dir "$out/leg1" --rounds 300 \
    --client-lr 0.316 --weighting uniform --server-lr 1.0 --eval-every 25 --no-final-eval
"$py" -m fleet.simulate "${fleet[@]}" --run-dir "$out/leg2" --rounds 50 \
    --init-model "$out/leg1/model.safetensors" \
    --client-lr 0.316 --weighting uniform --server-lr 0.3 --eval-every 25 --no-final-eval
"$py" -m fleet.simulate "${fleet[@]}" --run-dir "$out/leg3" --rounds 300 \
    --init-model "$out/leg2/model.safetensors" \
    --client-lr 0.5 --weighting examples --server-lr 1.0 --eval-every 50
"$py" benchmarks/federated_quality.py --skip-dp "${fleet[@]}" --run-dir "$out/leg4" --rounds 50 \
    --init-model "$out/leg3/model.safetensors" \
    --client-lr 0.316 --server-lr 0.3 --eval-every 25
