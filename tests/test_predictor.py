"""Predictor: cached state = recomputation, prefix completion, capitals, edge inputs, threads."""
import threading

import numpy as np
import pytest
import torch

from data import load_split
from model.checkpoint import CheckpointError, CheckpointMeta, save_checkpoint
from model.config import ModelConfig
from model.lstm import NextWordLSTM
from model.predictor import (MAX_CONTEXT, MAX_NODES, LSTMScorer, Predictor,
                             split_partial)
from model.tokenizer import SPECIALS, WordTokenizer
from model.words import words

torch.set_num_threads(1)
TEXT = ("Hey there how are you doing today. I think that we should go to the park "
        "and then maybe get some food later if you want to come with me")


@pytest.fixture(scope="module")
def tokenizer() -> WordTokenizer:
    messages = [m for d in load_split("public")[:30] for m in d.messages][:2000]
    return WordTokenizer.build(messages, vocab_size=600)


def tiny_model(tokenizer: WordTokenizer, seed: int = 0) -> NextWordLSTM:
    torch.manual_seed(seed)
    return NextWordLSTM(ModelConfig(vocab_size=tokenizer.vocab_size, embed_dim=16,
                                    hidden_size=32)).eval()


@pytest.fixture(scope="module")
def model(tokenizer) -> NextWordLSTM:
    return tiny_model(tokenizer)


def direct_scores(model: NextWordLSTM, tokenizer: WordTokenizer, context: list[str]) -> np.ndarray:
    """Log-probs after <bos> + context, one forward pass over the whole sequence."""
    ids = [tokenizer.bos_id] + [tokenizer.word_to_id.get(w, tokenizer.unk_id) for w in context]
    with torch.inference_mode():
        logits, _ = model(torch.tensor([ids]))
        return torch.log_softmax(logits[0, -1], dim=-1).numpy()


class CountingScorer(LSTMScorer):
    """The real LSTM scorer, counting its model steps and output-layer calls."""

    def __init__(self, model: NextWordLSTM) -> None:
        super().__init__(model)
        self.steps = self.outputs = 0

    def step(self, state, word_id):
        self.steps += 1
        return super().step(state, word_id)

    def log_probs(self, state):
        self.outputs += 1
        return super().log_probs(state)


def test_incremental_state_equals_full_recomputation(tokenizer, model):
    typing = Predictor(model, tokenizer)
    for n in range(1, len(TEXT) + 1):  # type character by character, checking every word end
        text = TEXT[:n]
        typing.suggest(text)
        if text.endswith(" "):
            expected = direct_scores(model, tokenizer, words(text))
            assert typing.next_word_scores(text) == pytest.approx(expected, abs=1e-5)
            assert Predictor(model, tokenizer).next_word_scores(text) == \
                pytest.approx(expected, abs=1e-5)


def test_step_costs_one_word_none_inside_a_word_none_on_backspace(tokenizer, model):
    scorer = CountingScorer(model)
    predictor = Predictor(scorer, tokenizer)
    for n in range(len("how are ") + 1):
        predictor.suggest("how are "[:n])
    base_steps, base_outputs = scorer.steps, scorer.outputs
    for text in ["how are y", "how are yo", "how are you"]:  # inside a word: nothing
        predictor.suggest(text)
    assert (scorer.steps, scorer.outputs) == (base_steps, base_outputs)
    predictor.suggest("how are you ")  # one more word: exactly one LSTM step
    assert scorer.steps == base_steps + 1
    after = predictor.next_word_scores("how are you ")
    for text in ["how are you", "how are yo", "how are ", "how are"]:  # backspacing: nothing
        predictor.suggest(text)
    assert (scorer.steps, scorer.outputs) == (base_steps + 1, base_outputs + 1)
    assert predictor.next_word_scores("how are you ") == pytest.approx(after)
    assert (scorer.steps, scorer.outputs) == (base_steps + 1, base_outputs + 1)


def test_editing_an_earlier_word_recomputes_from_there(tokenizer, model):
    predictor = Predictor(model, tokenizer)
    predictor.suggest("i like the park ")
    text = "i love the park "
    assert predictor.next_word_scores(text) == pytest.approx(
        direct_scores(model, tokenizer, words(text)), abs=1e-5)


def test_pasted_paragraph_reads_the_last_64_words(tokenizer, model):
    paragraph = " ".join([TEXT] * 5) + " "
    context = words(paragraph)
    assert len(context) > MAX_CONTEXT
    scores = Predictor(model, tokenizer).next_word_scores(paragraph)
    assert scores == pytest.approx(direct_scores(model, tokenizer, context[-MAX_CONTEXT:]),
                                   abs=1e-5)


def brute_force(model, tokenizer, context: list[str], prefix: str, k: int) -> list[str]:
    scores = direct_scores(model, tokenizer, context)
    cands = [i for i, w in enumerate(tokenizer.id_to_word) if i >= 4 and w.startswith(prefix)]
    return [tokenizer.id_to_word[i] for i in sorted(cands, key=lambda i: (-scores[i], i))[:k]]


@pytest.mark.parametrize("prefix", ["t", "th", "wh", "a", "go", "i'"])
def test_prefix_completion_is_the_best_words_with_the_prefix(tokenizer, model, prefix):
    predictor = Predictor(model, tokenizer)
    got = predictor.suggest("we should " + prefix, k=5)
    assert [g.lower() for g in got] == brute_force(model, tokenizer, ["we", "should"], prefix, 5)
    assert all(g.lower().startswith(prefix) for g in got)


def test_next_word_is_the_best_words_overall(tokenizer, model):
    got = Predictor(model, tokenizer).suggest("we should ", k=10)
    assert [g.lower() for g in got] == brute_force(model, tokenizer, ["we", "should"], "", 10)


def test_never_specials_and_fewer_only_when_fewer_words_exist(tokenizer, model):
    predictor = Predictor(model, tokenizer)
    everything = predictor.suggest("so ", k=tokenizer.vocab_size)
    assert len(everything) == tokenizer.vocab_size - len(SPECIALS)
    assert not set(everything) & set(SPECIALS)
    only = [w for w in tokenizer.id_to_word if w.startswith("yo")]
    assert 0 < len(only)
    assert len(predictor.suggest("so yo", k=len(only) + 5)) == len(only)
    assert predictor.suggest("so qqqzx") == []
    assert predictor.suggest("so ", k=0) == []


class TableScorer:
    """A context-free scorer with a fixed ranking: for testing the capitalisation rules."""

    def __init__(self, tokenizer: WordTokenizer, ranking: list[str]) -> None:
        self.vocab_size = tokenizer.vocab_size
        self.scores = np.full(self.vocab_size, -20.0, dtype=np.float32)
        for rank, word in enumerate(ranking):
            self.scores[tokenizer.word_to_id[word]] = -1.0 - rank

    def start(self):
        return 0

    def step(self, state, word_id):
        return state + 1

    def log_probs(self, state):
        return self.scores

    def score_messages(self, sequences):
        for n, seq in enumerate(sequences):
            yield n, np.tile(self.scores, (len(seq) - 1, 1))


@pytest.mark.parametrize("text, expected", [
    ("", ["I'm", "Hello", "I"]),
    ("ok. ", ["I'm", "Hello", "I"]),
    ("wow! ", ["I'm", "Hello", "I"]),
    ("sure? he", ["Hello", "Help"]),
    ("ok ", ["I'm", "hello", "I"]),
    ("ok he", ["hello", "help"]),
    ("ok He", ["Hello", "Help"]),
    ("ok HE", ["HELLO", "HELP"]),
    ("ok HeL", ["Hello", "Help"]),
    ("ok i", ["I'm", "I", "I've"]),
    ("ok I'", ["I'm", "I've"]),
    ("ok 😀 ", ["I'm", "hello", "I"]),
    ("😀 ", ["I'm", "Hello", "I"]),
])
def test_capitalisation(tokenizer, text, expected):
    ranking = ["i'm", "hello", "i", "help", "i've"]
    got = Predictor(TableScorer(tokenizer, ranking), tokenizer).suggest(text, k=3)
    assert got[:len(expected)] == expected


@pytest.mark.parametrize("text", ["", " ", "é", "héllo wörld ", "日本語のテキスト", "😀😀😀",
                                  "I ❤️ pizza 🍕 ", "don'", "'", "rock 'n", "\n\n\t",
                                  "Hi!\nHow are you?\n\nI was thinking... ", "İstanbul ",
                                  "a" * 5000])
def test_edge_inputs(tokenizer, model, text):
    got = Predictor(model, tokenizer).suggest(text)
    assert all(isinstance(s, str) and s for s in got)
    before, partial = split_partial(text)
    assert before + partial == text
    matching = sum(w.startswith(partial.lower()) for w in tokenizer.id_to_word[4:])
    assert len(got) == min(3, matching)


def test_very_long_text(tokenizer, model):
    text = (TEXT + " ") * (100_000 // len(TEXT) + 1)
    predictor = Predictor(model, tokenizer)
    assert len(text) > 100_000
    assert len(predictor.suggest(text)) == 3
    assert len(predictor.suggest(text + "th")) == 3
    assert len(predictor.suggest(text[:text.rindex(" ", 0, len(text) - 50) + 1])) == 3
    assert len(predictor.suggest(text + "wow what a day ")) == 3


def test_split_partial():
    assert split_partial("how are yo") == ("how are ", "yo")
    assert split_partial("how are ") == ("how are ", "")
    assert split_partial("don'") == ("", "don'")
    assert split_partial("rock 'n") == ("rock '", "n")
    assert split_partial("café") == ("café", "")


def test_set_model_from_another_thread(tokenizer, model):
    other = tiny_model(tokenizer, seed=1)
    predictor = Predictor(model, tokenizer)
    errors: list[BaseException] = []
    stop = threading.Event()

    def swap() -> None:
        try:
            for i in range(40):
                predictor.set_model(other if i % 2 == 0 else model)
        except BaseException as err:  # noqa: BLE001 - report any failure to the main thread
            errors.append(err)
        finally:
            stop.set()

    thread = threading.Thread(target=swap)
    thread.start()
    n = 0
    while not stop.is_set() or n < 50:
        assert len(predictor.suggest(TEXT[:n % len(TEXT) + 1] + " ")) == 3
        n += 1
    thread.join()
    assert not errors
    predictor.set_model(other)
    assert predictor.next_word_scores("hello ") == pytest.approx(
        direct_scores(other, tokenizer, ["hello"]), abs=1e-5)
    with pytest.raises(ValueError, match="ids"):
        predictor.set_model(NextWordLSTM(ModelConfig(vocab_size=50, embed_dim=8, hidden_size=16)))


def test_from_checkpoint(tokenizer, model, tmp_path):
    save_checkpoint(tmp_path / "m.safetensors", model,
                    CheckpointMeta(model.config, tokenizer.sha256))
    tokenizer.save(tmp_path / "tokenizer.json")
    predictor = Predictor.from_checkpoint(tmp_path / "m.safetensors", tmp_path / "tokenizer.json")
    assert predictor.suggest("we should ") == Predictor(model, tokenizer).suggest("we should ")
    WordTokenizer.build(["other words only"]).save(tmp_path / "other.json")
    with pytest.raises(CheckpointError, match="tokenizer"):
        Predictor.from_checkpoint(tmp_path / "m.safetensors", tmp_path / "other.json")


def test_long_typing_keeps_a_bounded_cache(tokenizer, model):
    predictor = Predictor(model, tokenizer)
    text = ""
    for word in (TEXT.split() * 12)[:MAX_NODES + 60]:
        text += word + " "
        predictor.suggest(text)
    assert len(predictor._states) <= MAX_NODES
    start = " ".join(TEXT.split()[:10]) + " "  # far behind the kept states: recomputed
    assert predictor.next_word_scores(start) == pytest.approx(
        direct_scores(model, tokenizer, words(start)), abs=1e-5)
