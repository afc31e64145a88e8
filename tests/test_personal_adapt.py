"""How much of the personal layer suits the person, learned on the device (Adaptation): on
constructed streams the layer is never much worse at top-1 than the better of the global
model alone and the layer at a fixed sharpness; the unigram scaling lifts the words the person
uses more than the global model expects; the state is kept and deleted with the personal
store, and a removed word leaves it."""
import numpy as np
import pytest

from keyboard_app.personal_store import PersonalStore
from model.personal import (Adaptation, PersonalLayer, PersonalModel, PersonalWeights,
                            total_log_prob)

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
WORDS = ["a", "b", "see", "you", "at", "x"] + [f"c{k}" for k in range(10)]
VOCAB = SPECIALS + WORDS
ID = {w: i for i, w in enumerate(VOCAB)}
FIXED = PersonalWeights(adapt=(), gate=None, scaling=0.0)  # sharpness 0.7 always
ADAPTING = PersonalWeights()
SCALING = PersonalWeights(scaling=0.3)  # adapting, with the unigram scaling


def global_row(top: str, mass: float = 0.5) -> np.ndarray:
    """A global model's log-probs: `mass` on `top`, the rest spread evenly."""
    probs = np.full(len(VOCAB), (1 - mass) / (len(VOCAB) - 1))
    probs[ID[top]] = mass
    return np.log(probs)


def first(layer: PersonalLayer, row: np.ndarray, context: list[str]) -> str:
    scores, oov = layer.combine(row, context)
    best = 4 + int(np.argmax(scores[4:]))
    if len(oov) and oov.max() > scores[best]:
        return layer.oov_words[int(np.argmax(oov))]
    return VOCAB[best]


def type_stream(weights: PersonalWeights, messages: list[tuple[str, list[str]]],
                scored_from: int) -> tuple[int, int, PersonalModel]:
    """Learn `messages` in order as the device does (observe, then learn), each given as
    (text, the global model's top word before each of its words); top-1 hits of the layer
    and of the global model alone on the messages from `scored_from` on."""
    layer = PersonalLayer(PersonalModel(), VOCAB, weights)
    hits = glob = 0
    for n, (text, tops) in enumerate(messages):
        ws = text.split()
        rows = [global_row(t) for t in tops]
        if n >= scored_from:
            for i, word in enumerate(ws):
                hits += first(layer, rows[i], ws[:i]) == word
                glob += tops[i] == word
        layer.observe(rows, ws)
        layer.learn(text)
    return hits, glob, layer.model


def test_a_misleading_history_falls_back_to_the_global_model():
    # the history taught "a b"; now the person says "a c0", "a c1", ... and the global model
    # has each right (top-1 with half its mass), the layer's old bigram says "b"
    history = [("a b", ["a", "b"])] * 40
    stream = [(f"a c{k % 10}", ["a", f"c{k % 10}"]) for k in range(40)]
    fixed, glob, _ = type_stream(FIXED, history + stream, len(history))
    adapting, glob2, person = type_stream(ADAPTING, history + stream, len(history))
    assert glob == glob2 == 80
    assert fixed <= glob - 20  # the fixed layer keeps suggesting "b"
    assert adapting >= max(fixed, glob) - 2  # never much worse than the better one
    layer = PersonalLayer(person, VOCAB, ADAPTING)
    assert layer.gated() or layer.sharpness() < 0.7


def test_a_person_the_layer_helps_keeps_it():
    # the global model expects "x" everywhere; the person says the same phrase every time
    stream = [("see you at c3", ["x"] * 4)] * 30
    fixed, glob, _ = type_stream(FIXED, stream, 10)
    adapting, _, person = type_stream(ADAPTING, stream, 10)
    assert glob == 0 and fixed >= 70
    assert adapting >= max(fixed, glob) - 2
    layer = PersonalLayer(person, VOCAB, ADAPTING)
    assert not layer.gated() and layer.sharpness() == 1.0  # the most likely: all layer
    assert person.adaptation.layer_only > person.adaptation.global_only


def test_before_any_word_the_layer_is_the_fixed_one():
    person = PersonalModel()
    person.learn("see you at c3")
    row = global_row("x")
    fixed = PersonalLayer(person, VOCAB, FIXED).combine(row, ["see"])
    adapting = PersonalLayer(person, VOCAB, ADAPTING).combine(row, ["see"])
    assert np.allclose(fixed[0], adapting[0]) and np.allclose(fixed[1], adapting[1])


def test_the_sharpness_chosen_is_the_most_likely_one():
    person = PersonalModel()
    plain = PersonalWeights(prior=0.0)
    person.adaptation = Adaptation((0.3, 0.5, 0.7, 0.85, 1.0), [-9.0, -3.0, -5.0, -3.0, -8.0])
    assert PersonalLayer(person, VOCAB, plain).sharpness() == 0.5  # ties: the first
    person.adaptation.log_lik = [-1.0, -2.0, -1.0, -3.0, -4.0]
    assert PersonalLayer(person, VOCAB, plain).sharpness() == 0.7  # ties: the prior
    # a head start for the prior: another s must be more likely by more than that
    person.adaptation.log_lik = [-1.0, -2.0, -3.0, -3.0, -4.0]
    assert PersonalLayer(person, VOCAB, PersonalWeights(prior=2.5)).sharpness() == 0.7
    assert PersonalLayer(person, VOCAB, PersonalWeights(prior=2.0)).sharpness() == 0.7
    assert PersonalLayer(person, VOCAB, PersonalWeights(prior=1.0)).sharpness() == 0.3
    # weights over another grid start again from the prior
    other = PersonalWeights(adapt=(0.5, 0.7))
    assert PersonalLayer(person, VOCAB, other).sharpness() == 0.7


def test_bad_weights_are_refused():
    with pytest.raises(ValueError):
        PersonalWeights(adapt=(0.3, 0.5), sharpness=0.7)  # the prior must be in the grid
    with pytest.raises(ValueError):
        PersonalWeights(adapt=(0.0, 0.7))
    with pytest.raises(ValueError):
        PersonalWeights(gate=-1.0)
    with pytest.raises(ValueError):
        PersonalWeights(prior=-1.0)
    for scaling, prior in ((-0.1, 100.0), (1.5, 100.0), (0.3, 0.0)):
        with pytest.raises(ValueError):
            PersonalWeights(scaling=scaling, scaling_prior=prior)


def test_the_scaling_lifts_the_words_the_person_uses_more_than_expected():
    # the global model puts half its mass on "x" everywhere; the person never types "x"
    # and types "c3" four times in ten words
    scaled = PersonalWeights(adapt=(), gate=None, scaling=1.0, scaling_prior=10.0)
    layer = PersonalLayer(PersonalModel(), VOCAB, scaled)
    row = global_row("x")
    layer.observe([row] * 10, "c3 a c3 b c3 see c3 you at a".split())
    found = layer.model.adaptation
    assert found.words == 10 and found.observed["c3"] == 4
    q = np.exp(row)  # the global model's mean probability of each word here
    expected = np.log((4 + 10 * q[ID["c3"]]) / ((10 + 10) * q[ID["c3"]]))
    assert np.isclose(layer._log_scaling()[ID["c3"]], expected)
    scores, oov = layer.combine(row, [])
    unscaled, _ = PersonalLayer(layer.model, VOCAB, FIXED).combine(row, [])
    assert abs(total_log_prob(scores, oov)) < 1e-9  # still a distribution
    assert scores[ID["c3"]] > unscaled[ID["c3"]] + 0.5 and scores[ID["x"]] < unscaled[ID["x"]]
    # without the scaling the counts are not kept, and the layer is the fixed one
    plain = PersonalLayer(PersonalModel(), VOCAB, FIXED)
    plain.observe([row] * 2, ["c3", "a"])
    assert plain.model.adaptation is None


def test_the_adaptation_is_kept_and_deleted_with_the_store(tmp_path):
    store = PersonalStore(tmp_path / "personal.sqlite")
    layer = PersonalLayer(store.model, VOCAB, SCALING)
    for _ in range(8):
        layer.observe([global_row("x")] * 4, "see you at c3".split())
        store.record(layer.learn("see you at c3"))
    learned = store.model.adaptation.to_dict()
    assert learned["layer_only"] + learned["global_only"] > 0
    assert learned["words"] == 32 and learned["observed"]["c3"] == 8 and learned["expected"]
    store.close()
    again = PersonalStore(tmp_path / "personal.sqlite")
    assert again.model.adaptation.to_dict() == learned
    assert PersonalModel.from_dict(again.model.to_dict()).adaptation.to_dict() == learned
    again.delete_all()
    assert again.model.adaptation is None
    again.close()
    assert PersonalStore(tmp_path / "personal.sqlite").model.adaptation is None


def test_an_unreadable_adaptation_is_learned_again(tmp_path):
    store = PersonalStore(tmp_path / "personal.sqlite")
    store._db.execute("INSERT INTO settings VALUES ('adaptation', '{\"grid\": [0.5]}')")
    store.close()
    assert PersonalStore(tmp_path / "personal.sqlite").model.adaptation is None


def test_a_removed_word_leaves_the_scaling_counts(tmp_path):
    store = PersonalStore(tmp_path / "personal.sqlite")
    layer = PersonalLayer(store.model, VOCAB, SCALING)
    for _ in range(3):
        layer.observe([global_row("x")] * 3, ["see", "zorblat", "a"])
        store.record(layer.learn("see zorblat a"))
    assert store.model.adaptation.observed["zorblat"] == 3
    store.remove("zorblat")
    store.close()
    again = PersonalStore(tmp_path / "personal.sqlite")
    assert "zorblat" not in again.model.adaptation.observed
    assert again.model.adaptation.observed["see"] == 3
    again.close()
    assert b"zorblat" not in (tmp_path / "personal.sqlite").read_bytes()
