"""Fuzz the OpenAPI document the server serves with schemathesis: no 5xx, and every response
matches the document (status codes, content types, headers, schemas)."""
from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, positive_data_acceptance

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
