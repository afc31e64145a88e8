"""Typo recovery and keystroke savings of the suggestion strip (docs/EVALUATION.md,
"Typo recovery").

    .venv/bin/python benchmarks/typo_recovery.py [--split valid|test] [--model PATH]
        [--max-senders N] [--cost NAME=VALUE ...] [--json OUT]

Targets: every in-vocabulary word of at least 4 letters of the split's messages, each with
one typo (neighbour-key substitution, deletion, neighbour-key insertion or transposition,
equally likely; seeded from sha256(sender, message index, word index); never another
vocabulary word, redrawn up to 10 times, else skipped). The misspelled word is typed after
the true preceding words; recovery@3 is the share of targets whose intended word is among
the strip's three words (recovery@1: the middle one). Beside it, KSR on the correctly typed
text (the protocol's definition, with the strip's words) for: every vocabulary word (as
`model.evaluate`), the clean word list without corrections, and with corrections (the app).
A word shown in its standard spelling counts as the word ("don't" for "dont").

Details the protocol leaves open, decided here: "vocabulary" is the model's tokenizer
vocabulary; neighbouring keys are keys that touch on a QWERTY layout (rows offset by a
quarter and three quarters of a key); an inserted key neighbours a letter on either side of
the insertion; the seed is the first 8 bytes of sha256("sender\0message index\0word
index"), the message index counted over the sender's messages, the word index over the
message's scoring words; the typed word itself, when the strip offers it, takes one of the
three places.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data import load_split  # noqa: E402
from model.compress import load_any  # noqa: E402
from model.corrections import NEIGHBOURS, EditCosts  # noqa: E402
from model.evaluate import machine  # noqa: E402
from model.paths import SHIPPED_MODEL, SHIPPED_TOKENIZER  # noqa: E402
from model.predictor import LSTMScorer, Predictor  # noqa: E402
from model.suggestion_words import SuggestionWords  # noqa: E402
from model.tokenizer import WordTokenizer  # noqa: E402
from model.words import words  # noqa: E402

MIN_LETTERS, REDRAWS, K = 4, 10, 3


def typo_rng(sender: str, message: int, word: int) -> random.Random:
    seed = hashlib.sha256(f"{sender}\x00{message}\x00{word}".encode("utf-8")).digest()
    return random.Random(int.from_bytes(seed[:8], "big"))


def one_typo(word: str, rng: random.Random) -> str:
    """One typing error of the four kinds, equally likely (may return `word` unchanged)."""
    kind, n = rng.randrange(4), len(word)
    if kind == 0:  # a neighbouring key instead of the letter
        i = rng.randrange(n)
        keys = sorted(NEIGHBOURS.get(word[i], ()))
        return word[:i] + rng.choice(keys) + word[i + 1:] if keys else word
    if kind == 1:  # a letter left out
        i = rng.randrange(n)
        return word[:i] + word[i + 1:]
    if kind == 2:  # a neighbour of an adjacent letter typed as well
        i = rng.randrange(n + 1)
        around = [c for c in word[max(0, i - 1):i + 1] if c in NEIGHBOURS]
        if not around:
            return word
        return word[:i] + rng.choice(sorted(NEIGHBOURS[rng.choice(around)])) + word[i:]
    i = rng.randrange(n - 1)  # two adjacent letters swapped
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def misspell(word: str, rng: random.Random, vocabulary: set[str]) -> str | None:
    for _ in range(REDRAWS):
        typo = one_typo(word, rng)
        if typo != word and typo not in vocabulary:
            return typo
    return None


def shown_as(word: str, words_: SuggestionWords | None) -> set[str]:
    """The spellings that count as `word` on the strip."""
    if words_ is None:
        return {word}
    return {word, words_.standard.get(word, word)}


def ksr_keystrokes(predictor: Predictor, row, word: str, known: bool) -> int:
    """Keystrokes for `word` with the strip's 3 words (EVALUATION.md's KSR simulation)."""
    if not known:
        return len(word) + 1
    targets = shown_as(word, predictor.words)
    for k in range(len(word)):
        if targets & set(predictor.choices(row, word[:k], K)):
            return k + 1
    return len(word) + 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", choices=("valid", "test"), default="valid")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tokenizer", type=Path, default=None)
    parser.add_argument("--max-senders", type=int, default=None)
    parser.add_argument("--cost", action="append", default=[], metavar="NAME=VALUE",
                        help=f"edit costs ({', '.join(f.name for f in fields(EditCosts))})")
    parser.add_argument("--skip-ksr", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    model_path = args.model or SHIPPED_MODEL  # the model the app ships
    tokenizer_path = args.tokenizer or SHIPPED_TOKENIZER
    costs = replace(EditCosts(), **{k: float(v) for k, v in (c.split("=") for c in args.cost)})
    torch.set_num_threads(1)
    tokenizer = WordTokenizer.load(tokenizer_path)
    model, _ = load_any(model_path, tokenizer.sha256)
    scorer = LSTMScorer(model)
    clean = SuggestionWords.english(tokenizer.id_to_word)
    strips = {"every vocabulary word": Predictor(scorer, tokenizer),
              "clean words, no corrections": Predictor(scorer, tokenizer, words=clean),
              "clean words + corrections (app)": Predictor(scorer, tokenizer, words=clean,
                                                           corrections=True)}
    app = strips["clean words + corrections (app)"]
    app._corrector[1].costs = costs
    vocabulary = set(tokenizer.id_to_word[4:])

    devices = load_split(args.split)[:args.max_senders]
    rows = [(d.sender, m, ws) for d in devices
            for m, ws in enumerate(map(words, d.messages)) if ws]
    sequences = [[tokenizer.bos_id, *(tokenizer.word_to_id.get(w, tokenizer.unk_id)
                                      for w in ws), tokenizer.eos_id] for _, _, ws in rows]
    started = time.perf_counter()
    targets = skipped = hit3 = hit1 = unsuggestible = 0
    keys = {name: 0 for name in strips}
    chars = 0
    for n, log_probs in scorer.score_messages(sequences):
        sender, m, ws = rows[n]
        for i, word in enumerate(ws):
            row = log_probs[i]
            known = word in vocabulary
            chars += len(word) + 1
            if not args.skip_ksr:
                for name, predictor in strips.items():
                    keys[name] += ksr_keystrokes(predictor, row, word, known)
            if not known or len(word) < MIN_LETTERS:
                continue
            typo = misspell(word, typo_rng(sender, m, i), vocabulary)
            if typo is None:
                skipped += 1
                continue
            targets += 1
            shown = app.choices(row, typo, K)
            intended = shown_as(word, clean)
            hit3 += bool(intended & set(shown))
            hit1 += bool(shown) and shown[0] in intended
            unsuggestible += not clean.mask[clean.word_to_id[word]] and word not in clean.standard
    seconds = time.perf_counter() - started
    result = {
        "split": args.split, "model": str(model_path), "senders": len(devices),
        "targets": targets, "skipped": skipped, "recovery_at_3": hit3 / targets,
        "recovery_at_1": hit1 / targets, "targets_not_in_clean_list": unsuggestible,
        "ksr": {name: (1 - k / chars if not args.skip_ksr else None)
                for name, k in keys.items()},
        "characters": chars, "costs": asdict(costs), "seconds": round(seconds, 1),
        "machine": machine()}
    print(f"{args.split}: {len(devices)} senders, {targets} single-typo targets "
          f"({skipped} skipped: every redraw was a vocabulary word)")
    print(f"recovery@3 {hit3 / targets:.2%}  recovery@1 {hit1 / targets:.2%}  "
          f"({unsuggestible} targets are not on the clean word list)")
    if not args.skip_ksr:
        for name, value in result["ksr"].items():
            print(f"KSR, {name}: {value:.2%}")
    info = result["machine"]
    print(f"{seconds:.0f} s; machine: {info['nproc']} cores, {info['cpu']}, load average "
          f"{os.getloadavg()[0]:.1f}")
    out = args.json or Path("runs") / f"typo-recovery-{args.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
