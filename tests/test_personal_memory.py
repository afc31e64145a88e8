"""The memory of the person's contexts (a kNN-LM over one person's words, measured in the
personalised evaluation): the vote, the mixture, the keys, the evaluation with it."""

import numpy as np
import pytest
import torch

from data import load_split
from model.config import ModelConfig
from model.lstm import LSTMScorer, NextWordLSTM
from data import Device
from model.personal import PersonalLayer, PersonalModel, PersonalWeights
from model.personal_eval import evaluate_personalised
from model.personal_memory import StateMemory
from model.tokenizer import WordTokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer() -> WordTokenizer:
    messages = [m for d in load_split("public")[:30] for m in d.messages][:2000]
    return WordTokenizer.build(messages, vocab_size=600)


def _model(tokenizer, seed: int) -> NextWordLSTM:
    torch.manual_seed(seed)
    return NextWordLSTM(ModelConfig(vocab_size=tokenizer.vocab_size, embed_dim=16,
                                    hidden_size=32)).eval()


@pytest.fixture(scope="module")
def model(tokenizer) -> NextWordLSTM:
    return _model(tokenizer, 0)


def test_the_nearest_contexts_vote_for_the_words_that_followed():
    memory = StateMemory()
    memory.add(np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]]), ["cat", "cat", "dog"])
    vote = memory.vote(np.array([0.0, 0.05]), k=3, temperature=1.0)
    assert sum(vote.values()) == pytest.approx(1.0)
    assert vote["cat"] > 0.99 and vote["dog"] < 1e-10
    assert memory.vote(np.array([5.0, 5.0]), k=1, temperature=1.0) == {"dog": 1.0}
    assert StateMemory().vote(np.zeros(2), 3, 1.0) == {}


def test_the_memory_keeps_the_most_recent_words():
    memory = StateMemory(capacity=4)
    memory.add(np.eye(3), ["a", "b", "c"])
    memory.add(np.eye(3)[:2] * 2, ["d", "b"])
    assert memory.words == ["b", "c", "d", "b"] and len(memory.keys) == 4
    assert np.array_equal(memory.keys[0], np.array([0, 1, 0], np.float32))
    assert memory.vote(np.array([0.0, 0.0, 1.0]), 1, 1.0) == {"c": 1.0}
    with pytest.raises(ValueError, match="2 words need 2 keys"):
        memory.add(np.eye(3), ["x", "y"])
    with pytest.raises(ValueError, match="another model"):
        memory.add(np.eye(2), ["x", "y"])
    memory.clear()
    assert len(memory) == 0 and memory.vote(np.zeros(3), 1, 1.0) == {}


def _keys(tokenizer, model, texts):
    """(log-probs, keys) of each message as the evaluation takes them (whole messages)."""
    ids = [tokenizer.encode_message(t) for t in texts]
    found = dict((i, (logp, keys)) for i, logp, keys in
                 LSTMScorer(model).score_messages_with_keys(ids))
    return [found[i] for i in range(len(texts))]


def test_the_keys_are_the_states_the_model_steps_through(tokenizer, model):
    """The batched keys before each word are the LSTM outputs stepping the model gives,
    on the PyTorch and the NumPy runtime alike."""
    from device_model.lstm import NumpyLSTM
    from device_model.scorer import NumpyScorer
    texts = ["i love zorblat so much", "see you"]
    numpy_scorer = NumpyScorer(NumpyLSTM({k: v.detach().numpy().copy() for k, v in
                                          model.state_dict().items()}, model.config))
    batched = dict((i, keys) for i, _, keys in numpy_scorer.score_messages_with_keys(
        [tokenizer.encode_message(t) for t in texts]))
    scorer = LSTMScorer(model)
    for n, (text, (_, keys)) in enumerate(zip(texts, _keys(tokenizer, model, texts))):
        state = scorer.start()
        for i, word_id in enumerate(tokenizer.encode_message(text)[1:]):
            stepped = state[0][0, 0].numpy()  # the LSTM output after the words so far
            assert np.allclose(keys[i], stepped, atol=1e-6)
            assert np.allclose(batched[n][i], stepped, atol=1e-5)
            state = scorer.step(state, word_id)


def test_the_mixture_adds_the_vote_to_the_personal_words(tokenizer, model):
    """combine with a key: (1 - lambda) p + lambda vote on the words the memory voted for,
    still a distribution; a word the person removed gets nothing from it."""
    weights = PersonalWeights(memory=0.1)
    layer = PersonalLayer(PersonalModel(), tokenizer.id_to_word, weights, tokenizer.unk_id)
    layer.memory = StateMemory()
    texts = ["i love my zorblat", "i love my cat", "my zorblat is here"]
    for text, (_, keys) in zip(texts, _keys(tokenizer, model, texts)):
        layer.learn(text)
        layer.memory.add(keys[:len(text.split())], text.split())
    (log_probs, keys), = _keys(tokenizer, model, ["i love my"])
    context, key = ["i", "love", "my"], keys[3]
    without, without_oov = layer.combine(log_probs[3], context)
    scores, oov = layer.combine(log_probs[3], context, key)
    lam = weights.memory
    vote = layer.memory.vote(key, weights.memory_k, weights.memory_temperature)
    expected, expected_oov = np.exp(without) * (1 - lam), np.exp(without_oov) * (1 - lam)
    for word, weight in vote.items():
        if word in layer.word_to_id:
            expected[layer.word_to_id[word]] += lam * weight
        else:
            expected_oov[layer.oov_index(word)] += lam * weight
    assert "zorblat" in vote
    assert np.allclose(np.exp(scores), expected) and np.allclose(np.exp(oov), expected_oov)
    assert np.exp(scores).sum() + np.exp(oov).sum() == pytest.approx(1.0)
    layer.model.remove("zorblat")
    layer.refresh()
    after, after_oov = layer.combine(log_probs[3], context, key)
    assert "zorblat" not in layer.oov_words
    assert np.exp(after).sum() + np.exp(after_oov).sum() == pytest.approx(
        1 - lam * vote["zorblat"])


def test_the_evaluation_with_and_without_the_memory(tokenizer, model):
    """Weights without the memory score as before; with it, the same words, other ranks."""
    messages = [f"i love my {w} so much" for w in ("cat", "dog", "zorblat", "home")] * 6
    device = Device("someone", "valid", messages)
    result = evaluate_personalised(LSTMScorer(model), tokenizer, [device],
                                   [PersonalWeights(), PersonalWeights(memory=0.5)])
    alone = evaluate_personalised(LSTMScorer(model), tokenizer, [device], [PersonalWeights()])
    assert result.personal[0].per_sender == alone.personal[0].per_sender
    plain, mine = result.summary(0)["personal"], result.summary(1)["personal"]
    assert plain["words"] == mine["words"] > 0
    assert (plain["top1"], plain["top3"]) != (mine["top1"], mine["top3"])
