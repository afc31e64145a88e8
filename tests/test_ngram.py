"""The Kneser-Ney trigram: normalized, equal to a plain re-implementation, a Predictor scorer."""
import math
from collections import Counter

import numpy as np
import pytest

from data import load_split
from model.ngram import KneserNey, discounts
from model.predictor import Predictor
from model.tokenizer import WordTokenizer

PAD, BOS, EOS = 0, 2, 3


@pytest.fixture(scope="module")
def public() -> tuple[WordTokenizer, list[str]]:
    messages = [m for d in load_split("public")[:40] for m in d.messages][:3000]
    return WordTokenizer.build(messages, vocab_size=800), messages


@pytest.fixture(scope="module")
def kn(public) -> KneserNey:
    tokenizer, messages = public
    return KneserNey.from_messages(messages, tokenizer)


def test_discounts_from_count_of_counts():
    counts = np.array([1] * 10 + [2] * 5 + [3] * 3 + [4] * 2 + [9])
    y = 10 / (10 + 2 * 5)
    assert discounts(counts)[1:] == pytest.approx([1 - 2 * y * 5 / 10, 2 - 3 * y * 3 / 5,
                                                   3 - 4 * y * 2 / 3])


def test_probabilities_sum_to_one_over_the_vocabulary(public, kn):
    tokenizer, _ = public
    ids = tokenizer.word_to_id
    contexts = [(), (BOS,), (BOS, ids["i"]), (ids["i"], ids["am"]), (ids["how"], ids["are"]),
                (ids["the"], ids["the"]), (tokenizer.unk_id, tokenizer.unk_id)]
    probs = kn.probs(contexts)
    assert probs.shape == (len(contexts), tokenizer.vocab_size)
    assert probs.sum(axis=1) == pytest.approx(np.ones(len(contexts)), abs=1e-9)
    events = np.ones(tokenizer.vocab_size, dtype=bool)
    events[[PAD, BOS]] = False
    assert (probs[:, events] > 0).all() and (probs[:, ~events] == 0).all()


def reference_model(seqs: list[list[int]], vocab: int):
    """Modified interpolated Kneser-Ney written out plainly, straight from the definitions."""
    tri = Counter((s[i - 2], s[i - 1], s[i]) for s in seqs for i in range(2, len(s)))
    bi = Counter((s[i - 1], s[i]) for s in seqs for i in range(1, len(s)))
    left = Counter((v, w) for (_, v, w) in tri)  # distinct u before (v, w)
    bi_adj = {(v, w): c if v == BOS else left[(v, w)] for (v, w), c in bi.items()}
    uni_adj = Counter(w for (_, w) in bi)

    def disc(counts):
        n = Counter(counts.values())
        y = n[1] / (n[1] + 2 * n[2])
        d = {1: 1 - 2 * y * n[2] / n[1], 2: 2 - 3 * y * n[3] / n[2], 3: 3 - 4 * y * n[4] / n[3]}
        assert all(0 < d[r] < r for r in d)  # the corpus is big enough for the estimates
        return lambda c: d[min(c, 3)]

    d1, d2, d3 = disc(uni_adj), disc(bi_adj), disc(tri)
    total1 = sum(uni_adj.values())
    gamma1 = sum(d1(c) for c in uni_adj.values()) / total1

    def p1(w):
        if w in (PAD, BOS):
            return 0.0
        share = (uni_adj[w] - d1(uni_adj[w])) / total1 if w in uni_adj else 0.0
        return share + gamma1 / (vocab - 2)

    by_context: dict[tuple, dict[int, int]] = {}
    for table in (bi_adj, tri):
        for (*h, x), c in table.items():
            by_context.setdefault(tuple(h), {})[x] = c

    def level(d, ctx, w, lower):
        seen = by_context.get(ctx)
        if not seen:
            return lower
        total = sum(seen.values())
        gamma = sum(d(c) for c in seen.values()) / total
        share = (seen[w] - d(seen[w])) / total if w in seen else 0.0
        return share + gamma * lower

    def p(w, ctx):
        prob = p1(w)
        if len(ctx) >= 1:
            prob = level(d2, ctx[-1:], w, prob)
        if len(ctx) >= 2:
            prob = level(d3, ctx[-2:], w, prob)
        return prob
    return p


def test_equals_a_plain_reimplementation():
    rng = np.random.default_rng(0)
    vocab = 80
    zipf = 1 / np.arange(1, 37)  # common words 4..39
    seqs = [[BOS, *(4 + rng.choice(36, size=rng.integers(1, 10), p=zipf / zipf.sum())
                    ).tolist(), EOS] for _ in range(1500)]
    # rare words 40..79, each after 1-5 distinct words: every count-of-count is estimable
    seqs += [[BOS, 4 + j, r, EOS] for r in range(40, vocab) for j in range(1 + r % 5)]
    seqs += [[BOS, 1, 1, EOS]] * 3  # <unk> is an ordinary event
    kn = KneserNey.train(seqs, vocab, PAD, BOS)
    ref = reference_model(seqs, vocab)
    pairs = rng.integers(4, vocab, size=(40, 2)).tolist()
    contexts = [(), (BOS,), (BOS, 4), (BOS, 1), (1, 1), (4, 5), (79, 79)]
    contexts += [tuple(p) for p in pairs]
    ours = kn.probs(contexts)
    for row, ctx in zip(ours, contexts):
        assert row == pytest.approx([ref(w, ctx) for w in range(vocab)], abs=1e-12)


def test_message_scores_match_step_by_step_states(public, kn):
    tokenizer, _ = public
    seqs = tokenizer.encode_messages(["how are you doing today", "I like dogs", "zzz qqq"])
    for n, logp in kn.score_messages(seqs):
        state = kn.start()
        assert logp.shape == (len(seqs[n]) - 1, tokenizer.vocab_size)
        for i, word_id in enumerate(seqs[n][:-1]):
            if i:
                state = kn.step(state, word_id)
            assert logp[i] == pytest.approx(kn.log_probs(state), abs=1e-5)


def test_save_and_load_without_pickle(public, kn, tmp_path):
    path = tmp_path / "kn.npz"
    kn.save(path)
    again = KneserNey.load(path)
    contexts = [(BOS,), (BOS, 10), (10, 11)]
    assert np.array_equal(again.probs(contexts), kn.probs(contexts))
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a saved"):
        KneserNey.load(tmp_path / "bad.npz")


def test_rejects_ids_outside_the_vocabulary_and_empty_input():
    with pytest.raises(ValueError, match="token ids"):
        KneserNey.train([[BOS, 99, EOS]], 10)
    with pytest.raises(ValueError, match="no sequence"):
        KneserNey.train([[BOS]], 10)


def test_plugs_into_the_predictor(public, kn):
    tokenizer, _ = public
    predictor = Predictor(kn, tokenizer)
    assert "you" in predictor.suggest("how are ")
    assert all(s.startswith("th") for s in predictor.suggest("I like th"))
    how_are = (tokenizer.word_to_id["how"], tokenizer.word_to_id["are"])
    assert predictor.next_word_scores("how are ") == pytest.approx(kn.log_probs(how_are))
    assert predictor.next_word_scores("how are ")[tokenizer.bos_id] == -np.inf
    assert math.isclose(float(np.exp(predictor.next_word_scores("")).sum()), 1, abs_tol=1e-4)
