"""The device privacy policy on its own: safe defaults, explicit relaxation, the noise the
device sizes itself, the SecAgg+ rule, the budget."""
import math
import os
from dataclasses import replace

import pytest

from conftest import device_task, task_json
from federated import privacy
from federated.protocol import Task
from federated.secagg import SecAggConfig
from federated.secagg.params import hiding_problem
from federated.wire import WireError
from keyboard_app.privacy_policy import DevicePolicy, PolicyError, PolicyRefusal


task = device_task


def secure_task(n: int = 12, minimum: int = 10, **config_changes) -> Task:
    config = SecAggConfig.create(4, n, 100, clip_norm=1.0, noise_stddev=0.3,
                                 min_clients=minimum, graph_seed=os.urandom(32)).to_dict()
    config = {**config, **config_changes}
    secagg = {"client_id": 1, "config": config, "advertise_by": 1e10}
    return task(secure_aggregation=True, min_reports=minimum, secagg=secagg)


def refusal(policy: DevicePolicy, t: dict) -> str:
    with pytest.raises(PolicyRefusal) as caught:
        policy.terms(t)
    assert caught.value.reason.endswith(".") and "your" in caught.value.reason
    return caught.value.code


def test_looser_than_the_defaults_only_by_name():
    for loose in ({"min_noise_multiplier": 0.5}, {"max_clip_norm": 2.0}, {"min_reports": 2},
                  {"dishonest_share": 0.0}, {"epsilon_budget": 50.0}, {"epsilon_budget": None},
                  {"delta": 1e-3}):
        with pytest.raises(PolicyError, match="looser than the safe defaults"):
            DevicePolicy(**loose)
        assert DevicePolicy.relaxed(**loose).loosenings() == [next(iter(loose))]
    tight = DevicePolicy(min_noise_multiplier=2.0, min_reports=50, epsilon_budget=3.0,
                         require_secure_aggregation=True)
    assert tight.loosenings() == [] and not tight.explicitly_relaxed
    with pytest.raises(PolicyError, match="min_reports"):
        DevicePolicy(min_reports=0)


def test_the_device_sizes_its_noise_and_ignores_the_servers():
    policy = DevicePolicy()
    plain = policy.terms(task(noise_stddev=0.0, clip_norm=0.5, noise_multiplier=1.2))
    assert plain.noise_stddev == pytest.approx(0.6)  # the full z*C, whatever the task says
    assert plain.visible_multiplier == pytest.approx(1.2)
    secure = policy.terms(secure_task())
    honest = privacy.honest_reports(10)  # 7 of 10 reports honest
    assert secure.noise_stddev == pytest.approx(1.0 / math.sqrt(honest))
    assert secure.visible_multiplier == pytest.approx(1.0)
    share = DevicePolicy(dishonest_share=0.5).terms(secure_task())
    assert share.noise_stddev == pytest.approx(1.0 / math.sqrt(5))  # a warier device adds more
    told = policy.terms(replace(secure_task(), dishonest_share=0.5))  # so does a warier server's
    assert told.noise_stddev == pytest.approx(share.noise_stddev)
    assert policy.terms(replace(secure_task(), dishonest_share=0.0)) == secure  # never less


@pytest.mark.parametrize("changes, code", [
    ({"noise_multiplier": 0.0}, "noise_too_low"), ({"noise_multiplier": 0.99}, "noise_too_low"),
    ({"clip_norm": 1e5}, "clip_too_large"), ({"min_reports": 4}, "cohort_too_small"),
])
def test_tasks_outside_the_policy_are_refused(changes, code):
    assert refusal(DevicePolicy(), task(**changes)) == code


@pytest.mark.parametrize("changes, field", [
    ({"noise_multiplier": "lots"}, "noise_multiplier"), ({"min_reports": 5.5}, "min_reports"),
    ({"clip_norm": float("inf")}, "clip_norm"), ({"secure_aggregation": "yes"}, "secure_agg"),
    ({"dishonest_share": 1.0}, "dishonest_share"), ({"noise_multiplier": None}, "noise_mult"),
])
def test_unclear_privacy_terms_are_no_task_at_all(changes, field):
    """A task that does not say clearly how it protects privacy never reaches the policy:
    the device does not parse it (the runtime skips the round, nothing trained or sent)."""
    with pytest.raises(WireError, match=f"task '{field}"):
        task(**changes)
    without = task_json()
    del without["noise_multiplier"]
    with pytest.raises(WireError, match="task lacks 'noise_multiplier'"):
        Task.from_json(without)


def test_secure_rounds_must_hide_one_input():
    policy = DevicePolicy()
    assert refusal(DevicePolicy(require_secure_aggregation=True), task()) == "secure_required"
    assert policy.terms(secure_task()).secure
    assert refusal(policy, secure_task(threshold=1)) == "secagg_unsafe"
    assert refusal(policy, secure_task(threshold=6)) == "secagg_unsafe"  # k = 11: needs t > 6
    assert refusal(policy, secure_task(min_clients=3)) == "secagg_unsafe"  # below min_reports
    encoding = secure_task().secagg.config.encoding.to_dict()
    small = secure_task(encoding={**encoding, "bound": 1.1})
    assert refusal(policy, small) == "secagg_unsafe"  # the clamp would cut the noise off


@pytest.mark.parametrize("n, k, t, safe", [
    (10, 9, 6, True), (10, 9, 5, False), (100, 20, 11, True), (100, 20, 10, False),
    (3, 2, 2, True), (2, 1, 2, True), (5, 4, 1, False), (50, 20, 21, True),
])
def test_the_secagg_hiding_rule(n, k, t, safe):
    assert (hiding_problem(n, k, t) is None) == safe


def test_the_budget_counts_every_round_sent():
    policy = DevicePolicy(epsilon_budget=8.0)
    terms = policy.terms(task())
    assert policy.check_budget([], terms) == pytest.approx(privacy.composed_epsilon([1.0], 1e-6))
    assert policy.check_budget([1.0], terms) < 8.0
    with pytest.raises(PolicyRefusal) as caught:
        policy.check_budget([1.0, 1.0], terms)
    assert caught.value.code == "budget" and "privacy limit" in caught.value.reason
    unlimited = DevicePolicy.relaxed(epsilon_budget=None, min_noise_multiplier=0.0)
    assert math.isinf(unlimited.check_budget([], unlimited.terms(task(noise_multiplier=0.0))))


def test_a_secure_round_is_not_unmasked_over_fewer_inputs_than_the_noise_was_sized_for():
    from federated.secagg import UnmaskRequest
    from keyboard_app.secure_upload import SecureRoundError, SecureUpload
    upload = SecureUpload(None, secure_task(n=6, minimum=5), min_survivors=5)
    upload._check_survivors(UnmaskRequest(4, (2, 3, 4, 5), (6,), {}))  # 5 inputs in the sum
    with pytest.raises(SecureRoundError, match="unmask a sum of 3 inputs"):
        upload._check_survivors(UnmaskRequest(4, (2, 3), (4, 5, 6), {}))


def test_a_warier_phone_counts_the_others_smaller_noise():
    """A user who assumes more fake phones (Settings: 2/3 instead of 1/3) adds more noise,
    but the other honest phones add only what the task's share asks: the honest part of the
    sum then carries this phone's noise plus theirs, less than z*C, and the ledger's figure
    against the server says so (it claimed z)."""
    wary = DevicePolicy(dishonest_share=2 / 3).terms(secure_task())  # 10 reports, z = 1
    h = privacy.honest_reports(10, 2 / 3)  # 4 honest, this phone among them
    other = 1.0 / math.sqrt(privacy.honest_reports(10))  # the others size for 7 honest
    assert wary.noise_stddev == pytest.approx(1.0 / math.sqrt(h))
    assert wary.visible_multiplier == pytest.approx(math.sqrt(1 / h + (h - 1) * other ** 2))
    assert wary.visible_multiplier < 0.9
    same = DevicePolicy().terms(replace(secure_task(), dishonest_share=2 / 3))  # all told 2/3
    assert same.visible_multiplier == pytest.approx(1.0)
