"""One trace per request: gateway, routing, wallet, the upstream call and usage."""

from __future__ import annotations

import openai

from tests.e2e.harness import System


async def test_one_trace_spans_gateway_routing_wallet_upstream_and_usage(system: System) -> None:
    _, key = await system.new_account()
    system.spans.clear()
    sdk = openai.AsyncOpenAI(base_url=system.gateway_url + "/v1", api_key=key, max_retries=0)
    raw = await sdk.chat.completions.with_raw_response.create(
        model="demo-chat", messages=[{"role": "user", "content": "trace me"}]
    )
    trace_id = raw.headers["x-trace-id"]
    # A read sees every answer given: the request's queued finish is delivered first.
    receipt_trace = (await system.http(key).get(f"/v1/usage/{raw.headers['x-request-id']}")).json()[
        "trace_id"
    ]
    assert receipt_trace == trace_id
    spans = [
        s
        for s in system.spans.get_finished_spans()
        if format(s.context.trace_id, "032x") == trace_id
    ]
    rpc_methods = {
        (s.attributes or {}).get("rpc.method")
        for s in spans
        if (s.attributes or {}).get("rpc.service")
    }
    services = {
        (s.attributes or {}).get("rpc.service")
        for s in spans
        if (s.attributes or {}).get("rpc.service")
    }
    assert {"Resolve", "Hold"} <= rpc_methods  # on the request's path
    assert {
        "tokenforge.routing.v1.RoutingService",
        "tokenforge.wallet.v1.WalletService",
    } <= services
    # The finish, delivered by the relay in the request's trace: Settle and
    # RecordReceipt below it, or (when they travelled in a batch) an event naming it.
    relay, *_ = [s for s in spans if s.name == "gateway.relay finish"]
    batched = any(e.name == "tokenforge.batched" for e in relay.events)
    assert batched or (
        {"Settle", "RecordReceipt"} <= rpc_methods
        and "tokenforge.usage.v1.UsageService" in services
    )
    upstream = [s for s in spans if s.name.startswith("POST") and s.kind.name == "CLIENT"]
    assert upstream, "the upstream HTTP call is in the trace"
    assert any(
        s.name.startswith("POST /v1/chat/completions") for s in spans if s.kind.name == "SERVER"
    )
    assert any(
        (s.attributes or {}).get("db.system") or (s.attributes or {}).get("db.system.name")
        for s in spans
    )


async def test_a_budget_draws_queued_finish_joins_the_requests_trace(system: System) -> None:
    """The third request in a row is drawn from the budget the second opened, and its
    finish queued: the relay's delivery of it (the part's capture, the receipt) is in
    the request's trace, and no wallet call is."""
    _, key = await system.new_account()
    sdk = openai.AsyncOpenAI(base_url=system.gateway_url + "/v1", api_key=key, max_retries=0)
    for _ in range(3):
        raw = await sdk.chat.completions.with_raw_response.create(
            model="demo-chat", messages=[{"role": "user", "content": "trace my budget"}]
        )
    trace_id, request_id = raw.headers["x-trace-id"], raw.headers["x-request-id"]
    async with system.http(key) as http:
        receipt = (await http.get(f"/v1/usage/{request_id}")).json()  # delivered first
    assert receipt["ledger_entry_id"] == raw.parse().model_extra["receipt"]["ledger_entry_id"]
    spans = [
        s
        for s in system.spans.get_finished_spans()
        if format(s.context.trace_id, "032x") == trace_id
    ]
    relay, *_ = [s for s in spans if s.name == "gateway.relay finish"]
    assert (relay.attributes or {})["tokenforge.request_id"] == request_id
    methods = {(s.attributes or {}).get("rpc.method") for s in spans}
    batched = any(e.name == "tokenforge.batched" for e in relay.events)
    # Alone, the calls are the relay span's children; in a batch, an event names the call.
    assert batched or {"CapturePart", "RecordReceipt"} <= methods
    assert not methods & {"Hold", "Settle", "GetBalances"}  # none on the request's path
