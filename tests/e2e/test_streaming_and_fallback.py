"""Streams pass through with usage and cost at the end; fallback before the first byte;
a cut or a client that leaves pays for what was generated (`partial`)."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.e2e.harness import System


def sdk(system: System, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=system.gateway_url + "/v1", api_key=key, max_retries=0)


async def receipt_of(system: System, key: str, request_id: str) -> dict:
    async with system.http(key) as http:
        for _ in range(50):
            answer = await http.get(f"/v1/usage/{request_id}")
            if answer.status_code == 200:
                return dict(answer.json())
            await asyncio.sleep(0.1)
    raise AssertionError(f"no receipt for {request_id}")


async def ledger_row(system: System, key: str, request_id: str) -> dict:
    async with system.http(key) as http:
        rows = (await http.get("/v1/wallet/ledger", params={"request_id": request_id})).json()
    [row] = rows["data"]
    return dict(row)


async def test_stream_passes_chunks_through_and_ends_with_usage_and_cost(system: System) -> None:
    _, key = await system.new_account()
    raw = await sdk(system, key).chat.completions.with_raw_response.create(
        model="demo-chat",
        messages=[{"role": "user", "content": "stream to me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    request_id = raw.headers["x-request-id"]
    assert raw.headers["x-tokenforge-bucket"] == "credit"
    chunks = [chunk async for chunk in raw.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert all(c.model == "demo-chat" for c in chunks)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    cost = (last.usage.model_extra or {})["cost_micros"]
    receipt = await receipt_of(system, key, request_id)
    assert receipt["status"] == "succeeded"
    assert receipt["settlement_rule"] == "finished_with_usage"
    assert receipt["tokens"]["reported_by_upstream"] is True
    assert receipt["charge"]["micros"] == cost > 0
    assert (await ledger_row(system, key, request_id))["amount"]["micros"] == -cost


async def test_stream_without_include_usage_has_no_usage_chunk_but_a_receipt(
    system: System,
) -> None:
    _, key = await system.new_account()
    raw = await sdk(system, key).chat.completions.with_raw_response.create(
        model="demo-chat@routed", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [chunk async for chunk in raw.parse()]
    assert all(c.usage is None for c in chunks)
    receipt = await receipt_of(system, key, raw.headers["x-request-id"])
    assert receipt["bucket"] == "routed" and receipt["charge"]["micros"] > 0


async def test_primary_down_falls_back_to_backup_channel_same_price_and_bucket(
    system: System,
) -> None:
    _, key = await system.new_account()
    raw = await sdk(system, key).chat.completions.with_raw_response.create(
        model="test-fallback", messages=[{"role": "user", "content": "are you there"}]
    )
    receipt = await receipt_of(system, key, raw.headers["x-request-id"])
    assert [a["outcome"] for a in receipt["attempts"]] == ["http_503", "ok"]
    assert [a["channel"] for a in receipt["attempts"]] == ["mock-down-fb", "mock-backup"]
    assert receipt["fallback_used"] is True
    assert receipt["bucket"] == "credit" and receipt["status"] == "succeeded"


async def test_all_channels_down_is_502_failed_receipt_and_nothing_charged(
    system: System,
) -> None:
    _, key = await system.new_account()
    async with system.http(key) as http:
        before = (await http.get("/v1/wallet")).json()
        answer = await http.post(
            "/v1/chat/completions",
            json={"model": "test-down", "messages": [{"role": "user", "content": "hi"}]},
        )
        after = (await http.get("/v1/wallet")).json()
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "upstream_failed"
    receipt = await receipt_of(system, key, answer.headers["x-request-id"])
    assert receipt["status"] == "failed" and receipt["charge"]["micros"] == 0
    assert receipt["settlement_rule"] == "error_before_first_byte"
    assert after == before


async def test_upstream_cut_mid_stream_is_partial_and_charged_for_what_was_generated(
    system: System,
) -> None:
    _, key = await system.new_account()
    raw = await sdk(system, key).chat.completions.with_raw_response.create(
        model="test-cut",
        messages=[{"role": "user", "content": "long answer please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    request_id = raw.headers["x-request-id"]
    received = []
    with pytest.raises(openai.APIError):
        async for chunk in raw.parse():
            received.append(chunk)
    content_chunks = sum(1 for c in received if c.choices and c.choices[0].delta.content)
    assert content_chunks == 3
    receipt = await receipt_of(system, key, request_id)
    assert receipt["status"] == "partial"
    assert receipt["settlement_rule"] == "error_mid_stream"
    assert receipt["tokens"]["completion"] == 3
    assert receipt["tokens"]["reported_by_upstream"] is False
    assert (await ledger_row(system, key, request_id))["amount"]["micros"] == -receipt["charge"][
        "micros"
    ]


async def test_client_disconnect_mid_stream_settles_partial(system: System) -> None:
    _, key = await system.new_account()
    async with (
        httpx.AsyncClient(base_url=system.gateway_url, timeout=30) as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={
                "model": "test-slow",
                "stream": True,
                "messages": [{"role": "user", "content": "tell me everything"}],
            },
        ) as response,
    ):
        request_id = response.headers["x-request-id"]
        seen = 0
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                seen += 1
            if seen >= 5:
                break  # the client goes away
    receipt = await receipt_of(system, key, request_id)
    assert receipt["status"] == "partial"
    assert receipt["error"] == "client_disconnected"
    assert receipt["settlement_rule"] == "client_disconnect"
    assert 0 < receipt["tokens"]["completion"] < 200
    async with system.http(key) as http:
        wallet = {b["bucket"]: b for b in (await http.get("/v1/wallet")).json()["balances"]}
    assert wallet["credit"]["held"]["micros"] == 0


async def test_embeddings_are_charged_with_a_receipt(system: System) -> None:
    _, key = await system.new_account()
    raw = await sdk(system, key).embeddings.with_raw_response.create(
        model="demo-embed", input=["one text", "another text"]
    )
    result = raw.parse()
    assert len(result.data) == 2
    receipt = await receipt_of(system, key, raw.headers["x-request-id"])
    assert receipt["selected_model"] == "demo-embed"
    assert receipt["charge"]["micros"] > 0
    assert receipt["tokens"]["completion"] == 0


async def test_route_preview_answers_the_before_list_without_calling_upstream(
    system: System,
) -> None:
    _, key = await system.new_account(credit=5_000_000)
    async with system.http(key) as http:
        preview = (
            await http.post(
                "/v1/routes/preview",
                json={"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]},
            )
        ).json()
    assert preview["route"] == "official" and preview["bucket"] == "credit"
    assert preview["upstream_model"] == "mock-gpt-official"
    assert preview["channels"] == {"primary": "mock-primary", "backups": ["mock-backup"]}
    assert preview["if_the_request_fails"] == "none"
    assert preview["available"]["micros"] == 5_000_000
    assert preview["worst_case_cost"]["micros"] > 0
    assert preview["can_run"] is True


@pytest.mark.parametrize(
    ("model", "first_outcome"),
    [
        ("test-fallback-500", "http_500"),
        ("test-fallback-429", "http_429"),
        ("test-fallback-timeout", "timeout"),
    ],
)
async def test_fallback_before_first_byte_on_500_429_and_timeout_charges_once(
    system: System, model: str, first_outcome: str
) -> None:
    _, key = await system.new_account()
    for stream in (False, True):
        raw = await sdk(system, key).chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "try again"}], stream=stream
        )
        if stream:
            assert [c async for c in raw.parse()]
        receipt = await receipt_of(system, key, raw.headers["x-request-id"])
        assert [a["outcome"] for a in receipt["attempts"]] == [first_outcome, "ok"]
        assert receipt["status"] == "succeeded" and receipt["fallback_used"] is True
        assert (await ledger_row(system, key, raw.headers["x-request-id"]))["amount"][
            "micros"
        ] == -receipt["charge"]["micros"]
    async with system.http(key) as http:
        wallet = {b["bucket"]: b for b in (await http.get("/v1/wallet")).json()["balances"]}
    assert wallet["credit"]["held"]["micros"] == 0


async def test_upstream_timeout_is_504_failed_receipt_nothing_held(system: System) -> None:
    _, key = await system.new_account()
    async with system.http(key) as http:
        answer = await http.post(
            "/v1/chat/completions",
            json={"model": "test-timeout", "messages": [{"role": "user", "content": "slow"}]},
        )
        wallet = {b["bucket"]: b for b in (await http.get("/v1/wallet")).json()["balances"]}
    assert answer.status_code == 504
    assert answer.json()["error"]["code"] == "upstream_timeout"
    receipt = await receipt_of(system, key, answer.headers["x-request-id"])
    assert receipt["settlement_rule"] == "timeout_before_first_byte"
    assert receipt["charge"]["micros"] == 0
    assert wallet["credit"]["held"]["micros"] == 0
    assert wallet["credit"]["posted"]["micros"] == 10_000_000
