"""Hypothesis strategies for hostile input to every HTTP route of the gateway (used by
tests/e2e/test_openapi_fuzz.py): NUL bytes, numbers beyond int64, deep nesting, long
strings, invalid UTF-8 and lone surrogates, put in one place of a request that is
otherwise valid: a path parameter, a query value, a header, or one field of the
body. Each answer must be a 4xx or a success, carry `x-request-id`, and no internals.

Blocking (httpx.Client): run it in a thread when the system runs on the event loop.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.fuzz_hooks import internals_in

EXAMPLES_PER_PLACE = 2
_PLACEHOLDER = "__fuzz_placeholder__"

CHAT = {"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
# A valid body per route that takes one, so hostile input in one field gets as far as
# it can. No body here mints money: the sandbox outcome is `fail`.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/chat/completions"): CHAT,
    ("POST", "/v1/embeddings"): {"model": "demo-embed", "input": "hi"},
    ("POST", "/v1/routes/preview"): CHAT,
    ("POST", "/v1/topups"): {"bucket": "credit", "provider": "sandbox", "amount": "1.00"},
    ("POST", "/v1/topups/{order_id}/proof"): {"transfer_reference": "TR-1"},
    ("POST", "/v1/topups/{order_id}/sandbox"): {"outcome": "fail"},
    ("POST", "/v1/keys"): {
        "name": "fuzz",
        "scopes": ["inference"],
        "allowed_models": ["demo-chat"],
        "spend_caps": [{"bucket": "credit", "daily_micros": 1}],
        "expires_at": "2099-01-01T00:00:00Z",
    },
    ("POST", "/v1/keys/{key_id}/rotate"): {"grace_seconds": 0},
    ("POST", "/v1/runs"): {"model": "demo-chat", "budget": "0.01", "ttl": 60},
    ("POST", "/webhooks/payments/{provider}"): {"id": "evt_1", "type": "payment"},
}
# Nested places worth a hostile value, besides each top-level field.
NESTED: dict[str, list[tuple[Any, ...]]] = {
    "/v1/chat/completions": [("messages", 0, "content"), ("messages", 0, "role"), ("messages", 0)],
    "/v1/routes/preview": [("messages", 0, "content"), ("messages", 0)],
    "/v1/keys": [("spend_caps", 0, "daily_micros"), ("allowed_models", 0)],
    "/v1/runs": [("estimate",)],
}
# Routes left out of /openapi.json, fuzzed all the same.
EXTRA_ROUTES = [
    ("GET", "/console/research/plan", [], ["topic", "model", "sections", "max_tokens"]),
    ("GET", "/console/assets/{name}", ["name"], []),
]
HEADERS = ["x-tokenforge-run", "idempotency-key"]


def _deep(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"1" + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


# Hostile JSON values by kind, as raw bytes (so they can hold what a JSON library
# would not write: lone surrogates, invalid UTF-8, integers beyond 64 bits).
JSON_KINDS: dict[str, st.SearchStrategy[bytes]] = {
    "nul": st.text(max_size=8).map(lambda t: json.dumps(t + "\x00" + t).encode()),
    "huge_int": st.sampled_from([2**63, 2**64 - 1, 2**64, 10**30, -(2**63) - 1, -(10**30)]).map(
        lambda n: str(n).encode()
    ),
    "edge_number": st.sampled_from(
        [b"1e308", b"-1e308", b"1e-320", b"0", b"-1", b"2147483648", b"1.5", b"-0"]
    ),
    "huge_amount": st.sampled_from([20, 23, 40, 400]).map(lambda n: json.dumps("9" * n).encode()),
    "deep": st.tuples(st.sampled_from([65, 255, 300, 600]), st.sampled_from(["list", "dict"])).map(
        lambda d: _deep(*d)
    ),
    "long": st.sampled_from([257, 513, 10_000, 100_000]).map(
        lambda n: json.dumps("x" * n).encode()
    ),
    "bad_unicode": st.sampled_from(
        [b'"\\ud800"', b'"a\\udfffb"', b'"\xff\xfe"', b'"\xc3("', b'"\xed\xa0\x80"']
    ),
    "wrong_type": st.sampled_from(
        [b"true", b"null", b"[1,2]", b'{"x":1}', b'"yes"', b"[]", b'""', b"[[]]", b"[null]"]
    ),
}
# Path parameters, query values (as they go on the wire), header values.
URL_KINDS: dict[str, st.SearchStrategy[str]] = {
    "nul": st.text(max_size=8).map(lambda t: quote(t + "\x00" + t, safe="")),
    "long": st.sampled_from([257, 513, 12_000]).map(lambda n: "a" * n),
    "bad_unicode": st.sampled_from(["%ff", "%ff%fe", "%c3%28", "%ed%a0%80", "%"]),
    "huge_int": st.sampled_from([2**63, 2**64, 10**30, -(2**63) - 1]).map(str),
    "text": st.text(min_size=1, max_size=30).map(lambda t: quote(t, safe="")),
}
HEADER_KINDS: dict[str, st.SearchStrategy[bytes]] = {
    "long": st.sampled_from([257, 8_000]).map(lambda n: b"h" * n),
    "latin1": st.sampled_from([b"\xff\xfe", b"caf\xe9", b"a b"]),
}
RAW_KINDS: dict[str, st.SearchStrategy[bytes]] = {
    **JSON_KINDS,
    "garbage": st.binary(max_size=64).map(lambda b: b"{" + b + b"}"),
}


@dataclass
class Route:
    method: str
    path: str
    path_params: list[str]
    query_params: list[str]
    body: dict[str, Any] | None

    @property
    def places(self) -> list[tuple[str, Any]]:
        places: list[tuple[str, Any]] = [("path", name) for name in self.path_params]
        places += [("query", name) for name in self.query_params]
        places += [("header", name) for name in HEADERS if self.path.startswith("/v1/")]
        if self.body is not None:
            places += [("body", (name,)) for name in self.body]
            places += [("body", where) for where in NESTED.get(self.path, [])]
            places += [("body", ("unknown_field",)), ("raw", None)]
        return places


@dataclass
class Seen:
    expected_routes: set[str]
    routes: set[str] = field(default_factory=set)
    requests: int = 0


def routes_of(schema: dict[str, Any]) -> list[Route]:
    found = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            params = operation.get("parameters", [])
            found.append(
                Route(
                    method.upper(),
                    path,
                    [p["name"] for p in params if p["in"] == "path"],
                    [p["name"] for p in params if p["in"] == "query"],
                    BODIES.get((method.upper(), path), {} if method == "post" else None),
                )
            )
    for method, path, path_params, query in EXTRA_ROUTES:
        found.append(Route(method, path, path_params, query, None))
    return found


def with_fragment(body: dict[str, Any], where: tuple[Any, ...], fragment: bytes) -> bytes:
    """`body` as JSON with the value at `where` replaced by the raw `fragment`."""
    copy = json.loads(json.dumps(body))
    target = copy
    for step in where[:-1]:
        target = target[step]
    target[where[-1]] = _PLACEHOLDER
    return json.dumps(copy).encode().replace(json.dumps(_PLACEHOLDER).encode(), fragment)


def request_for(route: Route, place: tuple[str, Any], value: Any) -> tuple[str, str, Any, Any]:
    """(method, url, headers, body) with the hostile `value` at `place`."""
    kind, name = place
    path = route.path
    for param in route.path_params:
        path = path.replace("{" + param + "}", value if place == ("path", param) else "x1")
    url = path + (f"?{name}={value}" if kind == "query" else "")
    headers: dict[str, Any] = {"content-type": "application/json"}
    if kind == "header":
        headers[name] = value
    body: bytes | None = None
    if route.body is not None:
        if kind == "body":
            body = with_fragment(route.body, name, value)
        elif kind == "raw":
            body = value
        else:
            body = json.dumps(route.body).encode()
    return route.method, url, headers, body


def fuzz_every_route(gateway_url: str, api_key: str) -> Seen:
    with httpx.Client(
        base_url=gateway_url, headers={"authorization": f"Bearer {api_key}"}, timeout=30
    ) as http:
        schema = http.get("/openapi.json").json()
        routes = routes_of(schema)
        seen = Seen({f"{r.method} {r.path}" for r in routes})

        def kinds_for(place: tuple[str, Any]) -> dict[str, st.SearchStrategy[Any]]:
            kind = place[0]
            if kind in ("path", "query"):
                return dict(URL_KINDS)
            if kind == "header":
                return dict(HEADER_KINDS)
            return dict(RAW_KINDS) if kind == "raw" else dict(JSON_KINDS)

        def send(route: Route, place: tuple[str, Any], value: Any) -> None:
            method, url, headers, body = request_for(route, place, value)
            answer = http.request(method, url, headers=headers, content=body)
            seen.routes.add(f"{route.method} {route.path}")
            seen.requests += 1
            what = f"{method} {url[:200]} {place} {str(value)[:200]}"
            assert answer.status_code < 500, f"{what} -> {answer.status_code} {answer.text[:500]}"
            leaked = internals_in(answer.text)
            assert leaked is None, f"{what} -> internals {leaked!r}: {answer.text[:500]}"
            request_id = answer.headers.get("x-request-id", "")
            assert re.fullmatch(r"req_[0-9a-f]{24}", request_id), f"{what} -> no request id"

        def hostile(route: Route, place: tuple[str, Any], values: Any) -> None:
            @settings(
                max_examples=EXAMPLES_PER_PLACE,
                derandomize=True,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(values)
            def each(value: Any) -> None:
                send(route, place, value)

            each()

        # Every kind of hostile value in every place of every route: a few examples
        # each (the simplest first, derandomized), so no place is left to chance.
        for route in routes:
            for place in route.places:
                for values in kinds_for(place).values():
                    hostile(route, place, values)
    return seen
