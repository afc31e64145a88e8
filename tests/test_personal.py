"""The personal layer: counts, the mixture with the global model, the Predictor hook (and
its adaptation at Send), the dictionary file, and the personalised evaluation against the
plain metrics."""
import math

import numpy as np
import pytest
import torch

from data import Device, load_split
from model.config import ModelConfig
from model.evaluate import evaluate_scorer
from model.lstm import NextWordLSTM
from model.ngram import KneserNey
from model.personal import (BOS, DictionaryError, PersonalLayer, PersonalModel,
                            PersonalWeights, dictionary_text, parse_dictionary,
                            total_log_prob)
from model.personal_eval import evaluate_personalised, markdown
from model.predictor import LSTMScorer, Predictor
from model.tokenizer import WordTokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer() -> WordTokenizer:
    messages = [m for d in load_split("public")[:30] for m in d.messages][:2000]
    return WordTokenizer.build(messages, vocab_size=600)


@pytest.fixture(scope="module")
def model(tokenizer) -> NextWordLSTM:
    torch.manual_seed(0)
    return NextWordLSTM(ModelConfig(vocab_size=tokenizer.vocab_size, embed_dim=16,
                                    hidden_size=32)).eval()


def test_learning_counts_words_and_short_contexts():
    person = PersonalModel()
    grams = person.learn("Met Zorblat at the iPhone store, zorblat again")
    assert person.total == 8
    assert person.unigrams["zorblat"] == 2 and person.unigrams["the"] == 1
    assert person.followers[(BOS,)] == {"met": 1}
    assert person.followers[("met",)] == {"zorblat": 1}
    assert person.followers[("met", "zorblat")] == {"at": 1}
    assert ("store", "zorblat", "again") in grams and (BOS, "met") in grams
    assert len(grams) == 8 + 8 + 7  # unigrams, bigrams, trigrams
    assert person.form("iphone") == "iPhone"
    assert person.form("zorblat") == "zorblat"  # written lower case mid-message last
    assert person.form("met") == "met"  # a capital at the start of a message says nothing
    person.learn("ok. Sure thing! Zorblat says hi")
    assert "sure" not in person.forms  # nor at the start of a sentence inside one
    assert person.form("zorblat") == "zorblat"
    person.remember_recent(["one", "two", "three", "Not A Word"])
    assert list(person.recent)[-3:] == ["one", "two", "three"] and "three" not in person.unigrams


def test_a_word_too_long_is_skipped_and_breaks_the_context():
    person = PersonalModel()
    person.learn("see " + "a" * 60 + " you")
    assert "a" * 60 not in person.unigrams and person.total == 2
    assert person.followers == {(BOS,): {"see": 1}}


def test_removing_a_word_forgets_every_context_it_is_in():
    person = PersonalModel()
    person.learn("we met zorblat at the park")
    person.learn("zorblat said hi")
    assert person.remove("zorblat") == 2
    assert "zorblat" not in person.unigrams and person.total == 7
    assert all("zorblat" not in (*c, *f) for c, f in person.followers.items())
    assert ("we",) in person.followers and person.followers[("at",)] == {"the": 1}


def test_to_dict_round_trip():
    person = PersonalModel()
    person.learn("Hello there Zorblat, hello iPhone")
    again = PersonalModel.from_dict(person.to_dict())
    assert dict(again.grams()) == dict(person.grams())
    assert again.forms == person.forms and again.total == person.total


def test_the_mixture_is_a_distribution_and_empty_is_the_global_model(tokenizer, model):
    scorer = LSTMScorer(model)
    logp = scorer.log_probs(scorer.step(scorer.start(), tokenizer.word_to_id["i"]))
    empty = PersonalLayer(PersonalModel(), tokenizer.id_to_word)
    combined, oov = empty.combine(logp, ["i"])
    np.testing.assert_allclose(combined, logp, rtol=0, atol=1e-5)
    assert len(oov) == 0
    person = PersonalModel()
    for text in ("i love zorblat", "i love my dog", "zorblat and qwxy are here"):
        person.learn(text)
    for weights in (PersonalWeights(),
                    PersonalWeights(levels=((0, 0.5),), gamma=0.5, recency=0.2),
                    PersonalWeights(levels=((0.5, 4), (0.9, 0)), gamma=0.1)):
        layer = PersonalLayer(person, tokenizer.id_to_word, weights)
        for context in ([], ["i"], ["i", "love"], ["qwxy"]):
            combined, oov = layer.combine(logp, context)
            assert total_log_prob(combined, oov) == pytest.approx(0.0, abs=1e-6)
        assert layer.oov_words == ["qwxy", "zorblat"]


def test_weights_grow_with_what_the_person_typed(tokenizer, model):
    scorer = LSTMScorer(model)
    logp = scorer.log_probs(scorer.step(scorer.start(), tokenizer.word_to_id["i"]))
    person = PersonalModel()
    layer = PersonalLayer(person, tokenizer.id_to_word)
    shares = []
    for _ in range(4):
        layer.learn("i love zorblat")
        combined, oov = layer.combine(logp, ["i", "love"])
        shares.append(math.exp(oov[layer.oov_words.index("zorblat")]))
    assert shares == sorted(shares) and shares[-1] > 2 * shares[0]


def test_predictor_without_personal_words_is_unchanged(tokenizer, model):
    plain, personal = Predictor(model, tokenizer), Predictor(model, tokenizer)
    personal.set_personal(PersonalModel())
    for text in ("", "how are", "how are y", "I think that we sh", "Ok. "):
        assert personal.suggest(text) == plain.suggest(text)
        np.testing.assert_allclose(personal.next_word_scores(text),
                                   plain.next_word_scores(text), atol=1e-5)


def test_a_new_word_is_suggested_in_the_next_message(tokenizer, model):
    predictor = Predictor(model, tokenizer)
    predictor.set_personal(PersonalModel())
    assert "zorblat" not in tokenizer.word_to_id
    assert not any(w.lower() == "zorblat" for w in predictor.suggest("we met "))
    predictor.learn("Yesterday we met Zorblat at the station")
    assert predictor.suggest("Tomorrow we met ")[0] == "Zorblat"  # next word, as written
    assert predictor.suggest("I saw zo")[0] == "Zorblat"  # completion
    assert predictor.suggest("I saw ZO")[0] == "ZORBLAT"  # shouting stays shouting
    predictor.personal.model.remove("zorblat")
    assert not any(w.lower() == "zorblat" for w in predictor.suggest("Tomorrow we met "))
    assert not any(w.lower() == "zorblat" for w in predictor.suggest("I saw zo"))


def test_personal_words_survive_a_new_vocabulary(tokenizer, model):
    """The model keeps words, not ids: over a vocabulary that has the word, it is a
    vocabulary word; over one that lacks it, a personal one; suggested either way."""
    person = PersonalModel()
    for _ in range(3):
        person.learn("see me at zorblat now")
    words_in = list(tokenizer.id_to_word) + ["zorblat"]
    small = NextWordLSTM(ModelConfig(vocab_size=len(words_in), embed_dim=16, hidden_size=32))
    logp = LSTMScorer(small).log_probs(LSTMScorer(small).start())
    inside = PersonalLayer(person, words_in)
    combined, oov = inside.combine(logp, ["me", "at"])
    assert "zorblat" not in inside.oov_words and int(np.argmax(combined)) == len(words_in) - 1
    outside = PersonalLayer(person, tokenizer.id_to_word)
    combined, oov = outside.combine(logp[:-1], ["me", "at"])
    assert "zorblat" in outside.oov_words
    assert oov[outside.oov_words.index("zorblat")] > combined.max()


def test_dictionary_file_round_trip():
    person = PersonalModel()
    person.learn("hello Zorblat and zorblat's iPhone")
    text = dictionary_text(person)
    assert text.splitlines()[0] == "# Private Keyboard personal dictionary, version 1"
    assert "zorblat\t1\tZorblat" in text.splitlines()
    entries = {w: (n, f) for w, n, f in parse_dictionary(text)}
    assert entries["zorblat's"] == (1, None) and entries["iphone"] == (1, "iPhone")


@pytest.mark.parametrize("text, message", [
    ("", "first line"),
    ("zorblat\t3\n", "first line"),
    ("# Private Keyboard personal dictionary, version 1\nzorblat 3\n",
     "Line 2: .*should be a word, a tab, then how many times"),
    ("# Private Keyboard personal dictionary, version 1\nZorblat\t3\n", "not a word"),
    ("# Private Keyboard personal dictionary, version 1\nok\t1\nhi there\t3\n", "Line 3"),
    ("# Private Keyboard personal dictionary, version 1\nzorblat\t-3\n", "whole number"),
    ("# Private Keyboard personal dictionary, version 1\nzorblat\t99999999999\n",
     "whole number"),
    ("# Private Keyboard personal dictionary, version 1\nzorblat\t3\tFoo\n", "written form"),
    ("# Private Keyboard personal dictionary, version 1\n" + "a" * 49 + "\t3\n", "not a word"),
    ("# Private Keyboard personal dictionary, version 1\n\x00\x01\t3\n", "not a word"),
])
def test_a_malformed_dictionary_says_which_line(text, message):
    with pytest.raises(DictionaryError, match=message):
        parse_dictionary(text)


def test_personalised_evaluation_matches_the_plain_metrics_for_the_global_model(
        tokenizer, model):
    """The global model alone, scored by the personalised protocol, gives exactly what
    model.evaluate gives on the same second-half messages; the personal layer changes it."""
    public = [m for d in load_split("public")[:30] for m in d.messages][:2000]
    kneser_ney = KneserNey.from_messages(public, tokenizer)
    devices = [d for d in load_split("valid") if 20 <= len(d.messages) <= 40][:3]
    result = evaluate_personalised(kneser_ney, tokenizer, devices, [PersonalWeights()])
    halves = [Device(d.sender, d.role, d.messages[len(d.messages) // 2:]) for d in devices]
    plain = evaluate_scorer(kneser_ney, tokenizer, halves)
    mine = result.global_.result()
    assert mine["top1"] > 0.05
    for key in ("top1", "top3", "ksr", "macro_top1", "words"):
        assert mine[key] == pytest.approx(plain[key], abs=1e-12), key
    summary = result.summary(0)
    assert summary["personal"]["words"] == plain["words"]
    assert summary["personal"]["top1"] != mine["top1"]
    assert summary["senders_gaining"] + summary["senders_losing"] <= 3


def test_the_evaluation_ranks_as_the_predictor_suggests(tokenizer, model):
    """Top-1 of the evaluation is the Predictor's first suggestion, word for word."""
    from model.personal_eval import _Ranker
    person = PersonalModel()
    history = ["i love zorblat so much", "zorblat is my cat", "i love my cat"]
    for text in history:
        person.learn(text)
    predictor = Predictor(model, tokenizer)
    predictor.set_personal(person)
    layer = predictor.personal
    ranker = _Ranker(tokenizer)
    scorer = LSTMScorer(model)
    for context in ([], ["i"], ["i", "love"], ["zorblat"], ["my", "cat", "is"]):
        state = scorer.start()
        for w in context:
            state = scorer.step(state, tokenizer.word_to_id.get(w, tokenizer.unk_id))
        row, oov = layer.combine(scorer.log_probs(state), context)
        first = predictor.suggest(" ".join(context) + " ")[0].lower()
        assert ranker.score(first, row, layer.oov_words, oov, layer)[0] == 0, context


def test_the_demo_reports_the_personalised_evaluation(tokenizer, model, tmp_path):
    from fleet.evaluation import personalised
    from model.checkpoint import CheckpointMeta, save_checkpoint
    save_checkpoint(tmp_path / "model.safetensors", model,
                    CheckpointMeta(model.config, tokenizer.sha256, 0, {"test": "tiny"}))
    tokenizer.save(tmp_path / "tokenizer.json")
    summary = personalised(tmp_path / "model.safetensors", tmp_path / "tokenizer.json", 2)
    assert summary["personal"]["senders"] == 2 and summary["global"]["words"] > 0
    table = markdown(summary)
    assert "| global model alone |" in table and "| with the personal layer |" in table


def test_new_words_after_one_use_are_counted_and_offered(tokenizer, model):
    """A word outside the vocabulary, typed once in the history, is offered when it comes
    again; the global model alone never offers it."""
    filler = [f"ok see you at {w}" for w in ("home", "work", "school", "noon", "night")] * 2
    messages = filler + ["we met zorblat today"] + filler[:9] + ["we met zorblat again"]
    device = Device("someone", "valid", messages)
    result = evaluate_personalised(LSTMScorer(model), tokenizer, [device], [PersonalWeights()])
    new = result.summary(0)["new_words_after_one_use"]
    unknown = [w for w in ("we", "met", "zorblat") if w not in tokenizer.word_to_id]
    assert "zorblat" in unknown and new["targets"] == len(unknown)
    assert new["top3"] == 1.0 and new["offered"] == 1.0
    alone = result.global_.new_words()
    assert alone["targets"] == new["targets"] and alone["top3"] == alone["offered"] == 0.0


def test_the_device_learns_its_adaptation_as_the_evaluation_does(tokenizer, model):
    """Predictor.learn (at Send) observes each message with the global model before
    counting it, exactly as the personalised evaluation replays a history."""
    from model.words import words
    messages = ["i love zorblat so much", "zorblat is my cat", "i love my cat",
                "my cat is called zorblat"]
    weights = PersonalWeights(scaling=0.3)
    predictor = Predictor(model, tokenizer)
    predictor.set_personal(PersonalModel(), weights)
    for text in messages:
        predictor.learn(text)
    on_device = predictor.personal.model.adaptation
    layer = PersonalLayer(PersonalModel(), tokenizer.id_to_word, weights, tokenizer.unk_id)
    scorer = LSTMScorer(model)
    for text in messages:
        ws = words(text)
        ids = [tokenizer.bos_id, *[tokenizer.word_to_id.get(w, tokenizer.unk_id)
                                   for w in ws], tokenizer.eos_id]
        (_, rows), = scorer.score_messages([ids])
        layer.observe(rows, ws)
        layer.learn(text)
    replayed = layer.model.adaptation
    assert on_device.layer_only + on_device.global_only > 0
    assert (on_device.layer_only, on_device.global_only) == (replayed.layer_only,
                                                             replayed.global_only)
    assert on_device.log_lik == pytest.approx(replayed.log_lik, rel=1e-5)
    assert (on_device.words, on_device.observed) == (replayed.words, replayed.observed)
    assert np.allclose(on_device.expected, replayed.expected, rtol=1e-4, atol=1e-9)


def _person(tokenizer) -> list[list[int]]:
    """A history with a habit the global model does not have: 'i love my cat' again and
    again (oldest first), as token ids."""
    texts = ["i love my cat", "my cat is here", "i love you", "see you at home"] * 6
    return [tokenizer.encode_message(t) for t in texts]


def _numpy(model: NextWordLSTM):
    from device_model.lstm import NumpyLSTM
    return NumpyLSTM({k: v.detach().numpy().copy() for k, v in model.state_dict().items()},
                     model.config)


@pytest.mark.parametrize("part", ["bias", "proj", "lstm", "all"])
def test_fine_tuning_trains_only_its_part_and_keeps_the_global_model(tokenizer, model, part):
    """The copy trains only `part`'s weights and lowers the loss of the person's held-out
    (most recent) messages, which the training loop's mean loss confirms; the global model
    is not touched."""
    from device_model.finetune import PARTS, FineTune, fine_tune
    from device_model.train import mean_loss as numpy_mean_loss
    from model.train import mean_loss
    glob = _numpy(model)
    before = {k: v.copy() for k, v in glob.weights.items()}
    history = _person(tokenizer)
    done = fine_tune(glob, history, FineTune(part=part, lr=3e-2, max_epochs=3, batch_size=4))
    assert done.model is not None and 1 <= done.epochs <= 3
    assert done.best_loss < done.base_loss
    held = history[-2:]
    assert done.base_loss == pytest.approx(mean_loss(model, held), rel=1e-5)
    assert done.best_loss == pytest.approx(numpy_mean_loss(done.model, held), rel=1e-6)
    for name, value in glob.weights.items():
        assert np.array_equal(value, before[name]), name
    changed = {k for k, v in done.model.weights.items() if not np.array_equal(v, before[k])}
    assert "output_bias" in changed
    assert all(any(k.startswith(p) for p in PARTS[part]) for k in changed), changed


def test_fine_tuning_keeps_the_global_model_when_the_held_out_messages_do_not_gain(
        tokenizer, model):
    from device_model.finetune import FineTune, fine_tune
    history, model = _person(tokenizer), _numpy(model)
    assert fine_tune(model, history, FineTune(min_gain=50.0)).model is None
    assert fine_tune(model, history[:9], FineTune()).model is None  # too short a history
    refit = fine_tune(model, history, FineTune(part="bias", lr=3e-2, batch_size=4,
                                               refit=True))
    assert refit.model is not None and refit.steps > 0
    stopped = fine_tune(model, history, FineTune(part="bias", lr=3e-2, batch_size=4),
                        should_stop=lambda: True)  # the person typed: nothing half-trained
    assert stopped.model is None and stopped.steps == 0


def test_the_evaluation_runs_a_layer_over_a_fine_tuned_model(tokenizer, model):
    """A fine-tuning that keeps the global model scores exactly as the global model; one that
    adapts it changes the scores; the global model alone is the same in every pass."""
    from device_model.finetune import FineTune
    devices = [d for d in load_split("valid") if 24 <= len(d.messages) <= 40][:2]
    never, adapt = FineTune(min_gain=50.0), FineTune(part="lstm", lr=3e-2, batch_size=4)
    plain = evaluate_personalised(LSTMScorer(model), tokenizer, devices, [PersonalWeights()])
    result = evaluate_personalised(LSTMScorer(model), tokenizer, devices,
                                   [PersonalWeights(), None, PersonalWeights(), None],
                                   fine_tunes=[None, never, adapt, adapt])
    assert result.global_.result() == plain.global_.result()
    assert result.personal[0].result() == plain.personal[0].result()
    assert result.personal[1].result() == result.global_.result()
    assert result.personal[3].result() != result.global_.result()
    tuning = result.summary(2)["fine_tuning"]
    assert tuning["fits"] == 2 and tuning["kept"] >= 1 and tuning["held_out_gain_kept"] > 0
    assert result.summary(1)["fine_tuning"]["kept"] == 0


def test_the_first_suggestions_only_one_side_had_add_up_to_the_gain(tokenizer, model):
    """Per sender, words only the layer had first minus words only the global model alone
    had first is exactly the difference in top-1 hits; the report names the worst sender's."""
    valid = load_split("valid")
    devices = ([d for d in valid if 20 <= len(d.messages) < 50][:2]
               + [d for d in valid if 100 <= len(d.messages) <= 200][:1])  # one with 50+
    result = evaluate_personalised(LSTMScorer(model), tokenizer, devices, [PersonalWeights()])
    mine, base = result.personal[0], result.global_
    assert sum(sum(v) for v in mine.first_only.values()) > 0
    for sender, (only_layer, only_global) in mine.first_only.items():
        assert only_layer - only_global == (mine.per_sender[sender][1]
                                            - base.per_sender[sender][1])
    worst = result.summary(0)["worst_sender_history_50"]
    heavy = devices[2].sender
    assert worst == {"messages": len(devices[2].messages),
                     "gain": result.summary(0)["per_sender_top1_gain"][heavy],
                     "first_only_layer": mine.first_only[heavy][0],
                     "first_only_global": mine.first_only[heavy][1]}
    assert f"({worst['messages']} messages; of the words typed" in markdown(result.summary(0))
