"""The personalised evaluation of docs/EVALUATION.md: a person typing over time.

For each sender with at least 20 messages: the personal layer learns the first half
(floor(n/2) messages), message by message as the device learns a sent one (a layer that
adapts first observes how well it and the global model predicted the message:
PersonalLayer.observe); the second half is typed in order, each message scored with what
was learned before it and then learned the same way. Every word of the second half is a target (top-1,
top-3, KSR; a word outside the global vocabulary is a hit when the personal layer suggests
it). The global model alone is scored on exactly the same words in the same pass, and any
number of personal weightings share one pass of the global model.

A weighting may come with local fine-tuning (`device_model.finetune.FineTune`, the device's
code on the NumPy runtime): after the history is learned (a device that trained overnight), a
copy of the global model is fine-tuned on the history messages and that weighting's layer
runs on top of it for the second half (the history itself was observed with the global model, as the device did when
each message was sent). A weighting of None is the (fine-tuned) model alone, without the layer.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm import tqdm

from data import Device
from device_model.finetune import FineTune, fine_tune
from device_model.lstm import NumpyLSTM
from device_model.scorer import NumpyScorer
from model.metrics import FIRST_WORD_ID, SUGGESTIONS, PrefixIndex
from model.personal import Adaptation, PersonalLayer, PersonalModel, PersonalWeights
from model.personal_memory import StateMemory
from model.lstm import LSTMScorer
from model.predictor import Scorer
from model.tokenizer import WordTokenizer
from model.words import words

MIN_MESSAGES = 20
HISTORY_BUCKETS = ((20, 49), (50, 199), (200, None))  # messages per sender
CHUNK = 256  # messages scored by the global model at a time


@dataclass
class Tally:
    """Hits and keystrokes of one way of suggesting, per sender."""

    per_sender: dict[str, list[int]] = field(default_factory=dict)  # words, top1, top3, chars, keys
    new_once: list[int] = field(default_factory=lambda: [0, 0, 0])  # targets, top-3, offered
    first_only: dict[str, list[int]] = field(default_factory=dict)  # sender -> words only this
    # way had as its first suggestion, words only the global model alone had

    def add(self, sender: str, words_: int, top1: int, top3: int, chars: int, keys: int) -> None:
        row = self.per_sender.setdefault(sender, [0, 0, 0, 0, 0])
        for i, v in enumerate((words_, top1, top3, chars, keys)):
            row[i] += v

    def result(self, senders: Sequence[str] | None = None) -> dict[str, float | int]:
        rows = [self.per_sender[s] for s in (senders or self.per_sender)
                if self.per_sender.get(s, [0])[0]]
        total = np.sum(rows, axis=0) if rows else np.zeros(5)
        return {"top1": total[1] / total[0] if total[0] else float("nan"),
                "top3": total[2] / total[0] if total[0] else float("nan"),
                "ksr": 1 - total[4] / total[3] if total[3] else float("nan"),
                "macro_top1": float(np.mean([r[1] / r[0] for r in rows])) if rows else float("nan"),
                "macro_top3": float(np.mean([r[2] / r[0] for r in rows])) if rows else float("nan"),
                "words": int(total[0]), "senders": len(rows)}

    def new_words(self) -> dict[str, float | int]:
        """Words outside the global vocabulary typed once before: how often the next use is
        among the 3 suggestions before its first letter, and offered before it is typed
        in full (it saves keystrokes)."""
        n, top3, offered = self.new_once
        return {"targets": n, "top3": top3 / n if n else float("nan"),
                "offered": offered / n if n else float("nan")}

    def sender_top1(self, sender: str) -> float:
        row = self.per_sender[sender]
        return row[1] / row[0]


class _Ranker:
    """Ranks and keystrokes of a target among vocabulary and personal words (EVALUATION.md)."""

    def __init__(self, tokenizer: WordTokenizer) -> None:
        self.word_to_id = {w: i for i, w in enumerate(tokenizer.id_to_word)
                           if i >= FIRST_WORD_ID}
        self.index = PrefixIndex(tokenizer.id_to_word)
        self._spans: dict[str, list[tuple[int, int]]] = {}

    def score(self, word: str, row: np.ndarray, oov_words: list[str], oov: np.ndarray,
              layer: PersonalLayer | None) -> tuple[int, int]:
        """(rank, keystrokes) of `word`; rank is SUGGESTIONS + 1 when it cannot be suggested."""
        wid = self.word_to_id.get(word)
        j = None
        if wid is None:
            j = layer.oov_index(word) if layer is not None else None
            if j is None or j >= len(oov):
                return SUGGESTIONS + 1, len(word) + 1
            target = oov[j]
        else:
            target = row[wid]
        rank = self._above(target, wid, j, row[self.index.ids], self.index.ids, oov, 0)
        if rank < SUGGESTIONS:
            return rank, 1
        spans = self._spans.get(word)
        if spans is None:
            spans = self._spans[word] = [self.index.span(word[:k]) for k in range(1, len(word))]
        for k, (lo, hi) in enumerate(spans, start=1):
            ids = self.index.ids[lo:hi]
            olo, ohi = layer.oov_span(word[:k]) if layer is not None and len(oov) else (0, 0)
            if self._above(target, wid, j, row[ids], ids, oov[olo:ohi], olo) < SUGGESTIONS:
                return rank, k + 1
        return rank, len(word) + 1

    @staticmethod
    def _above(target: float, wid: int | None, j: int | None, scores: np.ndarray,
               ids: np.ndarray, oov: np.ndarray, oov_start: int) -> int:
        """How many words rank above the target (ties: vocabulary first, then lower id)."""
        if wid is not None:
            vocab = int((scores > target).sum() + ((scores == target) & (ids < wid)).sum())
            return vocab + int((oov > target).sum())
        positions = np.arange(oov_start, oov_start + len(oov))
        return int((scores >= target).sum() + (oov > target).sum()
                   + ((oov == target) & (positions < j)).sum())


@dataclass
class PersonalisedResult:
    """The global model alone and each weighting, on the same words."""

    weights: list[PersonalWeights | None]  # None: no personal layer
    global_: Tally
    personal: list[Tally]
    history: dict[str, int]  # sender -> messages in all
    fine_tunes: list[FineTune | None] = field(default_factory=list)  # per weighting
    tuned: dict[FineTune, dict[str, dict]] = field(default_factory=dict)  # what each did, by
    # sender: kept (an adapted model, not the global one), epochs, held-out losses, seconds

    def summary(self, i: int = 0) -> dict:
        """Figures of weighting `i` against the global model (EVALUATION.md's report)."""
        senders = list(self.history)
        base, mine = self.global_.result(), self.personal[i].result()
        gains = {s: mine_t - base_t for s in senders
                 for base_t, mine_t in [(self.global_.sender_top1(s),
                                         self.personal[i].sender_top1(s))]}
        by_length = []
        for lo, hi in HISTORY_BUCKETS:
            group = [s for s in senders if self.history[s] >= lo and
                     (hi is None or self.history[s] <= hi)]
            by_length.append({"messages": f"{lo}-{hi}" if hi else f"{lo}+",
                              "senders": len(group),
                              "global": self.global_.result(group) if group else None,
                              "personal": self.personal[i].result(group) if group else None})
        heavy = [s for s in senders if self.history[s] // 2 >= 50]
        weights, tune = self.weights[i], self.fine_tunes[i] if self.fine_tunes else None
        return {"weights": asdict(weights) if weights is not None else None,
                "fine_tune": asdict(tune) if tune is not None else None,
                "fine_tuning": _tuning(self.tuned.get(tune)) if tune is not None else None,
                "global": base, "personal": mine,
                "gain": {k: mine[k] - base[k] for k in
                         ("top1", "top3", "ksr", "macro_top1", "macro_top3")},
                "senders_gaining": sum(g > 0.005 for g in gains.values()),
                "senders_losing": sum(g < -0.005 for g in gains.values()),
                "worst_sender_gain_history_50": min((gains[s] for s in heavy), default=None),
                "worst_sender_history_50": _worst(heavy, gains, self.personal[i].first_only,
                                                  self.history),
                "senders_history_50": len(heavy),
                "worst_sender_gain_messages_50": min(
                    (gains[s] for s in senders if self.history[s] >= 50), default=None),
                "by_history_length": by_length,
                "new_words_after_one_use": self.personal[i].new_words(),
                "per_sender_top1_gain": gains}


def _worst(senders: list[str], gains: dict[str, float], first_only: dict[str, list[int]],
           history: dict[str, int]) -> dict | None:
    """The sender of `senders` who loses most: messages, and the typed words where only
    the layer or only the global model alone had the word as its first suggestion."""
    if not senders:
        return None
    worst = min(senders, key=lambda s: gains[s])
    mine, theirs = first_only.get(worst, [0, 0])
    return {"messages": history[worst], "gain": gains[worst], "first_only_layer": mine,
            "first_only_global": theirs}


def _tuning(by_sender: dict[str, dict] | None) -> dict:
    """How often fine-tuning kept an adapted model, and what it cost."""
    rows = list((by_sender or {}).values())
    kept = [r for r in rows if r["kept"]]
    return {"fits": len(rows), "kept": len(kept),
            "seconds": round(sum(r["seconds"] for r in rows), 1),
            "max_seconds": round(max((r["seconds"] for r in rows), default=0.0), 2),
            "mean_epochs_kept": (float(np.mean([r["epochs"] for r in kept])) if kept
                                 else None),
            "held_out_gain_kept": (float(np.mean([r["base"] - r["best"] for r in kept]))
                                   if kept else None)}


def evaluate_personalised(scorer: Scorer, tokenizer: WordTokenizer, devices: Sequence[Device],
                          weights: Sequence[PersonalWeights | None],
                          min_messages: int = MIN_MESSAGES, progress: bool = False,
                          fine_tunes: Sequence[FineTune | None] | None = None
                          ) -> PersonalisedResult:
    """The protocol over `devices` (those with at least `min_messages`), every weighting;
    `fine_tunes[i]` (an LSTMScorer or a NumpyScorer) fine-tunes the global model under
    weighting i."""
    chosen = [d for d in devices if len(d.messages) >= min_messages]
    ranker = _Ranker(tokenizer)
    tunes = list(fine_tunes) if fine_tunes is not None else [None] * len(weights)
    if len(tunes) != len(weights):
        raise ValueError("one fine-tuning (or None) per weighting")
    result = PersonalisedResult(list(weights), Tally(), [Tally() for _ in weights],
                                {d.sender: len(d.messages) for d in chosen}, tunes,
                                {t: {} for t in tunes if t is not None})
    total = sum(len(words(m)) for d in chosen for m in d.messages[len(d.messages) // 2:])
    base = _numpy_model(scorer) if result.tuned else None
    with tqdm(total=total, unit="word", disable=not progress, leave=False,
              file=sys.stderr) as bar:
        for device in chosen:
            _evaluate_sender(scorer, tokenizer, device, result, ranker, bar, base)
    return result


def _numpy_model(scorer: Scorer) -> NumpyLSTM:
    """The global model on the device's runtime (what fine-tuning trains a copy of)."""
    if isinstance(scorer, NumpyScorer):
        return scorer.model
    if isinstance(scorer, LSTMScorer):
        return NumpyLSTM({k: v.detach().float().numpy().copy()
                          for k, v in scorer.model.state_dict().items()}, scorer.model.config)
    raise TypeError("fine-tuning needs the LSTM (LSTMScorer or NumpyScorer)")


def _sequences(tokenizer: WordTokenizer, rows: Sequence[tuple[str, list[str]]]
               ) -> list[list[int]]:
    return [[tokenizer.bos_id, *[tokenizer.word_to_id.get(w, tokenizer.unk_id) for w in ws],
             tokenizer.eos_id] for _, ws in rows if ws]


def _fine_tuned(scorer: Scorer, base: NumpyLSTM, tokenizer: WordTokenizer, device: Device,
                seen: int, result: PersonalisedResult, typed: int = 0
                ) -> dict[FineTune, Scorer]:
    """Each fine-tuning's model for this sender, trained on its first `seen` messages (the
    history, and with `every` the messages typed so far: `typed` of them); a sender whose
    held-out messages did not improve keeps the global model (`scorer`)."""
    found: dict[FineTune, Scorer] = {}
    history = _sequences(tokenizer, [(m, words(m)) for m in device.messages[:seen]])
    for tune in result.tuned:
        if typed and not (tune.every and typed % tune.every == 0):
            continue
        done = fine_tune(base, history, tune, tokenizer.pad_id)
        key = device.sender if not typed else f"{device.sender}@{typed}"
        result.tuned[tune][key] = {
            "kept": done.model is not None, "epochs": done.epochs, "base": done.base_loss,
            "best": done.best_loss, "seconds": done.seconds, "messages": seen}
        found[tune] = (scorer if done.model is None else
                       NumpyScorer(done.model, tokenizer.bos_id))
    return found


def _evaluate_sender(scorer: Scorer, tokenizer: WordTokenizer, device: Device,
                     result: PersonalisedResult, ranker: _Ranker, bar: tqdm,
                     base: NumpyLSTM | None = None) -> None:
    half = len(device.messages) // 2
    first = next((w for w in result.weights if w is not None), PersonalWeights())
    layer = PersonalLayer(PersonalModel(), tokenizer.id_to_word, first, tokenizer.unk_id)
    learned: list[Adaptation | None] = [None] * len(result.weights)  # each weighting's
    adapts = any(w is not None and w.adapts for w in result.weights)
    if (any(w is not None and w.memory for w in result.weights)
            and hasattr(scorer, "score_messages_with_keys")):
        layer.memory = StateMemory()  # keys from the global model, shared by the weightings
    scorers = {None: scorer}  # the model each weighting's layer runs on, by fine-tuning
    if not adapts and layer.memory is None:
        for message in device.messages[:half]:
            layer.model.learn(message)
        layer.refresh()
    for phase, messages in (("history", device.messages[:half]),
                            ("typed", device.messages[half:])):
        if phase == "typed":
            scorers.update(_fine_tuned(scorer, base, tokenizer, device, half, result))
        if phase == "history" and not adapts and layer.memory is None:
            continue
        models = result.fine_tunes if phase == "typed" else [None] * len(result.weights)
        size = min([CHUNK] + [t.every for t in models if t is not None and t.every])
        for start in range(0, len(messages), size):
            if phase == "typed" and start:
                scorers.update(_fine_tuned(scorer, base, tokenizer, device, half + start,
                                           result, start))
            chunk = messages[start:start + size]
            rows = [(m, words(m)) for m in chunk]
            sequences = _sequences(tokenizer, rows)
            keyed = {i: (logp, keys) for i, logp, keys in _with_keys(scorer, sequences)}
            scored = {None: {i: logp for i, (logp, _) in keyed.items()}}
            for key in set(models) - {None}:  # a sender kept the global model: same rows
                scored[key] = (scored[None] if scorers[key] is scorer else
                               dict(scorers[key].score_messages(sequences)))
            k = 0
            for message, ws in rows:
                if ws:
                    mine = [scored[t][k] for t in models]
                    if phase == "typed":
                        _score_message(device.sender, ws, scored[None][k], mine, layer,
                                       result, ranker, learned, keyed[k][1])
                        bar.update(len(ws))
                    _observe(ws, mine, layer, result.weights, learned)
                layer.learn(message)
                if ws:
                    if layer.memory is not None:
                        layer.memory.add(keyed[k][1][:len(ws)], ws)
                    k += 1


def _with_keys(scorer: Scorer, sequences: list[list[int]]):
    """(index, log-probs, keys or None) of each sequence, keys where the scorer has them."""
    if hasattr(scorer, "score_messages_with_keys"):
        yield from scorer.score_messages_with_keys(sequences)
    else:
        for i, logp in scorer.score_messages(sequences):
            yield i, logp, None


def _observe(ws: list[str], log_probs: Sequence[np.ndarray], layer: PersonalLayer,
             weights: Sequence[PersonalWeights | None],
             learned: list[Adaptation | None]) -> None:
    """Each weighting learns how much of the layer suits the person from one message (as
    the device does before it counts a sent message: PersonalLayer.observe), over its own
    model's log-probs `log_probs[n]`."""
    for n, w in enumerate(weights):
        if w is not None and w.adapts:
            layer.weights, layer.model.adaptation = w, learned[n]
            layer.observe(log_probs[n], ws)
            learned[n] = layer.model.adaptation


def _score_message(sender: str, ws: list[str], log_probs: np.ndarray,
                   mine: Sequence[np.ndarray], layer: PersonalLayer,
                   result: PersonalisedResult, ranker: _Ranker,
                   learned: list[Adaptation | None], states: np.ndarray | None = None) -> None:
    """Score one typed message: the global model alone (`log_probs`) and each weighting
    over its own model's log-probs (`mine`), with the global model's keys (`states`) before
    each word for the memory."""
    chars = sum(len(w) + 1 for w in ws)
    empty = np.zeros(0)
    tallies = [(result.global_, None, None, log_probs)] + [
        (t, w, a, rows) for t, w, a, rows in zip(result.personal, result.weights, learned,
                                                 mine)]
    once = [word not in ranker.word_to_id and layer.model.unigrams.get(word) == 1
            for word in ws]  # new words used once before this message
    global_first: list[bool] = []
    for tally, weights, adaptation, rows in tallies:
        top1 = top3 = keys = 0
        only = tally.first_only.setdefault(sender, [0, 0])
        if weights is not None:
            layer.weights, layer.model.adaptation = weights, adaptation
        for i, word in enumerate(ws):
            if weights is None:
                rank, k = ranker.score(word, rows[i], [], empty, None)
            else:
                row, oov = layer.combine(rows[i], ws[:i],
                                         states[i] if states is not None else None)
                rank, k = ranker.score(word, row, layer.oov_words, oov, layer)
            top1 += rank < 1
            top3 += rank < SUGGESTIONS
            if tally is result.global_:
                global_first.append(rank < 1)
            else:
                only[0] += rank < 1 and not global_first[i]
                only[1] += global_first[i] and not rank < 1
            keys += k
            if once[i]:
                tally.new_once[0] += 1
                tally.new_once[1] += rank < SUGGESTIONS
                tally.new_once[2] += k <= len(word)
        tally.add(sender, len(ws), top1, top3, chars, keys)


# --- the report ---------------------------------------------------------------------------
def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def markdown(summary: dict) -> str:
    """The table of BENCHMARKS.md: global against personal, then by history length."""
    g, p, d = summary["global"], summary["personal"], summary["gain"]
    keys = [("top1", "top-1"), ("top3", "top-3"), ("ksr", "KSR"), ("macro_top1", "macro top-1"),
            ("macro_top3", "macro top-3")]
    lines = ["| | " + " | ".join(t for _, t in keys) + " |", "|---" * (len(keys) + 1) + "|",
             "| global model alone | " + " | ".join(pct(g[k]) for k, _ in keys) + " |",
             "| with the personal layer | " + " | ".join(pct(p[k]) for k, _ in keys) + " |",
             "| gain (points) | " + " | ".join(f"{100 * d[k]:+.2f}" for k, _ in keys) + " |",
             "", _counts(summary), "",
             "| messages per sender | senders | words | global top-1 | personal top-1 | gain "
             "| global KSR | personal KSR | gain |", "|---" * 9 + "|"]
    for row in summary["by_history_length"]:
        if not row["senders"]:
            continue
        gl, pe = row["global"], row["personal"]
        lines.append(f"| {row['messages']} | {row['senders']} | {gl['words']:,} | "
                     f"{pct(gl['top1'])} | {pct(pe['top1'])} | "
                     f"{100 * (pe['top1'] - gl['top1']):+.2f} | {pct(gl['ksr'])} | "
                     f"{pct(pe['ksr'])} | {100 * (pe['ksr'] - gl['ksr']):+.2f} |")
    return "\n".join(lines)


def _counts(summary: dict) -> str:
    p, worst = summary["personal"], summary["worst_sender_gain_history_50"]
    text = (f"{p['senders']} senders, {p['words']:,} words; top-1 up by more than 0.5 points "
            f"for {summary['senders_gaining']} senders, down by more than 0.5 for "
            f"{summary['senders_losing']}")
    if worst is not None:
        text += (f"; worst top-1 change among the {summary['senders_history_50']} senders "
                 f"with 50+ history messages: {100 * worst:+.2f} points")
        who = summary.get("worst_sender_history_50")
        if who:
            text += (f" ({who['messages']} messages; of the words typed, "
                     f"{who['first_only_layer']} were the first suggestion only with the "
                     f"layer, {who['first_only_global']} only without it)")
    new = summary.get("new_words_after_one_use")
    if new and new["targets"]:
        text += (f". Words outside the global vocabulary used once before ({new['targets']:,} "
                 f"targets): among the 3 suggestions before the first letter "
                 f"{100 * new['top3']:.1f}% of the time, offered before being typed in full "
                 f"{100 * new['offered']:.1f}% (the global model alone: never)")
    return text + "."
