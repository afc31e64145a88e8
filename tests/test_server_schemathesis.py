"""Fuzz the OpenAPI document the server serves with schemathesis: no 5xx, and every response
matches the document (status codes, content types, headers, schemas)."""
from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, positive_data_acceptance

from aggregation_server.config import BOUNDS
from aggregation_server.openapi import openapi_document

# The document the server serves (checked equal to it in `test_served_document`).
schema = schemathesis.openapi.from_dict(openapi_document())


def test_served_document(module_server):
    served = requests.get(f"{module_server['url']}/v1/openapi.json", timeout=30).json()
    assert served == openapi_document()


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_documented_responses(case, module_server):
    role = "admin" if case.path.startswith("/v1/admin") else "device"
    response = case.call(base_url=module_server["url"], timeout=60,
                         headers={"Authorization": f"Bearer {module_server[role]}"})
    # Schema-valid bytes are not necessarily a valid update (that needs the model's tensors),
    # so "schema-valid data is accepted" cannot hold for binary bodies; all other checks must.
    case.validate_response(response, additional_checks=[not_a_server_error],
                           excluded_checks=[positive_data_acceptance])


# What schema-valid data the server promises to accept (2xx, or 401/403/404 for credentials
# and ids that do not exist): every operation but binary uploads (a valid update needs the
# model's tensors), protocol messages (the round's state and cryptography decide), config
# patches (cross-field rules, stated in the schema's description) and enrolment and token
# recovery (an operator's code, an Ed25519 key and a signature decide).
promised = schema.exclude(path_regex=r"(/update|/secagg/.*|/v1/devices.*)$").exclude(
    path="/v1/admin/config", method="PUT")


@pytest.mark.slow
@promised.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_schema_valid_requests_are_accepted(case, module_server):
    role = "admin" if case.path.startswith("/v1/admin") else "device"
    response = case.call(base_url=module_server["url"], timeout=60,
                         headers={"Authorization": f"Bearer {module_server[role]}"})
    case.validate_response(response, checks=[positive_data_acceptance, not_a_server_error])


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_documented_config_ranges_are_the_enforced_ones(name, module_server):
    """Each documented bound: values just inside are taken, just outside refused with 400."""
    prop = openapi_document()["components"]["schemas"]["RoundConfigPatch"]["properties"][name]
    url, admin = f"{module_server['url']}/v1/admin/config", module_server["admin"]
    base = requests.get(url, headers={"Authorization": f"Bearer {admin}"}, timeout=30).json()
    safe = {"secure_aggregation": False, "target_reports": 100_000, "min_reports": 1}
    for edge, exclusive, step in (("minimum", "exclusiveMinimum", 1), ("maximum",
                                                                        "exclusiveMaximum", -1)):
        if edge not in prop:
            continue
        small = 1 if prop["type"] == "integer" else 1e-6 * max(1.0, abs(prop[edge]))
        inside = prop[edge] + (step * small if prop.get(exclusive) else 0)
        outside = prop[edge] - (0 if prop.get(exclusive) else step * small)
        if name in ("min_reports", "target_reports"):
            safe = {"secure_aggregation": False, "target_reports": int(inside),
                    "min_reports": 1}
        for value, status in ((inside, 200), (outside, 400)):
            r = requests.put(url, json={**safe, name: value},
                             headers={"Authorization": f"Bearer {admin}"}, timeout=30)
            assert r.status_code == status, (name, value, r.text)
    requests.put(url, json=base, headers={"Authorization": f"Bearer {admin}"}, timeout=30)


@pytest.mark.slow
def test_stateful_sequences(module_server):
    """Sequences of calls chained by the links schemathesis infers from the document (a
    check-in's round id into that round's uploads and protocol messages, an issued code's
    id into its revocation, ...): no 5xx, every response as documented."""

    calls: list[tuple[str, str, int]] = []

    class Workflow(schema.as_state_machine()):
        def get_call_kwargs(self, case):
            role = "admin" if case.path.startswith("/v1/admin") else "device"
            return {"base_url": module_server["url"], "timeout": 60,
                    "headers": {"Authorization": f"Bearer {module_server[role]}"}}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            calls.append((case.method, case.formatted_path, response.status_code))
            case.validate_response(response, additional_checks=[not_a_server_error],
                                   excluded_checks=[positive_data_acceptance])

    Workflow.run(settings=settings(max_examples=15, stateful_step_count=6, deadline=None,
                                   derandomize=True, suppress_health_check=list(HealthCheck)))
    assert any(m == "DELETE" and code == 200 for m, _, code in calls)  # an issued code's id
    assert any(path.startswith("/v1/rounds/1/") for _, path, _ in calls)  # a check-in's round
