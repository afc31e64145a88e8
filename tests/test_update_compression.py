"""Compressed updates (`federated.compression`) and their accounting (`federated.privacy`):
sums decode to the true sum within the expected error, through the real SecAgg+ protocol
too; the noise is integer and exact under the sum; the privacy figures come from
dp-accounting; malformed parameters are refused."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from aggregation_server.strategy import streaming_mean
from federated import privacy
from federated.compression import (KEPT_CLIP_SLACK, MAX_BITS_PER_PARAM, PLAIN_LIMIT,
                                   PLAIN_SCHEME, SCHEMES,
                                   Compression, CompressionError, discrete_gaussian,
                                   kept_clip_norm, layout, requantization_bound, requantize,
                                   rounded_norm_bound, round_seed)
from federated.compression import _fwht
from federated.secagg import ModularIntegers, SecAggClient, SecAggServerRound, crypto
from federated.secagg.encoding import EncodingError
from federated.wire import Update, decode_compressed_update, encode_compressed_update
from test_secagg import Sim, det_bytes

MODEL_PARAMS = 1_554_628  # this project's LSTM
SEED = round_seed(7, "ab" * 32)


def clipped_updates(n: int, d: int, norm: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    common = rng.normal(size=d)  # updates that agree in part, as trained ones do
    out = []
    for _ in range(n):
        x = common + rng.normal(size=d)
        out.append(x / np.linalg.norm(x) * norm)
    return out


def modular_sum(words: list[np.ndarray]) -> np.ndarray:
    return (sum(w.astype(np.uint64) for w in words) % (1 << 16)).astype(np.uint16)


def test_uploads_are_at_most_four_bits_per_parameter():
    kept, block = layout(MODEL_PARAMS)
    assert (kept, block) == (23 * 2 ** 14, 2 ** 14)
    spec = Compression.plan(SEED, MODEL_PARAMS, 1.0, 1.0, clients=26, honest=14)
    assert spec.upload_bytes * 8 / MODEL_PARAMS <= MAX_BITS_PER_PARAM
    assert spec.upload_bytes * 8 / MODEL_PARAMS == pytest.approx(3.878, abs=1e-3)


@pytest.mark.parametrize("z", [0.0, 0.5, 2.0])
def test_modular_sum_of_noised_updates_decodes_within_the_expected_error(z):
    n, d, h = 12, 20_000, 8
    spec = Compression.plan(SEED, d, 1.0, z, clients=n, honest=h)
    sigma = spec.noise_sigma(z, h)
    xs = clipped_updates(n, d, 0.9)
    rng = np.random.default_rng(1)
    total = spec.decode_sum(modular_sum([spec.encode(x, sigma, rng) for x in xs]))
    true = sum(xs)
    # on the kept coordinates the error is rounding (variance <= 1/4 per device and
    # coordinate) plus the noise (n sigma^2), divided by the scale, times d / kept
    kept = np.flatnonzero(total)
    err = total[kept] * spec.kept / d - true[kept]
    expected = math.sqrt(spec.kept * n * (sigma ** 2 + 0.25)) / spec.scale
    assert np.linalg.norm(err) <= 1.1 * expected
    assert kept.size == spec.kept


def kept_coordinates(spec: Compression) -> np.ndarray:
    """The round's kept coordinates, in the codec's order (read through `selected`)."""
    numbers = np.arange(1.0, spec.dimension + 1)
    shrink = 2 * np.linalg.norm(numbers) / spec.clip_norm  # under C: `selected` leaves it
    picked = np.rint(spec.selected(numbers / shrink) * shrink).astype(int) - 1
    return picked[picked >= 0]


def test_an_update_with_all_its_norm_on_the_kept_coordinates_is_clipped_to_c_kept():
    """The seed is public before training, so a device's data could put all of C on the
    kept coordinates: the codec clips the kept part to C_kept = C s sqrt(kept / d), and its
    integers stay within Delta, computed from C_kept (the sensitivity the noise is sized to)."""
    d = 20_000
    spec = Compression.plan(SEED, d, 1.0, 1.0, clients=10, honest=7)
    assert spec.kept_clip == pytest.approx(KEPT_CLIP_SLACK * math.sqrt(spec.kept / d))
    assert spec.kept_clip < 0.6
    assert spec.sensitivity == rounded_norm_bound(spec.scale * spec.kept_clip, spec.kept)
    rng = np.random.default_rng(8)
    index = kept_coordinates(spec)
    x = np.zeros(d)
    x[index] = rng.normal(size=index.size)
    x /= np.linalg.norm(x)  # ||x|| = C = 1, all of it on S
    y = spec.kept_part(x)
    assert np.linalg.norm(y) == pytest.approx(spec.kept_clip)
    np.testing.assert_allclose(y, x[index] * spec.kept_clip)  # a scaling, nothing else
    words = spec.encode(x, 0.0, rng)
    q = np.linalg.norm(spec.centred(words))
    assert spec.scale * spec.kept_clip * 0.99 <= q <= spec.sensitivity < spec.scale * 0.6
    decoded = spec.decode_sum(words)  # the clipped kept part, times d / kept
    assert np.linalg.norm(decoded) == pytest.approx(spec.kept_clip * d / spec.kept, rel=1e-3)
    spread = rng.normal(size=d)  # an update spread over all coordinates: not clipped again
    spread /= np.linalg.norm(spread)
    np.testing.assert_array_equal(spec.kept_part(spread), spec.selected(spread))


def test_c_kept_is_public_and_never_above_c():
    assert kept_clip_norm(0.1, 1_554_628, 376_832) == pytest.approx(
        0.1 * KEPT_CLIP_SLACK * math.sqrt(376_832 / 1_554_628))
    assert kept_clip_norm(0.5, 1000, 1024) == 0.5  # "ddg16-full": every coordinate kept
    assert kept_clip_norm(0.5, 1000, 900, slack=2.0) == 0.5
    full = Compression.plan(SEED, 20_000, 0.5, 1.0, clients=6, honest=4, scheme="ddg16-full")
    assert full.kept_clip == 0.5


def test_the_decoded_noise_is_the_slack_squared_times_the_float_paths():
    """Sized to C_kept, the noise of the decoded sum carries s^2 times the float path's
    energy (z C per coordinate over the honest reports), not d / kept times."""
    n, d, z, h = 10, 20_000, 1.0, 7
    spec = Compression.plan(SEED, d, 1.0, z, clients=n, honest=h)
    sigma = spec.noise_sigma(z, h)
    rng = np.random.default_rng(9)
    total = spec.decode_sum(modular_sum([spec.encode(np.zeros(d), sigma, rng)
                                         for _ in range(n)]))
    float_energy = d * n * (z * 1.0 / math.sqrt(h)) ** 2
    assert np.sum(total ** 2) / float_energy == pytest.approx(KEPT_CLIP_SLACK ** 2, rel=0.05)
    assert d / spec.kept > 3.9  # what it was before the kept part was clipped


def test_the_decoded_sum_is_unbiased_over_seeds():
    n, d = 4, 4096
    xs = clipped_updates(n, d, 1.0, seed=3)
    rng, mean = np.random.default_rng(2), np.zeros(d)
    runs = 300
    for r in range(runs):
        spec = Compression.plan(round_seed(r, "cd" * 32), d, 1.0, 0.0, clients=n, honest=n)
        mean += spec.decode_sum(modular_sum([spec.encode(x, 0.0, rng) for x in xs])) / runs
    true = sum(xs)
    # each coordinate is kept with probability 1/4 and scaled by 4: std sqrt(3) |x_i| / sqrt(runs)
    assert np.linalg.norm(mean - true) <= 1.2 * math.sqrt(3 / runs) * np.linalg.norm(true)


def test_the_selection_is_the_stable_sort_of_the_seeds_keys_ties_included():
    """The fast selection (partition, then sort the kept keys) is exactly the first `kept`
    of a stable argsort, the definition devices and servers of every version share."""
    from federated.compression import _smallest_keys
    rng = np.random.default_rng(8)
    for keys, k in ((rng.integers(0, 2 ** 63, 5000, dtype=np.uint64), 1234),
                    (rng.integers(0, 40, 5000).astype(np.uint64), 1234),  # ties at the cut
                    (rng.permutation(np.r_[np.zeros(10), np.arange(99, 5089)]).astype(
                        np.uint64), 1234),  # ties among the kept only
                    (rng.integers(0, 2 ** 63, 64, dtype=np.uint64), 64)):
        np.testing.assert_array_equal(_smallest_keys(keys, k),
                                      np.argsort(keys, kind="stable")[:k])


def test_the_integer_noise_is_exact_under_the_modular_sum():
    """The centred modular sum is exactly the sum of every device's rounded, noised integers:
    what the accountant composes is what the server unmasks."""
    n, d, h = 20, 8192, 14
    spec = Compression.plan(SEED, d, 1.0, 1.0, clients=n, honest=h)
    sigma = spec.noise_sigma(1.0, h)
    words = [spec.encode(x, sigma, np.random.default_rng(i))
             for i, x in enumerate(clipped_updates(n, d, 1.0))]
    signed = sum(spec.centred(w) for w in words)  # each device's integers, summed exactly
    assert np.array_equal(spec.centred(modular_sum(words)), signed)
    assert np.abs(signed).max() < 2 ** 15 and not spec.wraps(n, sigma)


def test_discrete_gaussian_has_its_variance_and_is_integer():
    rng = np.random.default_rng(0)
    for sigma in (0.7, 3.0, 2500.5):
        x = discrete_gaussian(sigma, 200_000, rng)
        assert x.dtype == np.int64 and abs(x.mean()) < 5 * sigma / math.sqrt(x.size)
        assert x.var() == pytest.approx(sigma ** 2 if sigma > 1 else x.var(), rel=0.02)
        assert x.var() <= sigma ** 2 * 1.02  # a discrete Gaussian's variance is at most sigma^2


def test_sum_through_secagg_plus_with_real_crypto():
    n, d, h = 10, 8192, 7
    spec = Compression.plan(SEED, d, 1.0, 1.0, clients=n, honest=h)
    sigma = spec.noise_sigma(1.0, h)
    xs = clipped_updates(n, d, 1.0)
    words = {i + 1: spec.encode(x, sigma, np.random.default_rng(i)) for i, x in enumerate(xs)}
    sim = Sim(n, d=spec.kept, degree=6, seed=4, updates=words)
    sim.config = replace(sim.config, encoding=ModularIntegers())
    sim.server = SecAggServerRound(sim.config, {
        i: crypto.identity_bytes(key) for i, key in sim.identities.items()})
    sim.clients = {i: SecAggClient(sim.config, i, det_bytes(4000 + i), identity=key)
                   for i, key in sim.identities.items()}
    result = sim.run({"masked": {3}})  # one device drops before sending: its masks removed
    assert all(m.dtype == np.uint16 for m in sim.stored.values())
    survivors = result.survivors
    assert np.array_equal(result.total, modular_sum([words[i] for i in survivors]))
    mean = spec.decode_sum(result.total) / len(survivors)
    true = sum(xs[i - 1] for i in survivors) / len(survivors)
    err = (mean[mean != 0] * spec.kept / d - true[mean != 0]) * len(survivors)
    assert np.linalg.norm(err) <= 1.1 * math.sqrt(spec.kept * len(survivors) * (
        sigma ** 2 + 0.25)) / spec.scale
    with pytest.raises(EncodingError, match="uint16"):
        ModularIntegers().encode(np.zeros(4, np.uint32))


# ---------------------------------------------------------------- accounting

def test_a_single_discrete_gaussian_is_delta_squared_over_two_sigma_squared_zcdp():
    assert privacy.ddg_rho(3.0, 6.0, 1, 10_000) == pytest.approx(9 / 72)
    with pytest.raises(ValueError):
        privacy.ddg_rho(1.0, 0.4, 3, 10)
    assert privacy.ddg_rho(1.0, 0.0, 3, 10) == math.inf


def test_the_sum_of_discrete_gaussians_carries_the_papers_slack():
    # tau = 10 sum exp(-2 pi^2 sigma^2 k/(k+1)): visible only for a small sigma
    small = privacy.ddg_rho(1.0, 0.6, 10, 10_000)
    assert small > 1 / (2 * 10 * 0.36)
    assert privacy.ddg_rho(3000.0, 800.0, 14, 376_832) == pytest.approx(
        3000.0 ** 2 / (2 * 14 * 800.0 ** 2), rel=1e-12)


def test_compressed_charges_are_the_rounds_noise_multiplier_and_come_from_dp_accounting():
    spec = Compression.plan(SEED, MODEL_PARAMS, 1.0, 1.0, clients=26, honest=14)
    sigma, server, users = privacy.compressed_noise(spec, 1.0, 20, secure=True)
    assert server == users == pytest.approx(1.0, rel=1e-9)
    assert sigma == pytest.approx(spec.sensitivity / math.sqrt(14))
    sigma, server, users = privacy.compressed_noise(spec, 1.0, 20, secure=False)
    assert (server, users) == (pytest.approx(1.0), pytest.approx(math.sqrt(14)))
    rho = privacy.ddg_rho(spec.sensitivity, sigma, 1, spec.kept)
    # stored as a Gaussian multiplier: the same RDP curve, so the same epsilon
    assert privacy.composed_epsilon([privacy.zcdp_multiplier(rho)] * 3, 1e-6) == pytest.approx(
        privacy.zcdp_epsilon([rho] * 3, 1e-6), rel=1e-9)
    assert privacy.compressed_noise(spec, 0.0, 20, secure=True) == (0.0, 0.0, 0.0)


def test_a_warier_device_in_a_compressed_round_counts_the_others_smaller_noise():
    """A device sized for a dishonest share of 2/3 (7 honest of 20) adds sigma = Delta/sqrt(7);
    the other honest ones, sized for 1/3, add Delta/sqrt(14). KLS's bound is for equal sigmas,
    so the sum is charged at the better of its own noise alone and the other 6 honest
    devices' (z*sqrt(6/14)), not z as if all 7 added its sigma."""
    spec = Compression.plan(SEED, MODEL_PARAMS, 1.0, 1.0, clients=26, honest=7)
    sigma, server, users = privacy.compressed_noise(spec, 1.0, 20, secure=True,
                                                    dishonest_share=2 / 3, others_share=1 / 3)
    assert sigma == pytest.approx(spec.sensitivity / math.sqrt(7))
    assert server == users == pytest.approx(math.sqrt(6 / 14), rel=1e-9)
    same = privacy.compressed_noise(spec, 1.0, 20, secure=True, dishonest_share=2 / 3,
                                    others_share=2 / 3)
    assert same[1] == pytest.approx(1.0, rel=1e-9)


# ---------------------------------------------------------------- plain rounds' form

def plain_spec(d: int, z: float, scheme: str = "ddg16") -> Compression:
    return privacy.round_compression(SEED, d, 1.0, z, 20, 26, secure=False, scheme=scheme)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_plain_rounds_keep_every_coordinate_whatever_scheme_the_round_names(scheme):
    """The plain form: every coordinate (C_kept = C), 31 levels, and a scale so large that
    rounding adds a few parts per million to Delta (16-bit words: 1.3%)."""
    spec = plain_spec(MODEL_PARAMS, 1.0, scheme)
    assert (spec.scheme, spec.bits, spec.levels, spec.modular) == (PLAIN_SCHEME, 5, 15, False)
    assert spec.kept == layout(MODEL_PARAMS, scheme="ddg16-full")[0] >= MODEL_PARAMS
    assert spec.kept_clip == spec.clip_norm == 1.0
    assert spec.sensitivity / spec.scale == pytest.approx(1.0, abs=1e-5)
    assert Compression.from_dict(spec.to_dict()) == spec and not spec.wraps(10 ** 6, 1e12)


def test_the_plain_forms_integers_keep_their_noise_up_to_their_limit_and_refuse_beyond():
    """Past int64 the noised integers wrapped: a noise multiplier of 1e20 (or a scale of
    1e20) from a malicious server made the device send its update without noise (decoded
    correlation with it 0.996). Up to the limit the noise is the discrete Gaussian's; beyond,
    the codec refuses to encode, whatever the caller checked."""
    d = 5000
    spec = Compression.plain(SEED, d, 1.0)
    x = clipped_updates(1, d, 1.0)[0]
    low, high = 1.0, float(PLAIN_LIMIT)
    for _ in range(100):
        low, high = ((low + high) / 2, high) if not spec.wraps(1, (low + high) / 2) \
            else (low, (low + high) / 2)
    largest = low  # the bound's tail is 7.8 sigma: 2^52 / 7.8
    assert largest == pytest.approx(PLAIN_LIMIT / 7.8, rel=0.01)
    assert spec.wraps(1, 1.01 * largest)
    rng = np.random.default_rng(3)
    v = spec.integers(x, largest, rng)
    noise = v - spec.integers(x, 0.0, rng)
    assert np.abs(v).max() < PLAIN_LIMIT and np.std(noise) == pytest.approx(largest, rel=0.05)
    for sigma in (1.01 * largest, 1e26):
        with pytest.raises(CompressionError, match="could overflow the integers"):
            spec.encode_plain(x, sigma, rng)
    big = Compression(SEED, d, spec.kept, spec.block, spec.bits, 1e20, 1.0, PLAIN_SCHEME)
    with pytest.raises(CompressionError, match="could overflow the integers"):
        big.encode_plain(x, big.noise_sigma(1.0, 1), rng)


def test_requantization_is_unbiased_within_its_levels_and_its_error_bound():
    rng = np.random.default_rng(12)
    v = discrete_gaussian(3000.0, 50_000, rng)
    step, u = requantize(v, 15, rng)
    assert step == math.ceil(np.abs(v).max() / 15) and u.dtype == np.int8
    assert np.abs(u).max() == 15 >= np.abs(u).min()
    err = step * u.astype(np.int64) - v
    assert np.abs(err).max() < step
    assert np.linalg.norm(err) <= requantization_bound(step, v.size)
    assert np.mean(err.astype(float) ** 2) == pytest.approx(step ** 2 / 6, rel=0.05)
    small, runs = v[:200], 4000
    mean = np.mean([np.multiply(*requantize(small, 15, rng), dtype=np.float64)
                    for _ in range(runs)], axis=0)
    small_step = requantize(small, 15, rng)[0]
    assert np.abs(mean - small).max() < 5 * small_step / 2 / math.sqrt(runs)  # unbiased
    assert requantize(np.zeros(8, np.int64), 15, rng)[0] == 1


@pytest.mark.parametrize("z", [0.0, 1.0])
def test_a_plain_upload_of_the_lstm_is_under_four_bits_per_parameter_with_its_header(z):
    spec = plain_spec(MODEL_PARAMS, z)
    x = clipped_updates(1, MODEL_PARAMS, 1.0)[0]
    step, values = spec.encode_plain(x, spec.noise_sigma(z, 1), np.random.default_rng(1))
    body = encode_compressed_update(Update({}, 7, 3, 100, {"loss": 2.5}), step, values, SEED,
                                    spec.levels)
    assert 3.0 < 8 * len(body) / MODEL_PARAMS <= MAX_BITS_PER_PARAM
    update, got = decode_compressed_update(body, spec.kept, SEED, spec.levels, step)
    assert got == step and update.num_examples == 100 and update.metrics == {"loss": 2.5}
    np.testing.assert_array_equal(update.tensors["values"], values)


def test_a_plain_upload_carries_the_float_paths_noise_plus_the_requantizations_two_percent():
    """Requantized after the noise, the decoded noise is z C per coordinate on every
    coordinate times sqrt(1 + q^2 / (6 sigma^2)), about 1.01 (the subset gave d / kept
    = 4.13 times the variance on a quarter of them)."""
    d, z = 200_000, 1.0
    spec = plain_spec(d, z)
    step, values = spec.encode_plain(np.zeros(d), spec.noise_sigma(z, 1),
                                     np.random.default_rng(2))
    decoded = spec.decode_integers(values * float(step))
    assert np.mean(decoded ** 2) / z ** 2 == pytest.approx(1.02, abs=0.015)
    quarters = [np.mean(part ** 2) for part in np.array_split(decoded, 4)]
    assert max(quarters) / min(quarters) < 1.03  # the same on every coordinate


def test_the_servers_mean_of_plain_uploads_does_not_depend_on_their_order():
    """Decoded plain uploads are one rounding of an exact value each (exact zeros stay 0.0),
    so the float sum of many is the same in any order: fleets are reproducible although
    the server sums in the order of random device ids."""
    d, z, rng = 65_536, 1.0, np.random.default_rng(13)
    spec = plain_spec(d, z)
    uploads = [spec.encode_plain(x, spec.noise_sigma(z, 1), rng)
               for x in clipped_updates(10, d, 1.0, seed=7)]
    decoded = [{"w": spec.decode_integers(np.multiply(step, values, dtype=np.float64))
                .astype(np.float32)} for step, values in uploads]
    step, values = uploads[0]
    exact = values.astype(np.int64).reshape(-1, spec.block).copy()
    zero = np.flatnonzero(_fwht(exact).ravel() == 0)  # (in the rotated-back order)
    assert zero.size > 0 and np.count_nonzero(
        spec._scatter(np.isin(np.arange(spec.kept), zero).astype(float)) * decoded[0]["w"]) == 0
    means = [streaming_mean(((decoded[i], 1.0) for i in order), {"w": (d,)})["w"]
             for order in (range(10), rng.permutation(10), rng.permutation(10))]
    assert all(np.array_equal(means[0], m) for m in means[1:])


def test_without_noise_the_mean_of_plain_uploads_is_unbiased_and_loses_two_percent():
    n, d = 8, 20_000
    spec, xs = plain_spec(d, 0.0), clipped_updates(n, d, 0.9, seed=5)
    rng = np.random.default_rng(6)
    decoded = [spec.decode_integers(np.multiply(*spec.encode_plain(x, 0.0, rng)[::-1],
                                                dtype=np.float64)) for x in xs]
    errors = [np.sum((y - x) ** 2) / np.sum(x ** 2) for y, x in zip(decoded, xs)]
    assert 0.005 < np.mean(errors) < 0.04  # q^2 / 6 with q about max|v| / 15
    mean_error = np.sum((np.mean(decoded, axis=0) - np.mean(xs, axis=0)) ** 2)
    assert mean_error == pytest.approx(np.mean(errors) * 0.81 / n, rel=0.3)  # independent


# ---------------------------------------------------------------- refusals

def test_the_seed_is_derived_not_chosen():
    assert round_seed(7, "ab" * 32) == SEED != round_seed(8, "ab" * 32)
    with pytest.raises(CompressionError):
        round_seed(7, "xy")


@pytest.mark.parametrize("change, message", [
    ({"bits": 32}, "bits must be 16"), ({"kept": 1000}, "multiple of the block"),
    ({"block": 1000}, "power of two"), ({"scale": -1.0}, "scale"),
    ({"seed": "00"}, "seed"), ({"scheme": "topk"}, "scheme"), ({"extra": 1}, "exactly"),
    ({"kept": 2 ** 14 * 24}, "over 4 bits"),
    ({"kept_clip_norm": 1.0}, "kept_clip_norm .* is not C min"),
    ({"kept_clip_norm": "0.5"}, "must be finite numbers")])
def test_malformed_parameters_are_refused(change, message):
    data = Compression.plan(SEED, MODEL_PARAMS, 1.0, 1.0, 26, 14).to_dict()
    with pytest.raises(CompressionError, match=message):
        Compression.from_dict({**data, **change})


def test_words_of_the_wrong_size_or_modulus_are_refused():
    spec = Compression.plan(SEED, 8192, 1.0, 1.0, 5, 4)
    spec.check_words(np.zeros(spec.kept, np.uint16))
    for bad in (np.zeros(spec.kept - 1, np.uint16), np.zeros(spec.kept, np.uint32)):
        with pytest.raises(CompressionError, match="uint16 words"):
            spec.check_words(bad)


def test_a_modulus_too_small_for_the_round_is_refused():
    with pytest.raises(CompressionError, match="cannot hold"):
        Compression.plan(SEED, 8192, 1.0, 1.0, clients=10 ** 9, honest=10 ** 8)


def test_the_full_scheme_keeps_every_coordinate_at_sixteen_bits():
    kept, block = layout(MODEL_PARAMS, scheme="ddg16-full")
    assert (kept, block) == (95 * 2 ** 14, 2 ** 14) and kept >= MODEL_PARAMS
    n, d, h = 6, 20_000, 4
    spec = Compression.plan(SEED, d, 1.0, 0.5, clients=n, honest=h, scheme="ddg16-full")
    assert Compression.from_dict(spec.to_dict()) == spec and spec.kept_clip == spec.clip_norm
    sigma = spec.noise_sigma(0.5, h)
    xs = clipped_updates(n, d, 0.9)
    rng = np.random.default_rng(5)
    total = spec.decode_sum(modular_sum([spec.encode(x, sigma, rng) for x in xs]))
    expected = math.sqrt(spec.kept * n * (sigma ** 2 + 0.25)) / spec.scale
    assert np.linalg.norm(total - sum(xs)) <= 1.1 * expected  # every coordinate, no rescale



def aligned_on_one_rotated_coordinate(spec: Compression, j: int) -> np.ndarray:
    """A float32 update of norm C that the codec's rotation maps onto kept coordinate j (the
    decode of the unit word e_j): the worst case for rounding (the seed is public)."""
    words = np.zeros(spec.kept, dtype=np.uint16)
    words[j] = 1
    x = spec.decode_sum(words)
    return (x / np.linalg.norm(x) * spec.clip_norm).astype(np.float32)


@pytest.mark.parametrize("scheme", ["ddg16", "ddg16-full"])
def test_whatever_parameters_a_server_sends_one_device_stays_within_delta_at_z(scheme):
    """A malicious server picks kept, block and scale (the device checks only their form, the
    seed and C, and derives C_kept): for every such task an update with all of C on one
    rotated kept coordinate still rounds to integers within Delta, and the noise the device
    then adds protects it by the round's z, as its ledger counts."""
    d, z, rng = 20_000, 1.0, np.random.default_rng(11)
    top_kept, top_block = layout(d, scheme=scheme)
    for _ in range(12):
        block = 2 ** int(rng.integers(1, top_block.bit_length()))
        kept = block * int(rng.integers(1, top_kept // block + 1))
        spec = Compression.from_dict(Compression(SEED, d, kept, block, 16, float(
            10 ** rng.uniform(-2, 4)), 0.5, scheme).to_dict())
        assert spec.kept_clip == kept_clip_norm(0.5, d, kept) <= 0.5
        x = aligned_on_one_rotated_coordinate(spec, int(rng.integers(min(kept, d))))
        q = spec.centred(spec.encode(x, 0.0, rng))
        assert np.linalg.norm(q) <= spec.sensitivity  # (no wrap: c <= 10^4 C_kept here)
        sigma, visible, _ = privacy.compressed_noise(spec, z, 20, secure=True)
        assert sigma < 4 or visible == pytest.approx(z)
