"""The HTTP front's edge (RequestContextMiddleware), in process over ASGI: a URL with a
NUL, bytes that are not UTF-8 or an overlong id is refused 400 naming the parameter
before any handler runs, and a failure nobody planned for answers `internal_error`
with the request id alone, `x-request-id` included."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import Response

from services.gateway.transport.http import create_app

SECRET = "SELECT wallet.balances WHERE digest = 'a3f1' -- psycopg Traceback"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # No peers: every request below is answered before a handler would call one.
    app: FastAPI = create_app(None, None)  # type: ignore[arg-type]

    async def boom() -> None:
        raise RuntimeError(SECRET)

    app.add_api_route("/boom", boom)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        yield http


async def test_an_unexpected_failure_answers_the_request_id_alone(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.get("/boom")
    assert answer.status_code == 500
    request_id = answer.headers["x-request-id"]
    error = answer.json()["error"]
    assert error["code"] == "internal_error"
    assert request_id in error["message"]
    assert error["details"] == {"request_id": request_id}
    for leaked in ("SELECT", "wallet.", "digest", "psycopg", "Traceback", "RuntimeError"):
        assert leaked not in answer.text


@pytest.mark.parametrize(
    ("url", "param"),
    [
        ("/v1/usage/%00", "receipt_request_id"),
        ("/v1/runs/%00", "run_id"),
        ("/v1/runs/a%00b/close", "run_id"),
        ("/v1/topups/%ff%fe", "order_id"),
        ("/v1/usage/" + "a" * 10_000, "receipt_request_id"),
        ("/v1/wallet/ledger?request_id=%00", "request_id"),
        ("/v1/usage?model=%00", "model"),
        ("/v1/usage?model=%ff", "model"),
        ("/v1/usage?cursor=" + "c" * 513, "cursor"),
        ("/no/such/%00", "path"),
    ],
)
async def test_a_url_no_honest_client_sends_is_refused_naming_the_param(
    client: httpx.AsyncClient, url: str, param: str
) -> None:
    method = "POST" if url.endswith("/close") else "GET"
    answer = await client.request(method, url)
    assert answer.status_code == 400, answer.text
    assert answer.headers["x-request-id"].startswith("req_")
    error = answer.json()["error"]
    assert error["param"] == param
    assert error["code"] == "invalid_request"


async def test_a_query_parameter_out_of_its_declared_range_names_it(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.get("/v1/usage?limit=99999999999999999999999")
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "limit"
    assert answer.headers["x-request-id"]


@pytest.mark.parametrize(
    ("header", "value"), [("idempotency-key", "k" * 256), ("x-tokenforge-run", "r" * 257)]
)
async def test_an_overlong_id_in_a_header_is_refused_naming_it(
    client: httpx.AsyncClient, header: str, value: str
) -> None:
    answer = await client.post("/v1/chat/completions", headers={header: value}, json={})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == header
    assert answer.headers["x-request-id"]


async def test_a_client_gone_before_its_body_arrived_is_no_unexpected_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client that disconnects while its body is read: nothing ran, nothing is sent,
    and the log says so at INFO (no traceback of an 'unexpected error')."""
    app: FastAPI = create_app(None, None)  # type: ignore[arg-type]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"authorization", b"Bearer tf_x"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5000),
        "server": ("gateway", 80),
    }
    with caplog.at_level("INFO"):
        await app(scope, receive, send)  # type: ignore[arg-type]
    assert sent == []
    assert "went away before its body arrived" in caplog.text
    assert "unexpected error" not in caplog.text


async def test_the_request_log_line_names_the_answers_bucket_and_charge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The one line per request names the bucket and charge the answer's headers carry
    (the middleware keeps just those two of the answer's headers while it runs)."""
    app: FastAPI = create_app(None, None)  # type: ignore[arg-type]

    async def charged() -> Response:
        headers = {"X-Tokenforge-Bucket": "credit", "x-tokenforge-charge": "0.000420"}
        return Response(b"{}", media_type="application/json", headers=headers)

    app.add_api_route("/charged", charged)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        with caplog.at_level("INFO", logger="services.gateway.transport.http"):
            answer = await http.get("/charged")
            unnamed = await http.get("/boom-less")
    assert answer.status_code == 200
    assert unnamed.status_code == 404
    lines = [r.getMessage() for r in caplog.records if "/charged" in r.getMessage()]
    assert lines == [lines[0]]
    assert "-> 200" in lines[0]
    assert "(bucket credit, charge 0.000420)" in lines[0]
    assert any("-> 404" in m and "(bucket -, charge -)" in m for m in caplog.messages)
