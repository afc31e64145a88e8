"""The offline evaluation (docs/EVALUATION.md, `model.evaluate`) of global models: during a
run on a set of `valid` senders, and afterwards on a whole split, several models at once."""
from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from data import Device, load_split


class Evaluator:
    """The offline evaluation (model.evaluate) of a global model on a set of devices."""

    KEYS = ("top1", "top3", "perplexity", "macro_top1", "top1_excl_unk", "ksr", "words")

    def __init__(self, tokenizer_json: str, devices: list[Device], threads: int) -> None:
        from model.tokenizer import WordTokenizer
        self.tokenizer = WordTokenizer.from_json(tokenizer_json)
        self.devices, self.threads = devices, threads

    def __call__(self, model_bytes: bytes) -> dict[str, float]:
        return self.on(model_bytes, self.devices)

    def on(self, model_bytes: bytes, devices: list[Device]) -> dict[str, float]:
        """The figures of the model in `model_bytes` on `devices`' messages."""
        import torch
        from model.checkpoint import model_from_bytes
        from model.evaluate import evaluate_scorer
        model, meta = model_from_bytes(model_bytes, tokenizer_sha256=self.tokenizer.sha256)
        old = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            result = evaluate_scorer(model, self.tokenizer, devices)
        finally:
            torch.set_num_threads(old)
        return {"model_version": meta.version, "senders": len(devices),
                **{k: result[k] for k in self.KEYS}}


FIGURES = ("top1", "top3", "ksr", "perplexity")


def held_out(devices: list[Device], max_words: int) -> list[Device]:
    """What each phone scores in an evaluation round: its history as the phone stores it
    (`keyboard_app.history`'s filters applied; the fleet's phones never trained, so all of
    it is held out), then its most recent messages within `max_words` words."""
    from federated.evaluation import select_messages
    from keyboard_app.history import filter_message
    out = []
    for d in devices:
        stored = [t for t in (filter_message(m)[0] for m in d.messages) if t is not None]
        out.append(Device(d.sender, d.role, select_messages(stored, max_words)))
    return out


def federated_figures(result: dict[str, Any]) -> dict[str, Any]:
    """An evaluation round's published aggregate of its first version, as a record: each
    figure (None when the noise hides it) with its 95% noise interval."""
    version = result["versions"][0]
    out: dict[str, Any] = {"source": "federated evaluation", "model_version": version["version"],
                           "senders": result["reports"], "words": version["sums"]["words"]}
    for name in FIGURES:
        e = version["figures"][name]
        out[name] = None if e is None else e["value"]
        out[name + "_ci"] = None if e is None else [e["ci_low"], e["ci_high"]]
    return out


def agreement(federated: dict[str, Any], central: dict[str, Any]) -> dict[str, Any]:
    """Federated against central evaluation of the same version on the same words: the
    difference of each figure and whether the central one lies in the noise interval."""
    out = {}
    for name in FIGURES:
        value, ci = federated[name], federated[name + "_ci"]
        out[name] = {"federated": value, "central": central[name],
                     "difference": None if value is None else value - central[name],
                     "within_interval": None if ci is None else
                     ci[0] - 1e-9 <= central[name] <= ci[1] + 1e-9}
    return out


def _evaluate_job(job: tuple[str, str, str, str, int]) -> dict[str, Any]:
    """In a worker: (name, 'ngram' or a checkpoint path, tokenizer path, split, senders)."""
    import torch
    torch.set_num_threads(1)
    from model.compress import load_any
    from model.evaluate import evaluate_scorer
    from model.ngram import KneserNey
    from model.tokenizer import WordTokenizer
    name, what, tokenizer_path, split, senders = job
    tokenizer = WordTokenizer.load(tokenizer_path)
    if what == "ngram":  # the baseline: trained on the public split only
        public = [m for d in load_split("public") for m in d.messages]
        scorer = KneserNey.from_messages(public, tokenizer)
    else:
        scorer = load_any(what, tokenizer.sha256)[0]  # float32 or the shipped int8
    devices = load_split(split)
    started = time.time()
    row = {"name": name, **evaluate_scorer(scorer, tokenizer,
                                           devices[:senders] if senders else devices)}
    row["eval_seconds"] = round(time.time() - started, 1)
    return row


def evaluate_split(models: list[tuple[str, str]], tokenizer: Path, split: str = "test",
                   senders: int = 0, workers: int = 2) -> list[dict[str, Any]]:
    """EVALUATION.md metrics on `split` (its first `senders`, 0: all) for each
    (name, 'ngram' or checkpoint path), `workers` models at a time, one thread each."""
    jobs = [(name, what, str(tokenizer), split, senders) for name, what in models]
    with ProcessPoolExecutor(min(workers, len(jobs)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_evaluate_job, jobs))


def personalised(model: Path, tokenizer: Path, max_senders: int) -> dict:
    """The personalised evaluation of `model` on `test` (the first `max_senders` if > 0)."""
    from model.checkpoint import load_checkpoint
    from model.personal import PersonalWeights
    from model.personal_eval import MIN_MESSAGES, evaluate_personalised
    from model.predictor import LSTMScorer
    from model.tokenizer import WordTokenizer
    words = WordTokenizer.load(tokenizer)
    lstm, _ = load_checkpoint(model, words.sha256)
    devices = [d for d in load_split("test")
               if len(d.messages) >= MIN_MESSAGES][:max_senders or None]
    result = evaluate_personalised(LSTMScorer(lstm), words, devices, [PersonalWeights()])
    summary = result.summary(0)
    summary.pop("per_sender_top1_gain")
    return summary
