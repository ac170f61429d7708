"""/openapi.json is a document clients can generate from: valid OpenAPI (checked by
openapi-spec-validator), every operation with the schema of its success answer, and
every operation that reads a JSON body with that body's schema."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate

from services.gateway.transport.http import create_app

# Operations that take no body: the path names everything.
NO_BODY = {
    ("post", "/v1/topups/{order_id}/cancel"),
    ("post", "/v1/keys/{key_id}/revoke"),
    ("post", "/v1/runs/{run_id}/close"),
}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    document: dict[str, Any] = create_app(None, None).openapi()  # type: ignore[arg-type]
    return document


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def test_the_document_is_valid_openapi(spec: dict[str, Any]) -> None:
    validate(spec)
    assert spec["openapi"].startswith("3.1")


def test_every_operation_has_the_schema_of_its_success_answer(spec: dict[str, Any]) -> None:
    found = operations(spec)
    assert len(found) >= 29
    missing = []
    for method, path, op in found:
        successes = {c: r for c, r in op["responses"].items() if c.startswith("2")}
        schemas = [
            (r.get("content") or {}).get("application/json", {}).get("schema")
            for r in successes.values()
        ]
        if not successes or not all(s and s.get("type") == "object" for s in schemas):
            missing.append((method, path))
    assert missing == []


def test_every_operation_that_reads_a_body_describes_it(spec: dict[str, Any]) -> None:
    missing = [
        (method, path)
        for method, path, op in operations(spec)
        if method == "post"
        and (method, path) not in NO_BODY
        and not (op.get("requestBody") or {}).get("content", {}).get("application/json")
    ]
    assert missing == []
    described = {(m, p) for m, p, op in operations(spec) if "requestBody" in op}
    assert not described & NO_BODY


def test_the_cost_is_a_number_and_the_micros_an_integer(spec: dict[str, Any]) -> None:
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"):
        answer = spec["paths"][path]["post"]["responses"]["200"]["content"]
        usage = answer["application/json"]["schema"]["properties"]["usage"]["properties"]
        assert usage["cost"] == {"type": "number"} and usage["cost_micros"] == {"type": "integer"}
        assert "text/event-stream" in answer
    error = spec["paths"]["/v1/chat/completions"]["post"]["responses"]["402"]
    assert error["content"]["application/json"]["schema"]
