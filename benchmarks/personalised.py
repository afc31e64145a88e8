"""The personalised evaluation (docs/EVALUATION.md): the global model alone and with the
personal layer, as each sender types the second half of their messages.

    python benchmarks/personalised.py [CHECKPOINT] [--split test|valid]
    python benchmarks/personalised.py [CHECKPOINT] --tune          # the grid, on valid only
    python benchmarks/personalised.py [CHECKPOINT] --tune --adapt  # adapting or not, valid
    python benchmarks/personalised.py [CHECKPOINT] --compare       # and with unigram scaling
    python benchmarks/personalised.py [CHECKPOINT] --memory        # and with the memory
    python benchmarks/personalised.py [CHECKPOINT] --latency       # keystroke latency
    python benchmarks/personalised.py [CHECKPOINT] --finetune part=lstm,lr=1e-3 [--alone]
        # and the layer over the global model fine-tuned on each sender's history

Weights are tuned with `--tune` on `valid` senders only (it refuses `test`); the chosen
weights are the defaults of model.personal.PersonalWeights, which the plain run uses.
"""
from __future__ import annotations

import os

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")  # one thread, as EVALUATION.md measures (before numpy)

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, fields, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data import load_split  # noqa: E402
from device_model.finetune import FineTune  # noqa: E402
from model.compress import load_any  # noqa: E402
from model.evaluate import machine  # noqa: E402
from model.paths import PRETRAINED_MODEL, ROOT, TOKENIZER_PATH  # noqa: E402
from model.personal import PersonalModel, PersonalWeights  # noqa: E402
from model.personal_eval import MIN_MESSAGES, evaluate_personalised, markdown  # noqa: E402
from model.predictor import LSTMScorer, Predictor  # noqa: E402
from model.tokenizer import WordTokenizer  # noqa: E402

# The tuning grid, in two stages on `valid` (a coordinate search): first the n-gram levels
# (d, theta of the bigram and trigram levels) and the sharpness, with no unigram or recency
# term; then, with the best levels, the sharpness again with the unigram and recent-words
# weights.
STAGE1 = {"levels": tuple(((0.8, t2), (0.8, t3)) for t2 in (10.0, 20.0, 40.0)
                          for t3 in (0.5, 2.0, 4.0)),
          "sharpness": (1.0, 0.7)}
STAGE2 = {"sharpness": (0.5, 0.7), "gamma": (0.0, 0.05), "recency": (0.0, 0.05)}
# What the device learns of the person (PersonalWeights.adapt, gate), the other weights as
# chosen: `--tune --adapt` (adapt () with gate None is the layer without adapting).
ADAPT = {"adapt": ((), PersonalWeights().adapt), "gate": (None, 0.0, 1.0, 2.0), "prior": (0.0,)}
PRIOR = {"prior": (0.0, 5.0, 20.0)}  # `--tune --adapt --prior`: the head start of s = 0.7
SCALED = replace(PersonalWeights(), scaling=0.3)  # `--compare`: with the unigram scaling
WITH_MEMORY = replace(PersonalWeights(), memory=0.1)  # `--memory`: with the memory of the
# person's contexts (k 32, T 10: chosen on valid, not kept: BENCHMARKS.md, "Session 9")
TARGETS = {"top1": 0.02, "macro_top1": 0.01, "top3": 0.03, "ksr": 0.015}
MAX_LOSS = 0.005  # no sender with 50+ history messages worse by more than this (top-1)


def grid(spec: dict[str, tuple], base: PersonalWeights = PersonalWeights()
         ) -> list[PersonalWeights]:
    """Every combination of `spec`'s values, the other fields as in `base`."""
    names = list(spec)
    return [replace(base, **dict(zip(names, values)))
            for values in itertools.product(*(spec[n] for n in names))]


def objective(summary: dict) -> tuple[bool, float]:
    """(no sender with 50+ history messages loses more than 0.5 points of top-1, how far
    the weakest target is met: 1.0 when all are exactly met); the larger the better."""
    worst = summary["worst_sender_gain_history_50"]
    return (worst is None or worst >= -MAX_LOSS,
            min(summary["gain"][k] / t for k, t in TARGETS.items()))


def latency(checkpoint: Path, tokenizer: Path, keystrokes: int) -> dict:
    """Keystroke latency of the Predictor (the NumPy runtime, one thread): the global model
    alone, with the personal layer, and as the app's strip (the clean word list and typo
    corrections too) with it; the personal model is that of the `test` sender with the most
    messages
    (the largest personal model there), on the same keystrokes: the second half of that
    sender's messages typed character by character, the personal layer learning each
    message after it is typed (its first half learned before, message by message as the
    device learns them, so its adaptation is the device's)."""
    device = max(load_split("test"), key=lambda d: len(d.messages))
    half = len(device.messages) // 2
    typed, n = [], 0
    for message in device.messages[half:]:
        typed.append(message)
        n += len(message)
        if n >= keystrokes + 100:
            break
    found = {"sender_messages": len(device.messages)}
    for name in ("global", "personal", "keyboard + personal"):
        predictor = Predictor.from_checkpoint(checkpoint, tokenizer)
        if name == "keyboard + personal":  # the app's strip: clean words and corrections
            predictor = Predictor.for_keyboard(predictor.scorer, predictor.tokenizer)
        if name != "global":  # the first half learned as the device learns (adapting too)
            person = PersonalModel()
            predictor.set_personal(person)
            for message in device.messages[:half]:
                predictor.learn(message)
            found.update(personal_words=person.total, personal_distinct_words=len(
                person.unigrams), sharpness=predictor.personal.sharpness(),
                gated=predictor.personal.gated())
        wall, cpu, learn = [], [], []
        for message in typed:
            for i in range(1, len(message) + 1):
                start, start_cpu = time.perf_counter(), time.thread_time()
                predictor.suggest(message[:i], 3)
                cpu.append(time.thread_time() - start_cpu)
                wall.append(time.perf_counter() - start)
            start = time.perf_counter()
            predictor.learn(message)
            learn.append(time.perf_counter() - start)
        ms, cpu_ms = np.array(wall[100:]) * 1000, np.array(cpu[100:]) * 1000
        found[name] = {"keystrokes": len(ms), "median_ms": float(np.median(ms)),
                       "p99_ms": float(np.percentile(ms, 99)),
                       "cpu_median_ms": float(np.median(cpu_ms)),
                       "cpu_p99_ms": float(np.percentile(cpu_ms, 99)),
                       "learn_median_ms": float(np.median(learn) * 1000),
                       "learn_max_ms": float(np.max(learn) * 1000)}
    return found


def _run(scorer: LSTMScorer, tokenizer: WordTokenizer, devices: list,
         weights: list[PersonalWeights | None],
         tunes: list[FineTune | None] | None = None) -> list[dict]:
    result = evaluate_personalised(scorer, tokenizer, devices, weights,
                                   progress=sys.stderr.isatty(), fine_tunes=tunes)
    return [result.summary(i) for i in range(len(weights))]


def fine_tune_spec(text: str) -> FineTune:
    """`--finetune part=lstm,lr=1e-3,max_epochs=5`: FineTune's fields, the others default."""
    types = {f.name: f.type for f in fields(FineTune)}
    found = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        kind = types.get(name.strip())
        if kind is None:
            raise argparse.ArgumentTypeError(f"{name!r} is not one of {sorted(types)}")
        value = value.strip()
        found[name.strip()] = (value if kind == "str" else value.lower() in ("1", "true", "yes")
                               if kind == "bool" else int(value) if kind == "int"
                               else float(value))
    try:
        return FineTune(**found)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _label(summary: dict) -> str:
    tune = summary.get("fine_tune")
    layer = "the global model" if summary["weights"] is None else f"weights {summary['weights']}"
    if tune is None:
        return layer
    return f"{layer}, fine-tuned: {FineTune(**tune).label()}; {summary['fine_tuning']}"


def _stage1(path: Path) -> list[dict]:
    """Stage 1's summaries from an earlier --tune run's JSON (same grid, same split)."""
    wanted = [asdict(w) for w in grid(STAGE1)]
    found = [s for s in json.loads(path.read_text())["summaries"]
             if _plain(s["weights"]) in map(_plain, wanted)]
    if len(found) != len(wanted):
        raise SystemExit(f"{path} does not hold stage 1 of this grid")
    return found


def _plain(weights: dict) -> str:
    return json.dumps(weights, sort_keys=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", nargs="?", type=Path, default=PRETRAINED_MODEL)
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER_PATH)
    parser.add_argument("--split", choices=("valid", "test"), default=None,
                        help="default: test (valid with --tune)")
    parser.add_argument("--tune", action="store_true",
                        help="the two-stage grid (STAGE1, STAGE2) on valid: the ranking")
    parser.add_argument("--adapt", action="store_true",
                        help="with --tune: only the adaptation grid (ADAPT) over the defaults")
    parser.add_argument("--prior", action="store_true",
                        help="with --tune --adapt: the PRIOR grid over the defaults instead")
    parser.add_argument("--resume", type=Path, default=None,
                        help="with --tune: take stage 1's figures from this earlier --tune JSON")
    parser.add_argument("--compare", action="store_true",
                        help="also the layer with the unigram scaling (b 0.3), same pass")
    parser.add_argument("--memory", action="store_true",
                        help="also the layer with the memory of the person's contexts "
                        "(a kNN-LM, lambda 0.1), same pass")
    parser.add_argument("--finetune", type=fine_tune_spec, action="append", default=[],
                        metavar="FIELD=VALUE,...",
                        help="also the default layer over the global model fine-tuned on each "
                        "sender's history (device_model.finetune.FineTune), same pass; "
                        "repeatable")
    parser.add_argument("--alone", action="store_true",
                        help="with --finetune: also each fine-tuned model without the layer")
    parser.add_argument("--latency", action="store_true", help="keystroke latency only")
    parser.add_argument("--keystrokes", type=int, default=2000)
    parser.add_argument("--max-senders", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.tune and args.split == "test":
        parser.error("--tune looks at valid senders only, never test")
    split = "valid" if args.tune else args.split or "test"
    torch.set_num_threads(1)
    tokenizer = WordTokenizer.load(args.tokenizer)
    model, _ = load_any(args.checkpoint, tokenizer.sha256)
    info = machine()
    print(f"machine: {info['nproc']} cores, {info['cpu']}; load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; model {args.checkpoint}")
    if args.latency:
        found = latency(args.checkpoint, args.tokenizer, args.keystrokes)
        print(json.dumps(found, indent=1))
        print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
        return 0
    devices = load_split(split)[:args.max_senders]
    scorer = LSTMScorer(model)
    start = time.perf_counter()
    if args.tune and args.adapt:
        summaries = _run(scorer, tokenizer, devices, grid(PRIOR if args.prior else ADAPT))
    elif args.tune:
        stage1 = _stage1(args.resume) if args.resume else _run(scorer, tokenizer, devices,
                                                               grid(STAGE1))
        best = max(stage1, key=objective)["weights"]
        base = replace(PersonalWeights(), levels=tuple(map(tuple, best["levels"])),
                       sharpness=best["sharpness"])
        summaries = stage1 + _run(scorer, tokenizer, devices, grid(STAGE2, base))
    else:
        weights: list[PersonalWeights | None] = [PersonalWeights(),
                                                 *([SCALED] if args.compare else []),
                                                 *([WITH_MEMORY] if args.memory else [])]
        tunes: list[FineTune | None] = [None] * len(weights)
        for tune in args.finetune:
            weights += [PersonalWeights(), *([None] if args.alone else [])]
            tunes += [tune, *([tune] if args.alone else [])]
        summaries = _run(scorer, tokenizer, devices, weights, tunes)
    seconds = time.perf_counter() - start
    out = args.json or ROOT / "runs" / f"personalised-{split}{'-tune' if args.tune else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"split": split, "checkpoint": str(args.checkpoint),
                               "min_messages": MIN_MESSAGES, "machine": info,
                               "seconds": round(seconds, 1), "summaries": summaries},
                              indent=1) + "\n")
    if args.tune:
        ranked = sorted(summaries, key=objective, reverse=True)
        shown = [f.name for f in fields(PersonalWeights)]
        print("| " + " | ".join(shown) + " | top-1 | macro top-1 | top-3 | KSR | worst 50+ "
              "| objective |")
        for s in ranked:
            w, d = s["weights"], s["gain"]
            print("| " + " | ".join(str(w[name]) for name in shown) + " | " +
                  " | ".join(f"{100 * d[k]:+.2f}" for k in TARGETS) +
                  f" | {100 * (s['worst_sender_gain_history_50'] or 0):+.2f} | "
                  f"{objective(s)[1]:.3f}{'' if objective(s)[0] else ' (a sender loses)'} |")
        print(f"chosen on valid: {ranked[0]['weights']}")
        print(markdown(ranked[0]))
    else:
        for summary in summaries:
            print(f"split {split}, {_label(summary)}")
            print(markdown(summary))
    print(f"{seconds:.0f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
