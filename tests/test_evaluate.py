"""Offline evaluation: a small train-then-evaluate run, batched = incremental, KSR = typing, CLI."""
import json
import numpy as np
import pytest
import torch

from data import load_split
from model.checkpoint import CheckpointMeta, save_checkpoint
from model.config import ModelConfig
from model.evaluate import evaluate_scorer, keystroke_texts, main, measure_latency
from model.lstm import NextWordLSTM
from model.metrics import NextWordMetrics
from model.ngram import KneserNey
from model.predictor import LSTMScorer, Predictor
from model.tokenizer import WordTokenizer
from model.train import TrainConfig, train
from model.words import words

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def public() -> tuple[WordTokenizer, list[str]]:
    messages = [m for d in load_split("public")[:30] for m in d.messages][:2000]
    return WordTokenizer.build(messages, vocab_size=600), messages


@pytest.fixture(scope="module")
def valid():
    return load_split("valid")[:6]


@pytest.fixture(scope="module")
def trained(public):
    tokenizer, messages = public
    torch.manual_seed(0)
    model = NextWordLSTM(ModelConfig(vocab_size=tokenizer.vocab_size, embed_dim=32,
                                     hidden_size=64, dropout=0.0))
    result = train(model, tokenizer.encode_messages(messages),
                   TrainConfig(epochs=5, batch_size=32, lr=1e-2, threads=1), progress=False)
    return model, result


class UnigramScorer:
    """Always the same distribution: word frequencies of the training messages."""

    def __init__(self, tokenizer: WordTokenizer, messages: list[str]) -> None:
        counts = np.ones(tokenizer.vocab_size)
        for ids in tokenizer.encode_messages(messages):
            np.add.at(counts, ids[1:], 1)
        self.vocab_size = tokenizer.vocab_size
        self.scores = np.log(counts / counts.sum()).astype(np.float32)

    def score_messages(self, sequences):
        for n, seq in enumerate(sequences):
            yield n, np.tile(self.scores, (len(seq) - 1, 1))


def test_small_train_then_evaluate_beats_a_unigram_guess(public, trained, valid):
    tokenizer, messages = public
    model, result = trained
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    lstm = evaluate_scorer(model, tokenizer, valid)
    unigram = evaluate_scorer(UnigramScorer(tokenizer, messages), tokenizer, valid)
    assert lstm["top1"] > unigram["top1"]
    assert lstm["perplexity"] < unigram["perplexity"]
    expected_words = sum(len(words(m)) for d in valid for m in d.messages)
    assert lstm["words"] == unigram["words"] == expected_words
    assert lstm["senders"] == len(valid)
    assert 0 <= lstm["top1"] <= lstm["top3"] <= lstm["top3_excl_unk"] <= 1
    assert 0 < lstm["ksr"] < 1


def test_batched_scores_equal_the_incremental_predictor(public, trained, valid):
    tokenizer, _ = public
    model, _ = trained
    messages = [m for m in valid[0].messages if words(m)][:12]
    metrics = NextWordMetrics(tokenizer.id_to_word)
    seqs = [[tokenizer.bos_id, *metrics.ids_of(words(m)).tolist(), tokenizer.eos_id]
            for m in messages]
    predictor = Predictor(model, tokenizer)
    batched = dict(LSTMScorer(model, batch_tokens=40).score_messages(seqs))  # several batches
    assert sorted(batched) == list(range(len(seqs)))
    for n, message in enumerate(messages):
        ws = words(message)
        for i in range(len(ws) + 1):
            assert batched[n][i] == pytest.approx(
                predictor.next_word_scores(" ".join(ws[:i]) + " "), abs=1e-4)


def typed_keystrokes(predictor: Predictor, ws: list[str]) -> int:
    """Type the words, tapping a suggestion as soon as it is the word (EVALUATION.md KSR)."""
    keys, text = 0, ""
    for w in ws:
        for k in range(len(w)):
            if w in [s.lower() for s in predictor.suggest(text + w[:k], 3)]:
                keys += k + 1
                break
        else:
            keys += len(w) + 1
        text += w + " "
    return keys


def test_keystroke_savings_equal_typing_with_the_predictor(public, valid):
    tokenizer, messages = public
    kn = KneserNey.from_messages(messages, tokenizer)
    sample = valid[:3]
    metrics = evaluate_scorer(kn, tokenizer, sample)
    predictor = Predictor(kn, tokenizer)
    keys = sum(typed_keystrokes(predictor, words(m)) for d in sample for m in d.messages)
    assert metrics["keystrokes"] == keys
    assert metrics["characters"] == sum(len(w) + 1 for d in sample for m in d.messages
                                        for w in words(m))


def test_ngram_beats_unigram(public, valid):
    tokenizer, messages = public
    kn = evaluate_scorer(KneserNey.from_messages(messages, tokenizer), tokenizer, valid)
    unigram = evaluate_scorer(UnigramScorer(tokenizer, messages), tokenizer, valid)
    assert kn["top1"] > unigram["top1"] and kn["perplexity"] < unigram["perplexity"]


def test_latency_is_measured_over_typed_keystrokes(public, trained, valid):
    tokenizer, _ = public
    texts = keystroke_texts(valid, 300)
    assert len(texts) == 300 and texts[0] == valid[0].messages[0][:1]
    result = measure_latency(Predictor(trained[0], tokenizer), valid, keystrokes=200, warmup=10)
    assert result["latency_keystrokes"] == 200
    assert 0 < result["latency_median_ms"] <= result["latency_p99_ms"]


def test_command_line(public, trained, tmp_path, capsys):
    tokenizer, _ = public
    model, _ = trained
    checkpoint = tmp_path / "tiny" / "model.safetensors"
    save_checkpoint(checkpoint, model, CheckpointMeta(model.config, tokenizer.sha256))
    tokenizer.save(tmp_path / "tokenizer.json")
    out = tmp_path / "eval.json"
    assert main([str(checkpoint), "--ngram", "--split", "valid", "--max-senders", "2",
                 "--tokenizer", str(tmp_path / "tokenizer.json"), "--json", str(out),
                 "--latency-keystrokes", "50"]) == 0
    printed = capsys.readouterr().out
    assert "tiny/model" in printed and "kn3-public" in printed and "KSR" in printed
    report = json.loads(out.read_text())
    assert report["split"] == "valid" and report["machine"]["nproc"] >= 1
    assert [r["name"] for r in report["rows"]] == ["tiny/model", "kn3-public"]
    for row in report["rows"]:
        assert row["senders"] == 2 and row["latency_keystrokes"] == 50
        for key in ("top1", "top3", "top1_excl_unk", "top3_excl_unk", "perplexity", "ksr",
                    "macro_top1", "macro_top3", "latency_median_ms", "latency_p99_ms"):
            assert np.isfinite(row[key])
    assert report["rows"][0]["words"] == report["rows"][1]["words"]


def test_command_line_rejects_bad_input(public, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--split", "valid"])
    assert "CHECKPOINT" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--ngram", "--max-senders", "0"])
    assert "--max-senders" in capsys.readouterr().err
    public[0].save(tmp_path / "tokenizer.json")
    (tmp_path / "broken.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"{}")
    assert main([str(tmp_path / "broken.safetensors"),
                 "--tokenizer", str(tmp_path / "tokenizer.json")]) == 1
    assert "broken.safetensors" in capsys.readouterr().err
    assert main(["--ngram", "--tokenizer", str(tmp_path / "missing.json")]) == 1
    assert "not found" in capsys.readouterr().err
