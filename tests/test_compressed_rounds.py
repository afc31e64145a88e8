"""Compressed rounds (`compression = "ddg16"`) on the real server over real HTTP: the task's
parameters, plain uploads accepted and every bad one refused with a 4xx and no state
change, a secure round's modular sum decoded into the new model, and the device's policy
checks of the parameters it is given."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from test_device import ONE_DEVICE_ROUNDS, make_device, run_until, sender_messages  # noqa: F401
from test_secure_rounds import Member, accepted, refused, secure_round, stored
from test_server_updates import _assert_unchanged, _pending_files

from aggregation_server.compressed import spec_for
from device_model.checkpoint import weights_from_bytes
from aggregation_server.config import RoundConfig
from federated import privacy
from federated.compression import Compression, kept_clip_norm, round_seed, upload_seed
from federated.secagg import MaskedInput, SharesRelay, flatten, unflatten
from federated.protocol import Task, checkin_from_json
from federated.wire import Update, WireError, encode_compressed_update, tensors_from_bytes
from keyboard_app.ledger import FILE_NAME, PrivacyLedger
from keyboard_app.privacy_policy import DevicePolicy, PolicyRefusal

COMPRESSED = {"compression": "ddg16"}


def clipped_update(server, seed: int, clip_norm: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    raw = {k: rng.normal(0, 0.05, s).astype(np.float32) for k, s in server.shapes.items()}
    return privacy.clip(raw, clip_norm)[0]


def words_for(server, task: dict, seed: int, secure: bool) -> tuple[np.ndarray, Compression]:
    """What an honest device sends: its clipped update through the round's codec."""
    spec = Compression.from_dict(task["compression"])
    sigma, _, _ = privacy.compressed_noise(spec, task["noise_multiplier"], task["min_reports"],
                                           secure=secure)
    flat = flatten(clipped_update(server, seed, task["clip_norm"]), server.shapes)
    return spec.encode(flat, sigma, np.random.default_rng(seed + 100)), spec


def compressed_body(task: dict, words: np.ndarray, seed: bytes) -> bytes:
    update = Update({}, task["round_id"], task["model_version"], 5, {})
    return encode_compressed_update(update, words, seed)


@pytest.fixture
def plain(start_server):
    server = start_server(round=COMPRESSED)
    device = server.enrol()
    return server, device, server.task(device)


def test_the_task_carries_the_rounds_parameters_with_the_devices_own_seed(plain):
    """A plain round's seed is the device's (`upload_seed`): each device keeps its own
    subset, derived from the round, the model and its id."""
    server, device, task = plain
    config = RoundConfig.from_dict({**server.status()["config"]})
    dimension = sum(int(np.prod(s)) for s in server.shapes.values())
    assert task["compression"] == spec_for(config, task["round_id"], task["model_sha256"],
                                           dimension, device.device_id).to_dict()
    spec = Compression.from_dict(task["compression"])
    assert spec.seed == upload_seed(task["round_id"], task["model_sha256"], device.device_id)
    assert spec.seed != round_seed(task["round_id"], task["model_sha256"])
    other = Compression.from_dict(server.task(server.enrol())["compression"])
    assert other.seed != spec.seed and other.to_dict() | {"seed": spec.seed.hex()} == \
        spec.to_dict()  # the same parameters but the seed
    assert spec.upload_bytes * 8 <= 4 * dimension


def test_a_compressed_upload_is_accepted_and_stored_decoded(plain):
    server, device, task = plain
    words, spec = words_for(server, task, 1, secure=False)
    r = server.upload(device, task["round_id"], compressed_body(task, words, spec.seed))
    accepted(r)
    [path] = _pending_files(server)
    stored, _ = tensors_from_bytes(path.read_bytes())
    expected = unflatten(spec.decode_sum(words).astype(np.float32), server.shapes)
    for name in server.shapes:
        np.testing.assert_array_equal(stored[name], expected[name])


@pytest.mark.parametrize("case, status, code, needle", [
    ("short", 400, "invalid_update", "one tensor 'words'"),
    ("modulus", 400, "invalid_update", "16-bit words"),
    ("seed", 400, "invalid_update", "compression seed differs"),
    ("other_device", 400, "invalid_update", "another round, model or device"),
    ("float32", 400, "invalid_update", "takes compressed updates"),
    ("out_of_range", 422, "norm_too_large", "integer units"),
])
def test_bad_compressed_uploads_are_refused_and_change_nothing(plain, case, status, code,
                                                               needle):
    server, device, task = plain
    words, spec = words_for(server, task, 2, secure=False)
    body = {
        "short": lambda: compressed_body(task, words[:-1], spec.seed),
        "modulus": lambda: _u32_body(task, words, spec.seed),
        "seed": lambda: compressed_body(task, words, round_seed(task["round_id"] + 1,
                                                                task["model_sha256"])),
        "other_device": lambda: _another_devices_upload(server, task),
        "float32": lambda: server.update_bytes(task),
        "out_of_range": lambda: compressed_body(task, np.full_like(words, 2 ** 15 - 1),
                                                spec.seed),
    }[case]()
    refused(server.upload(device, task["round_id"], body), status, code, needle)
    _assert_unchanged(server, device, task)
    accepted(server.upload(device, task["round_id"], compressed_body(task, words, spec.seed)))


def test_an_upload_whose_kept_part_was_not_clipped_to_c_kept_is_refused(start_server):
    """Without noise the server's norm check is exact: words from a kept part of norm C (a
    device that skipped the clip in the kept subspace) are refused with 422 and nothing
    changes; the same update through the codec is accepted."""
    server = start_server(round={**COMPRESSED, "noise_multiplier": 0.0, "epsilon_budget": None})
    device = server.enrol()
    task = server.task(device)
    spec = Compression.from_dict(task["compression"])
    assert spec.kept_clip < 0.6 * spec.clip_norm and task["noise_multiplier"] == 0
    x = np.zeros(spec.dimension)  # all of C on the kept coordinates
    index = np.flatnonzero(spec.selected(np.ones(spec.dimension) * 1e-9))
    x[index] = np.random.default_rng(3).normal(size=index.size)
    x *= spec.clip_norm / np.linalg.norm(x)
    words = spec.encode(x, 0.0, np.random.default_rng(4))
    widened = np.mod(np.rint(spec.centred(words) * (spec.clip_norm / spec.kept_clip)),
                     2 ** 16).astype(np.uint16)  # the kept part at norm C
    refused(server.upload(device, task["round_id"], compressed_body(task, widened, spec.seed)),
            422, "norm_too_large", "integer units")
    _assert_unchanged(server, device, task)
    accepted(server.upload(device, task["round_id"], compressed_body(task, words, spec.seed)))


def _another_devices_upload(server, task: dict) -> bytes:
    """Words compressed, honestly, with another device's seed in the same round."""
    other = server.task(server.enrol())
    words, spec = words_for(server, other, 3, secure=False)
    assert other["round_id"] == task["round_id"]
    assert spec.seed != Compression.from_dict(task["compression"]).seed
    return compressed_body(task, words, spec.seed)


def _u32_body(task: dict, words: np.ndarray, seed: bytes) -> bytes:
    """The right words as 32-bit integers: the wrong modulus."""
    from device_model import tensorfile
    from federated.wire import COMPRESSED_FORMAT
    meta = {"format": COMPRESSED_FORMAT, "round_id": str(task["round_id"]),
            "model_version": str(task["model_version"]), "num_examples": "5",
            "metrics": "{}", "seed": seed.hex(), "bits": "32"}
    return tensorfile.save({"words": words.astype(np.uint32)}, meta)


def test_a_float_round_refuses_compressed_uploads(server):
    device = server.enrol()
    task = server.task(device)
    assert "compression" not in task
    body = compressed_body(task, np.zeros(8, np.uint16), bytes(32))
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
        m.words, _ = words_for(server, m.task, m.id, secure=True)
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
    ({"seed": "00" * 32}, "the seed is not the round's for this device"), ({"bits": 8}, "bits"),
    ({"clip_norm": 0.5}, "the clip norm is not the round's"),
    ({"kept_clip_norm": 1.0}, "kept_clip_norm 1.0 is not C min")])
def test_the_device_does_not_parse_parameters_that_are_not_the_rounds(plain, change, message):
    _, device, task = plain
    data = {**task["compression"], **change}
    if "clip_norm" in change:  # a consistent spec for another C: still not the round's
        data["kept_clip_norm"] = kept_clip_norm(change["clip_norm"], data["dimension"],
                                                data["kept"])
    with pytest.raises(WireError, match=f"task 'compression': .*{message}"):
        checkin_from_json({"task": {**task, "compression": data}}, device.device_id)


def test_the_device_refuses_the_seed_of_another_device_or_the_rounds_shared_one(plain):
    """The device derives its plain round's seed itself (`Task.check_device`): the task
    made for it parses, the same task read by another device, or carrying the round's
    shared (secure-round) seed, is refused."""
    _, device, task = plain
    assert checkin_from_json({"task": task}, device.device_id) == Task.from_json(task)
    shared = {**task["compression"],
              "seed": round_seed(task["round_id"], task["model_sha256"]).hex()}
    for answer, device_id in (({"task": task}, "another-device"),
                              ({"task": {**task, "compression": shared}}, device.device_id)):
        with pytest.raises(WireError, match="the seed is not the round's for this device"):
            checkin_from_json(answer, device_id)


def test_the_device_refuses_a_modulus_that_could_wrap_its_noise(plain):
    _, _, task = plain
    bad = Task.from_json({**task, "compression": {**task["compression"], "scale": 1e7}})
    with pytest.raises(PolicyRefusal) as refusal:
        POLICY.terms(bad)
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


def test_what_the_phone_says_it_sent_is_clipped_to_c_kept_with_the_rounds_noise(
        start_server, tmp_path, sender_messages):
    """A compressed round sends the kept part, clipped to C_kept (about half of C here), with
    noise sized to it: the privacy panel and the ledger name that clip, so that noise over
    clip reads as the round's z (it read z / 2 with C, as if the phone had half the noise)."""
    server = start_server(round={**ONE_DEVICE_ROUNDS, **COMPRESSED})
    device = make_device(server.url, tmp_path, sender_messages, code=server.enrolment_code())
    run_until(device, server, "uploaded")
    spec = Compression.from_dict(server.task(server.enrol())["compression"])
    z, status = ONE_DEVICE_ROUNDS["noise_multiplier"], device.status()
    assert spec.kept_clip < 0.6 * spec.clip_norm
    assert status.clip_norm == spec.kept_clip
    assert status.noise_stddev / status.clip_norm == pytest.approx(z, rel=0.01)
    seen = device.ledger.entries()[-1].seen
    assert f"clipped to {spec.kept_clip:.3g} with noise of std {status.noise_stddev:.3g}" in seen
    assert f"{spec.kept:,} of its {spec.dimension:,} coordinates" in seen


def test_noise_too_small_for_the_discrete_gaussian_bound_opens_no_round(start_server):
    server = start_server(round={**COMPRESSED, "noise_multiplier": 1e-7,
                                 "epsilon_budget": None})
    status = server.status()
    assert status["round"] is None
    assert "too small for compressed rounds" in status["blocked_reason"]
    assert "switch compression off" in status["blocked_reason"]
