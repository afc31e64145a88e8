"""The server's aggregation of one round called directly, without HTTP: CPU and wall time of
`aggregation_server.versions.build_version` (read 100 stored updates, their mean, the server
optimizer step, the new checkpoint written), on the same inputs for one or more source
trees, run in turn (tree A, tree B, A, B, ...) so that the machine's load falls on each alike.
CPU time (user + system, of the calling thread) is what the shared machine's load changes
least; `server_ingest.py` times the same call inside a running server.

    .venv/bin/python benchmarks/aggregation_cpu.py [--trees . /tmp/old] [--runs 4]
                                                   [--repeats 5] [--reports 100]

A tree is a checkout of this project (`git worktree add --detach /tmp/old 469a753` makes the
one before the issue-16 refactor); each run is a fresh process importing only that tree.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import inspect, json, os, sys, time
tree, data, repeats, reports = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, tree)
from pathlib import Path
from aggregation_server import strategy, versions
from aggregation_server.config import RoundConfig
from aggregation_server.db import ModelVersion
from aggregation_server.storage import BlobStore
assert versions.__file__.startswith(os.path.realpath(tree)), versions.__file__
blobs = BlobStore(Path(data))
base = ModelVersion(version=0, path="models/000000.safetensors")
config = RoundConfig.from_dict({"target_reports": reports, "min_reports": reports,
                                "secure_aggregation": False, "epsilon_budget": None})
updates = [strategy.StoredUpdate(name.split("-")[0], f"updates/1/{name}", 50, {"loss": 4.0})
           for name in sorted(os.listdir(Path(data) / "updates" / "1"))]
policy = ((strategy.FedAvgPolicy(),)  # after the refactor build_version takes the policy
          if "policy" in inspect.signature(versions.build_version).parameters else ())
shapes = blobs.shapes(base.path)
def build(version):
    return versions.build_version(blobs, shapes, 1, config, updates, base, version, None,
                                  *policy)
build(1)  # warm: imports, first reads
out = []
for k in range(repeats):
    wall, cpu = time.perf_counter(), time.thread_time()
    new = build(k + 1)
    out.append((time.perf_counter() - wall, time.thread_time() - cpu))
print(json.dumps({"wall": [w for w, _ in out], "cpu": [c for _, c in out],
                  "sha256": new.sha256}))
"""


def make_inputs(folder: Path, reports: int) -> None:
    """A random default-size model as version 0 and `reports` noised updates as the server
    stores them (the uploads' bytes), made as `server_ingest.py` makes them."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import server_ingest

    from federated.wire import Update, encode_update
    model, _, shapes = server_ingest.make_model(folder)
    (folder / "models").mkdir()
    model.rename(folder / "models" / "000000.safetensors")
    pool = server_ingest.deltas(shapes, 8, 1.0, 1.0 / np.sqrt(reports))
    (folder / "updates" / "1").mkdir(parents=True)
    for i in range(reports):
        body = encode_update(Update(pool[i % len(pool)], 1, 0, 50, {"loss": 4.0}))
        digest = hashlib.sha256(body).hexdigest()[:16]
        (folder / "updates" / "1" / f"d{i:04d}-{digest}.safetensors").write_bytes(body)


def run(tree: Path, data: Path, repeats: int, reports: int) -> dict:
    """One fresh process importing only `tree`: its build_version `repeats` times."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(tree), str(data), str(repeats),
                           str(reports)], cwd=tree, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    if done.returncode:
        raise RuntimeError(f"{tree}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def spread(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"median": round(statistics.median(ordered), 4), "min": round(ordered[0], 4),
            "max": round(ordered[-1], 4), "n": len(ordered)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trees", nargs="+", type=Path, default=[ROOT])
    p.add_argument("--runs", type=int, default=4, help="processes per tree, in turn")
    p.add_argument("--repeats", type=int, default=5, help="aggregations per process")
    p.add_argument("--reports", type=int, default=100)
    args = p.parse_args()
    trees = [t.resolve() for t in args.trees]
    results: dict[Path, list[dict]] = {t: [] for t in trees}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="pk-aggcpu-") as tmp:
        make_inputs(Path(tmp), args.reports)
        for _ in range(args.runs):
            for tree in trees:
                results[tree].append(run(tree, Path(tmp), args.repeats, args.reports))
                loads.append(os.getloadavg()[0])
    for tree, found in results.items():
        commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        print(json.dumps({"tree": str(tree), "commit": commit,
                          "sha256": sorted({r["sha256"][:12] for r in found}),
                          "cpu_s": spread([c for r in found for c in r["cpu"]]),
                          "wall_s": spread([w for r in found for w in r["wall"]]),
                          "run_cpu_medians": [round(statistics.median(r["cpu"]), 4)
                                              for r in found]}))
    print(json.dumps({"benchmark": "aggregation_cpu", "reports": args.reports,
                      "runs": args.runs, "repeats": args.repeats,
                      "load_average_1min": [min(loads), max(loads)]}))


if __name__ == "__main__":
    main()
