"""Traces an operator follows: an incoming traceparent is honoured, the request span
carries the GenAI attributes (streams too), and a top-up is one trace from the
payment through the outbox relay's publish to the wallet's credit, linked to the
order's creation."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence

import openai
from opentelemetry.sdk.trace import ReadableSpan

from tests.e2e.harness import System


def in_trace(spans: Sequence[ReadableSpan], trace_id: str) -> list[ReadableSpan]:
    return [s for s in spans if format(s.context.trace_id, "032x") == trace_id]


def request_span(spans: Sequence[ReadableSpan], trace_id: str) -> ReadableSpan:
    """The gateway's HTTP server span of the chat completion (the request span)."""
    [span] = [
        s
        for s in in_trace(spans, trace_id)
        if s.kind.name == "SERVER" and s.name == "POST /v1/chat/completions"
    ]
    return span


async def test_an_incoming_traceparent_is_honoured_on_the_answer_receipt_and_ledger(
    system: System,
) -> None:
    _, key = await system.new_account()
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    async with system.http(key) as http:
        answer = await http.post(
            "/v1/chat/completions",
            json={"model": "demo-chat", "messages": [{"role": "user", "content": "join me"}]},
            headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
        )
        request_id = answer.headers["x-request-id"]
        receipt = (await http.get(f"/v1/usage/{request_id}")).json()
        [row] = (await http.get("/v1/wallet/ledger", params={"request_id": request_id})).json()[
            "data"
        ]

    assert answer.status_code == 200
    assert answer.headers["x-trace-id"] == trace_id
    assert receipt["trace_id"] == trace_id
    assert row["trace_id"] == trace_id
    span = request_span(system.spans.get_finished_spans(), trace_id)
    assert span.parent is not None and format(span.parent.span_id, "016x") == parent_id


async def test_a_streamed_request_span_carries_the_genai_route_bucket_and_charge(
    system: System,
) -> None:
    _, key = await system.new_account()
    sdk = openai.AsyncOpenAI(base_url=system.gateway_url + "/v1", api_key=key, max_retries=0)
    raw = await sdk.chat.completions.with_raw_response.create(
        model="demo-chat@routed",
        messages=[{"role": "user", "content": "stream me"}],
        stream=True,
    )
    async for _ in raw.parse():
        pass
    trace_id, request_id = raw.headers["x-trace-id"], raw.headers["x-request-id"]
    async with system.http(key) as http:
        receipt = (await http.get(f"/v1/usage/{request_id}")).json()

    attributes = dict(request_span(system.spans.get_finished_spans(), trace_id).attributes or {})
    assert receipt["trace_id"] == trace_id
    assert receipt["charge"]["micros"] > 0
    assert {
        "gen_ai.system": "openai",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": receipt["selected_model"],
        "gen_ai.response.model": receipt["upstream_model"],
        "gen_ai.usage.input_tokens": receipt["tokens"]["prompt"],
        "gen_ai.usage.output_tokens": receipt["tokens"]["completion"],
        "tokenforge.route": "routed",
        "tokenforge.bucket": "routed",
        "tokenforge.charge_micros": receipt["charge"]["micros"],
        "tokenforge.request_id": request_id,
    }.items() <= attributes.items()


async def test_a_non_streamed_request_span_carries_the_genai_attributes(system: System) -> None:
    _, key = await system.new_account()
    sdk = openai.AsyncOpenAI(base_url=system.gateway_url + "/v1", api_key=key, max_retries=0)
    raw = await sdk.chat.completions.with_raw_response.create(
        model="demo-chat", messages=[{"role": "user", "content": "annotate me"}]
    )
    completion = raw.parse()
    attributes = dict(
        request_span(system.spans.get_finished_spans(), raw.headers["x-trace-id"]).attributes or {}
    )

    assert completion.usage is not None
    assert attributes["gen_ai.request.model"] == "demo-chat"
    assert attributes["gen_ai.usage.input_tokens"] == completion.usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == completion.usage.completion_tokens
    assert attributes["tokenforge.bucket"] == "credit"
    assert attributes["tokenforge.charge_micros"] == (completion.usage.model_extra or {}).get(
        "cost_micros"
    )


async def test_a_sandbox_top_up_is_one_trace_from_payment_to_credit_linked_to_its_creation(
    system: System,
) -> None:
    _, key = await system.new_account(credit=0, routed=0)
    async with system.http(key) as http:
        created = await http.post("/v1/topups", json={"bucket": "routed", "amount": "4.00"})
        order_id = created.json()["order_id"]
        paid = await http.post(f"/v1/topups/{order_id}/sandbox", json={"outcome": "pay"})
        for _ in range(100):
            rows = (await http.get("/v1/wallet/ledger", params={"order_id": order_id})).json()
            if rows["data"]:
                break
            await asyncio.sleep(0.05)
    [credit_row] = rows["data"]
    creation_trace, payment_trace = created.headers["x-trace-id"], paid.headers["x-trace-id"]
    await asyncio.sleep(0.1)  # the consumer's span ends right after its ack
    spans = system.spans.get_finished_spans()

    def rpc(trace_id: str, method: str) -> ReadableSpan:
        [span] = [
            s
            for s in in_trace(spans, trace_id)
            if (s.attributes or {}).get("rpc.method") == method and s.kind.name == "SERVER"
        ]
        return span

    creation = rpc(creation_trace, "CreateTopUp")
    payment = rpc(payment_trace, "SimulateSandboxOutcome")
    [publish] = [
        s
        for s in spans
        if s.kind.name == "PRODUCER" and (s.attributes or {}).get("tokenforge.order_id") == order_id
    ]
    [credit] = [
        s
        for s in spans
        if s.kind.name == "CONSUMER" and (s.attributes or {}).get("tokenforge.order_id") == order_id
    ]

    assert creation_trace != payment_trace  # two HTTP requests, two traces ...
    # ... the payment, the relay's publish and the wallet's credit are one trace:
    assert publish.context.trace_id == payment.context.trace_id
    assert publish.parent is not None and publish.parent.span_id == payment.context.span_id
    assert publish.name == "publish tokenforge.payments.v1.topup.succeeded"
    assert credit.context.trace_id == payment.context.trace_id
    assert credit.parent is not None and credit.parent.span_id == publish.context.span_id
    assert credit_row["trace_id"] == payment_trace
    # ... and the publish links back to the order's creation.
    [link] = publish.links
    assert link.context.trace_id == creation.context.trace_id
    assert link.context.span_id == creation.context.span_id
