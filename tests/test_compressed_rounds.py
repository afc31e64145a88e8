"""Compressed rounds (`compression = "ddg16"`) on the real server over real HTTP: the task's
parameters, plain uploads (the requantized plain form) accepted and every bad one refused
with a 4xx and no state change, a secure round's modular sum decoded into the new model,
and the device's policy checks of the parameters it is given."""
from __future__ import annotations

import hashlib
import math
import zlib

import numpy as np
import pytest
from test_device import ONE_DEVICE_ROUNDS, make_device, run_until, sender_messages  # noqa: F401
from test_secure_rounds import Member, accepted, refused, secure_round, stored
from test_server_updates import _assert_unchanged, _pending_files

from aggregation_server.compressed import max_step, norm_limit, spec_for
from device_model import tensorfile
from device_model.checkpoint import weights_from_bytes
from aggregation_server.config import RoundConfig
from federated import privacy
from federated.compression import (PLAIN_SCHEME, Compression, CompressionError,
                                   kept_clip_norm, requantization_bound, requantize,
                                   round_seed)
from federated.secagg import MaskedInput, SharesRelay, flatten, unflatten
from federated.protocol import Task
from federated.wire import (COMPRESSED_FORMAT, Update, WireError, encode_compressed_update,
                           tensors_from_bytes)
from keyboard_app.ledger import FILE_NAME, PrivacyLedger
from keyboard_app.privacy_policy import DevicePolicy, PolicyRefusal

COMPRESSED = {"compression": "ddg16"}


def clipped_update(server, seed: int, clip_norm: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    raw = {k: rng.normal(0, 0.05, s).astype(np.float32) for k, s in server.shapes.items()}
    return privacy.clip(raw, clip_norm)[0]


def noised_input(server, task: dict, seed: int,
                 secure: bool) -> tuple[Compression, np.ndarray, float]:
    """(the round's codec, an honest device's clipped flat update, its noise sigma)."""
    spec = Compression.from_dict(task["compression"])
    sigma, _, _ = privacy.compressed_noise(spec, task["noise_multiplier"], task["min_reports"],
                                           secure=secure)
    return spec, flatten(clipped_update(server, seed, task["clip_norm"]), server.shapes), sigma


def words_for(server, task: dict, seed: int) -> tuple[np.ndarray, Compression]:
    """What an honest device masks in a secure round: its update through the codec."""
    spec, flat, sigma = noised_input(server, task, seed, secure=True)
    return spec.encode(flat, sigma, np.random.default_rng(seed + 100)), spec


def plain_for(server, task: dict, seed: int) -> tuple[int, np.ndarray, Compression]:
    """What an honest device sends in a plain round: (step, values, the codec)."""
    spec, flat, sigma = noised_input(server, task, seed, secure=False)
    return (*spec.encode_plain(flat, sigma, np.random.default_rng(seed + 100)), spec)


def compressed_body(task: dict, step: int, values: np.ndarray, spec: Compression) -> bytes:
    update = Update({}, task["round_id"], task["model_version"], 5, {})
    return encode_compressed_update(update, step, values, spec.seed, spec.levels)


def raw_body(task: dict, deflated: bytes, seed: bytes, step: str,
             dtype: type = np.uint8) -> bytes:
    """A plain-form body with any stream, step and tensor type (what a hostile device can
    send)."""
    meta = {"format": COMPRESSED_FORMAT, "round_id": str(task["round_id"]),
            "model_version": str(task["model_version"]), "num_examples": "5",
            "metrics": "{}", "seed": seed.hex(), "step": step}
    return tensorfile.save({"deflated": np.frombuffer(deflated, np.uint8).astype(dtype)}, meta)


@pytest.fixture
def plain(start_server):
    server = start_server(round=COMPRESSED)
    device = server.enrol()
    return server, device, server.task(device)


def test_the_task_carries_the_rounds_parameters(plain):
    """A plain round's codec is the plain form on every coordinate, under the round's one
    seed (the same for every device: plain fleets are reproducible for a seed)."""
    server, _, task = plain
    config = RoundConfig.from_dict({**server.status()["config"]})
    dimension = sum(int(np.prod(s)) for s in server.shapes.values())
    assert task["compression"] == spec_for(config, task["round_id"], task["model_sha256"],
                                           dimension).to_dict()
    spec = Compression.from_dict(task["compression"])
    assert spec.seed == round_seed(task["round_id"], task["model_sha256"])
    assert spec.scheme == PLAIN_SCHEME and spec.kept >= dimension
    assert spec.kept_clip == spec.clip_norm
    assert server.task(server.enrol())["compression"] == task["compression"]


def test_a_compressed_upload_is_accepted_and_stored_decoded(plain):
    server, device, task = plain
    step, values, spec = plain_for(server, task, 1)
    r = server.upload(device, task["round_id"], compressed_body(task, step, values, spec))
    accepted(r)
    [path] = _pending_files(server)
    stored, _ = tensors_from_bytes(path.read_bytes())
    expected = unflatten(spec.decode_integers(values * float(step)).astype(np.float32),
                         server.shapes)
    for name in server.shapes:
        np.testing.assert_array_equal(stored[name], expected[name])


def _deflated(values: np.ndarray, levels: int) -> bytes:
    return zlib.compress((values.astype(np.int16) + levels).astype(np.uint8).tobytes())


def _bomb(size: int) -> bytes:
    """A zlib stream of `size` zero bytes (about a thousandth of it on the wire)."""
    packer, chunk = zlib.compressobj(9), bytes(2 ** 20)
    return b"".join(packer.compress(chunk) for _ in range(size // len(chunk))) + packer.flush()


def _bad_body(case: str, server, task: dict, step: int, values: np.ndarray,
              spec: Compression, limit: int) -> bytes:
    """One hostile variant of an honest plain upload (`case`)."""
    good, seed, levels = _deflated(values, spec.levels), spec.seed, spec.levels
    steps = {"step_zero": "0", "step_negative": "-3", "step_nan": "nan", "step_inf": "inf",
             "step_fraction": "2.5", "step_exponent": "1e3", "step_over": str(limit + 1),
             "step_padded": f"0{step}", "step_digits": "9" * 5000}
    if case in steps:
        return raw_body(task, good, seed, steps[case])
    raw = (values.astype(np.int16) + levels).astype(np.uint8)
    return {
        "short": lambda: compressed_body(task, step, values[:-1], spec),
        "long": lambda: compressed_body(task, step, np.r_[values, values[:1]], spec),
        "bomb": lambda: raw_body(task, _bomb(64 * 2 ** 20), seed, str(step)),
        "truncated": lambda: raw_body(task, good[:-9], seed, str(step)),
        "trailing": lambda: raw_body(task, good + good, seed, str(step)),
        "not_zlib": lambda: raw_body(task, bytes(range(256)) * 4, seed, str(step)),
        "value_over": lambda: raw_body(task, zlib.compress(np.r_[raw[:-1], 2 * levels + 1]
                                                          .astype(np.uint8).tobytes()),
                                       seed, str(step)),
        "dtype": lambda: raw_body(task, good, seed, str(step), np.uint16),
        "seed": lambda: raw_body(task, good, round_seed(task["round_id"] + 1,
                                                        task["model_sha256"]), str(step)),
        "float32": lambda: server.update_bytes(task),
        "out_of_range": lambda: compressed_body(
            task, step, np.where(values < 0, -levels, levels).astype(np.int8), spec),
    }[case]()


@pytest.mark.parametrize("case, status, code, needle", [
    ("short", 400, "invalid_update", "inflate to exactly"),
    ("long", 400, "invalid_update", "inflate to exactly"),
    ("bomb", 400, "invalid_update", "inflate to exactly"),
    ("truncated", 400, "invalid_update", "inflate to exactly"),
    ("trailing", 400, "invalid_update", "nothing after it"),
    ("not_zlib", 400, "invalid_update", "not a zlib stream"),
    ("value_over", 400, "invalid_update", "must lie in [-15, 15]"),
    ("dtype", 400, "invalid_update", "bytes (U8)"),
    ("seed", 400, "invalid_update", "compression seed differs"),
    ("step_zero", 400, "invalid_update", "metadata 'step'"),
    ("step_negative", 400, "invalid_update", "metadata 'step'"),
    ("step_nan", 400, "invalid_update", "metadata 'step'"),
    ("step_inf", 400, "invalid_update", "metadata 'step'"),
    ("step_fraction", 400, "invalid_update", "metadata 'step'"),
    ("step_exponent", 400, "invalid_update", "metadata 'step'"),
    ("step_over", 400, "invalid_update", "an honest update's values need"),
    ("step_padded", 400, "invalid_update", "metadata 'step'"),
    ("step_digits", 400, "invalid_update", "metadata 'step'"),
    ("float32", 400, "invalid_update", "takes compressed updates"),
    ("out_of_range", 422, "norm_too_large", "integer units"),
])
def test_bad_compressed_uploads_are_refused_and_change_nothing(plain, case, status, code,
                                                               needle):
    server, device, task = plain
    step, values, spec = plain_for(server, task, 2)
    config = RoundConfig.from_dict({**server.status()["config"]})
    limit = max_step(spec, config)
    assert step <= limit
    body = _bad_body(case, server, task, step, values, spec, limit)
    refused(server.upload(device, task["round_id"], body), status, code, needle)
    _assert_unchanged(server, device, task)
    accepted(server.upload(device, task["round_id"], compressed_body(task, step, values, spec)))


def test_an_update_that_was_not_clipped_to_c_is_refused(start_server):
    """Without noise the server's checks are tight: the plain form of an update of norm
    2C (a device that skipped the clip) needs a step over what clipped values need (400),
    at 1.5C its norm is over the bound (422); nothing changes, and the same update clipped
    to C is accepted."""
    server = start_server(round={**COMPRESSED, "noise_multiplier": 0.0, "epsilon_budget": None})
    device = server.enrol()
    task = server.task(device)
    spec = Compression.from_dict(task["compression"])
    x = np.random.default_rng(3).normal(size=spec.dimension)
    x *= spec.clip_norm / np.linalg.norm(x)
    rng = np.random.default_rng(4)
    v = spec.integers(x, 0.0, rng)
    for factor, status, code, needle in ((2, 400, "invalid_update", "metadata 'step'"),
                                         (1.5, 422, "norm_too_large", "integer units")):
        widened = requantize(np.rint(factor * v).astype(np.int64), spec.levels, rng)
        refused(server.upload(device, task["round_id"], compressed_body(task, *widened, spec)),
                status, code, needle)
        _assert_unchanged(server, device, task)
    honest = requantize(v, spec.levels, rng)
    accepted(server.upload(device, task["round_id"], compressed_body(task, *honest, spec)))


def _fake_upload(spec: Compression, config: RoundConfig, step: int, rng) -> np.ndarray:
    """A fake device's values at `step`: one direction, as long as the server's bound
    (the honest norm plus the requantization's allowance at that step) lets through."""
    bound = norm_limit(spec, config) + requantization_bound(step, spec.kept)
    direction = rng.normal(size=spec.kept)
    direction *= bound / step / np.linalg.norm(direction)
    values = np.clip(np.rint(direction), -spec.levels, spec.levels)
    while np.linalg.norm(step * values) > bound:
        direction *= 0.998
        values = np.clip(np.rint(direction), -spec.levels, spec.levels)
    return values.astype(np.int8)


@pytest.mark.parametrize("z", [1.0, 0.0])
def test_a_fake_device_cannot_claim_a_step_larger_than_honest_values_need(start_server, z):
    """The step used to be bounded by the honest norm over 15, and the norm check allows
    the requantization error at the claimed step: a fake device claiming that step sent
    over 5 times (this tiny model; 43 for the LSTM) the norm an honest upload can have.
    The step is now bounded by an honest integer's size (`coordinate_bound`): that upload
    is refused with 400 and nothing changes; the longest one the new bound lets through is
    within 1.3 times the honest norm bound here (the LSTM: 1.28 with z = 1; 3.8 without
    noise, where the step's bound assumes all of an update in one of the 95 blocks)."""
    server = start_server(round={**COMPRESSED, "noise_multiplier": z, "epsilon_budget": None})
    device = server.enrol()
    task = server.task(device)
    config = RoundConfig.from_dict({**server.status()["config"]})
    spec, rng = Compression.from_dict(task["compression"]), np.random.default_rng(8)
    honest = norm_limit(spec, config)
    old = max(1, math.ceil(honest / spec.levels))
    values = _fake_upload(spec, config, old, rng)
    assert np.linalg.norm(old * values.astype(float)) > 5 * honest  # what got through
    refused(server.upload(device, task["round_id"], compressed_body(task, old, values, spec)),
            400, "invalid_update", "an honest update's values need")
    _assert_unchanged(server, device, task)
    step = max_step(spec, config)
    assert step < old / 15
    values = _fake_upload(spec, config, step, rng)
    longest = np.linalg.norm(step * values.astype(float))
    assert longest < 1.3 * honest
    accepted(server.upload(device, task["round_id"], compressed_body(task, step, values, spec)))
    honest_step, _, _ = plain_for(server, task, 3)
    assert honest_step <= step


def test_a_float_round_refuses_compressed_uploads(server):
    device = server.enrol()
    task = server.task(device)
    assert "compression" not in task
    body = encode_compressed_update(Update({}, task["round_id"], task["model_version"], 5),
                                    1, np.zeros(8, np.int8), bytes(32), 15)
    refused(server.upload(device, task["round_id"], body), 400, "invalid_update", "format")
    _assert_unchanged(server, device, task)
    accepted(server.upload(device, task["round_id"], server.update_bytes(task)))


@pytest.mark.parametrize("scheme", ["ddg16", "ddg16-full"])
def test_a_secure_compressed_round_decodes_the_modular_sum_into_the_model(start_server, scheme):
    server = start_server(round=secure_round(4, 3, compression=scheme))
    members = [Member(server, i) for i in range(4)]
    spec = Compression.from_dict(members[0].task["compression"])
    assert members[0].config.dimension == spec.kept  # the protocol sums the words
    for m in members:
        m.words, _ = words_for(server, m.task, m.id)
        accepted(m.advertise())
    for m in members:
        accepted(m.share())
    bad = members[3]
    masked = bad.device.masked_input(SharesRelay.from_dict(bad.relay("shares")), bad.words)
    before = stored(server, bad.round_id)
    wide = MaskedInput(bad.round_id, bad.id, masked.masked.astype(np.uint32)).to_bytes()
    refused(bad.put_masked(wide), 413, "too_large", "byte limit")  # 32-bit words: wrong modulus
    assert stored(server, bad.round_id) == before  # nothing kept
    short = MaskedInput(bad.round_id, bad.id, masked.masked[:-1]).to_bytes()
    refused(bad.put_masked(short), 400, "malformed_message", "excluded")  # wrong size
    for step in ("mask", "sign", "unmask"):
        for m in members[:3]:
            accepted(m.put_masked(m.device.masked_input(
                SharesRelay.from_dict(m.relay("shares")), m.words).to_bytes())
                if step == "mask" else getattr(m, step)())
    server.wait_for(lambda st: st["model"]["version"] == 1, what="round closed")
    total = (sum(m.words.astype(np.uint64) for m in members[:3]) % 2 ** 16).astype(np.uint16)
    mean = unflatten((spec.decode_sum(total) / 3).astype(np.float32), server.shapes)
    base, _, _ = server.model(0)
    new, _, _ = server.model(1)
    for name in server.shapes:
        expected = base[name] + mean[name]
        assert np.allclose(new[name], expected, rtol=0, atol=4 * np.spacing(
            np.abs(expected).max() + np.abs(mean[name]).max())), name


# ---------------------------------------------------------------- the device checks

POLICY = DevicePolicy.relaxed(min_reports=2)


def test_the_device_accepts_the_rounds_parameters_and_sizes_its_integer_noise(plain):
    _, _, task = plain
    terms = POLICY.terms(Task.from_json(task))
    spec = Compression.from_dict(task["compression"])
    assert terms.compression == spec
    assert terms.noise_sigma == pytest.approx(task["noise_multiplier"] * spec.sensitivity)
    assert terms.visible_multiplier == pytest.approx(task["noise_multiplier"])


def test_the_ledger_counts_a_compressed_round_by_its_own_noise_over_delta(plain, tmp_path):
    """The device's own noise protects it by sigma / Delta (the rounded sensitivity), not
    sigma / (scale * C): in a plain round that is exactly what the server sees, so the
    epsilon "if every other report were fake" equals the epsilon against the server."""
    _, _, task = plain
    terms = POLICY.terms(Task.from_json(task))
    assert terms.own == pytest.approx(terms.noise_sigma / terms.compression.sensitivity)
    ledger = PrivacyLedger(tmp_path / FILE_NAME)
    ledger.record_sent("http://a", task["round_id"], terms)
    assert ledger.own_multipliers() == [pytest.approx(task["noise_multiplier"])]
    summary = ledger.summary(1e-6)
    assert summary["epsilon_alone"] == pytest.approx(summary["epsilon"])


@pytest.mark.parametrize("change, message", [
    ({"seed": "00" * 32}, "the seed or clip norm is not the round's"), ({"bits": 8}, "bits"),
    ({"clip_norm": 0.5}, "the seed or clip norm is not the round's"),
    ({"kept_clip_norm": 0.25}, "kept_clip_norm 0.25 is not C min")])
def test_the_device_does_not_parse_parameters_that_are_not_the_rounds(plain, change, message):
    _, _, task = plain
    data = {**task["compression"], **change}
    if "clip_norm" in change:  # a consistent spec for another C: still not the round's
        data["kept_clip_norm"] = kept_clip_norm(change["clip_norm"], data["dimension"],
                                                data["kept"])
    with pytest.raises(WireError, match=f"task 'compression': .*{message}"):
        Task.from_json({**task, "compression": data})


@pytest.mark.parametrize("secure", [False, True])
def test_the_device_refuses_the_other_kind_of_rounds_scheme(start_server, secure):
    """A secure round must sum 16-bit words; a plain round sends the plain form: a task
    with the other kind's (consistent) parameters is not parsed."""
    server = start_server(round=secure_round(4, 3, compression="ddg16") if secure
                          else COMPRESSED)
    task = server.task(server.enrol())
    spec = Compression.from_dict(task["compression"])
    other = privacy.round_compression(spec.seed, spec.dimension, spec.clip_norm,
                                      task["noise_multiplier"], 3, 4, secure=not secure)
    with pytest.raises(WireError, match="task 'compression': scheme .* is for"):
        Task.from_json({**task, "compression": other.to_dict()})


@pytest.mark.parametrize("change", [
    lambda c: {"scale": 1e20}, lambda c: {"scale": 2 * c["scale"]},
    lambda c: {"block": c["block"] // 2, "kept": c["kept"] // 2},  # a random half
    lambda c: {"block": 2}])
def test_the_device_does_not_parse_plain_parameters_it_does_not_derive(plain, change):
    """A malicious server's plain task with a scale of 1e20 made the device's int64
    integers overflow: its upload decoded with noise of std 0.02 C per coordinate instead of
    z C = C (a near-noiseless update). The plain form's kept, block, bits and scale are
    the device's own (`Compression.plain`); a task with others is not parsed."""
    _, _, task = plain
    data = {**task["compression"], **change(task["compression"])}
    data["kept_clip_norm"] = kept_clip_norm(data["clip_norm"], data["dimension"], data["kept"])
    Compression.from_dict(data)  # a consistent spec: only the derivation refuses it
    with pytest.raises(WireError, match="task 'compression': a plain round's kept, block"):
        Task.from_json({**task, "compression": data})


def test_the_device_refuses_a_noise_multiplier_that_overflows_its_integers(plain):
    """A noise multiplier of 1e14 (more noise, so inside any policy) made sigma 1e20
    integer units: past int64 the noise wrapped to almost nothing. The device refuses it;
    the codec would not encode it either, and a server does not open such a round."""
    _, _, task = plain
    bad = Task.from_json({**task, "noise_multiplier": 1e14})
    with pytest.raises(PolicyRefusal) as refusal:
        POLICY.terms(bad)
    assert refusal.value.code == "compression_unsafe"
    assert "could overflow this device's integers" in refusal.value.detail
    spec = bad.compression
    with pytest.raises(CompressionError, match="could overflow the integers"):
        spec.encode_plain(np.zeros(spec.dimension), 1e14 * spec.sensitivity,
                          np.random.default_rng(0))
    with pytest.raises(CompressionError, match="too large for compressed plain rounds"):
        privacy.round_compression(spec.seed, spec.dimension, spec.clip_norm, 1e14, 5, 5,
                                  secure=False)
    assert POLICY.terms(Task.from_json({**task, "noise_multiplier": 1e6})).noise_sigma > 1e12


def test_the_device_refuses_a_modulus_that_could_wrap_its_noise(start_server):
    task = Member(start_server(round=secure_round(4, 3, compression="ddg16")), 0).task
    bad = Task.from_json({**task, "compression": {**task["compression"], "scale": 1e7}})
    with pytest.raises(PolicyRefusal) as refusal:
        DevicePolicy.relaxed(min_reports=3).terms(bad)
    assert refusal.value.code == "compression_unsafe"



# ---------------------------------------------------------------- downloads

def test_the_compact_download_is_under_half_and_its_sha256_is_in_the_task(plain):
    server, _, task = plain
    full = server.http.get(f"{server.url}/v1/models/{task['model_version']}", timeout=60)
    compact = server.http.get(f"{server.url}/v1/models/{task['model_version']}/compact",
                              timeout=60)
    assert full.status_code == compact.status_code == 200
    assert len(compact.content) <= len(full.content) / 2
    sha = hashlib.sha256(compact.content).hexdigest()
    assert sha == task["model_compact_sha256"] == compact.headers["ETag"].strip('"')
    again = server.http.get(f"{server.url}/v1/model/compact", timeout=60,
                            headers={"If-None-Match": f'"{sha}"'})
    assert again.status_code == 304
    f32, _ = weights_from_bytes(full.content)
    int8, _ = weights_from_bytes(compact.content)
    for name, w in f32.items():  # per-row int8: within half a step of each row's scale
        step = np.abs(w).max(axis=-1, keepdims=True) / 127 if w.ndim == 2 else 0
        assert np.all(np.abs(int8[name] - w) <= step / 2 + 1e-6), name


def test_a_device_with_compact_downloads_trains_from_the_int8_model(start_server, tmp_path,
                                                                    sender_messages):
    server = start_server(round={**ONE_DEVICE_ROUNDS, **COMPRESSED})
    device = make_device(server.url, tmp_path, sender_messages, code=server.enrolment_code())
    device.compact_downloads = True
    run_until(device, server, "uploaded")
    compact = server.http.get(f"{server.url}/v1/models/0/compact", timeout=60).content
    assert device.client.cached_model().sha256 == hashlib.sha256(compact).hexdigest()
    server.wait_for(lambda st: st["model"]["version"] == 1, what="the round aggregated")


def test_what_the_phone_says_it_sent_is_clipped_to_c_with_the_rounds_noise(
        start_server, tmp_path, sender_messages):
    """A plain compressed round sends every coordinate, clipped to C, with the round's full
    noise, requantized after it: the privacy panel and the ledger name that clip and noise
    (noise over clip reads as the round's z) and say the values were rounded."""
    server = start_server(round={**ONE_DEVICE_ROUNDS, **COMPRESSED})
    device = make_device(server.url, tmp_path, sender_messages, code=server.enrolment_code())
    run_until(device, server, "uploaded")
    spec = Compression.from_dict(server.task(server.enrol())["compression"])
    z, status = ONE_DEVICE_ROUNDS["noise_multiplier"], device.status()
    assert status.clip_norm == spec.kept_clip == spec.clip_norm
    assert status.noise_stddev / status.clip_norm == pytest.approx(z, rel=0.01)
    seen = device.ledger.entries()[-1].seen
    assert f"clipped to {spec.clip_norm:.3g} with noise of std {status.noise_stddev:.3g}" in seen
    assert "rounded to 31 levels after the noise" in seen


def test_noise_too_small_for_the_discrete_gaussian_bound_opens_no_round(start_server):
    server = start_server(round={**COMPRESSED, "noise_multiplier": 1e-7,
                                 "epsilon_budget": None})
    status = server.status()
    assert status["round"] is None
    assert "too small for compressed rounds" in status["blocked_reason"]
    assert "switch compression off" in status["blocked_reason"]
