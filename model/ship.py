"""`python -m model.ship`: the public pre-trained model as the package ships it.

Reads the float32 model `python -m model.pretrain` left in the cache, measures it and its
int8 form on a split (`test` by default: these are the shipped model's final figures),
and writes model/shipped/: model.int8.safetensors (the command that trained it, its
training figures and these measurements in its metadata), tokenizer.json, model.json (the
same metadata, readable) and suggestion_words.json (the strip's clean word list for this
vocabulary, so the phone needs no wordfreq).

    python -m model.ship [--source .cache/pretrained] [--out model/shipped] [--split test]
        [--command "python -m model.pretrain ..."]
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

from data import load_split
from device_model.files import write_atomic
from model.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint
from model.compress import model_from_int8_bytes, model_to_int8_bytes
from model.evaluate import evaluate_scorer
from model.paths import PRETRAINED_DIR, SHIPPED_DIR, SHIPPED_MODEL, SHIPPED_TOKENIZER
from model.suggestion_words import SHIPPED_WORDS, SuggestionWords
from model.tokenizer import TokenizerError, WordTokenizer

FIGURES = ("top1", "top3", "top1_excl_unk", "ksr", "perplexity", "macro_top1")


def measure(model, tokenizer: WordTokenizer, split: str) -> dict[str, float]:
    result = evaluate_scorer(model, tokenizer, load_split(split))
    return {k: round(float(result[k]), 6) for k in FIGURES} | {"words": result["words"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.ship",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=PRETRAINED_DIR)
    parser.add_argument("--out", type=Path, default=SHIPPED_DIR)
    parser.add_argument("--split", choices=("valid", "test", "none"), default="test",
                        help="where to measure both forms (none: write the files only)")
    parser.add_argument("--command", default=None,
                        help="the pre-training command (default: the one in the metadata)")
    args = parser.parse_args(argv)
    try:
        tokenizer = WordTokenizer.load(args.source / "tokenizer.json")
        model, meta = load_checkpoint(args.source / "model.safetensors", tokenizer.sha256)
    except (TokenizerError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    command = args.command or meta.training.get("command")
    if not command:
        parser.error("the checkpoint does not say how it was trained: give --command")
    int8_bytes = model_to_int8_bytes(model, meta)
    int8_model, _ = model_from_int8_bytes(int8_bytes, tokenizer.sha256)
    figures = {"split": args.split}
    if args.split != "none":
        print(f"measuring the float32 and int8 forms on {args.split} ...", file=sys.stderr)
        figures.update({"float32": measure(model, tokenizer, args.split),
                        "int8": measure(int8_model, tokenizer, args.split)})
    float_bytes = (args.source / "model.safetensors").stat().st_size
    shipped = {"form": "int8 (per-row symmetric, float32 scales; biases float32)",
               "float32_bytes": float_bytes, "int8_bytes": len(int8_bytes),
               "evaluation": figures, "data": "public split only (buckets 0-9)",
               "shipped_by": shlex.join(["python", "-m", "model.ship", *(
                   argv if argv is not None else sys.argv[1:])])}
    training = {**meta.training, "command": command, "shipped": shipped}
    meta = CheckpointMeta(meta.config, meta.tokenizer_sha256, meta.version, training)
    args.out.mkdir(parents=True, exist_ok=True)
    shipped_bytes = model_to_int8_bytes(model, meta)
    write_atomic(args.out / SHIPPED_MODEL.name, shipped_bytes, mode=0o644)
    shutil.copyfile(args.source / "tokenizer.json", args.out / SHIPPED_TOKENIZER.name)
    (args.out / "model.json").write_text(json.dumps(
        {"config": json.loads(meta.config.to_json()), "tokenizer_sha256": tokenizer.sha256,
         **training}, indent=2) + "\n")
    words = SuggestionWords.english(tokenizer.id_to_word)
    (args.out / SHIPPED_WORDS.name).write_text(words.to_json(tokenizer.sha256))
    print(f"shipped {args.out / SHIPPED_MODEL.name}: {len(shipped_bytes):,} bytes "
          f"(float32 {float_bytes:,})")
    if args.split != "none":
        f, q = figures["float32"], figures["int8"]
        print(f"{args.split}: top-1 float32 {f['top1']:.2%}, int8 {q['top1']:.2%}; top-3 "
              f"{f['top3']:.2%} / {q['top3']:.2%}; KSR {f['ksr']:.2%} / {q['ksr']:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
