"""A request ends by queueing its finish (its part of a budget, or its own hold's
settle or release, under the entry id the wallet derives); when the queue cannot take
it, the wallet's side is done and the receipt recorded at once, and a budget draw gives
back either way."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from services.gateway import handlers
from services.gateway.budgets import Budgets
from services.gateway.domain.budgets import Budget, BudgetPolicy
from services.gateway.domain.planning import Plan
from services.gateway.domain.settlement import Rule, Settlement, Status, Usage
from tests.unit.gateway.fakes import Queue, RecordingUsage, Wallet, peers_with
from tokenforge.common.v1 import common_pb2
from tokenforge.errors import DomainError, Reason
from tokenforge.holds import part_entry_id, settle_entry_id
from tokenforge.money import Bucket, Money, Price
from tokenforge.routing.v1 import routing_pb2
from tokenforge.wallet.v1 import wallet_pb2

PRICE = Price(Bucket.CREDIT, input_per_million=1_000_000, output_per_million=2_000_000)
WORST = Money(500, Bucket.CREDIT)


class KeepingQueue(Queue):
    async def put(self, request_id: str, receipt: bytes, **where: Any) -> None:
        await super().put(request_id, receipt)
        self.where = where


def drawn(queue: Queue, wallet: Wallet, usage: RecordingUsage) -> tuple[Any, Budget, Any]:
    peers = peers_with(usage, queue)
    peers.__dict__["wallet_client"] = wallet
    peers.budgets = Budgets(wallet, BudgetPolicy())  # type: ignore[arg-type]
    budget = peers.budgets.book.opened(
        ("acct-1", Bucket.CREDIT), "hold-b", "budget-1", 10_000, 0.0, 600
    )
    budget.take(WORST.micros, 0.0)
    resolved = routing_pb2.ResolveResponse(
        route=routing_pb2.Route(
            kind=common_pb2.ROUTE_KIND_OFFICIAL, bucket=common_pb2.BUCKET_CREDIT
        )
    )
    resolved.principal.account_id = "acct-1"
    p = handlers.Prepared(
        cmd=handlers.ChatCommand("req-1", "key", {"model": "m"}, "trace-1"),
        endpoint=handlers.CHAT,
        resolved=resolved,
        price=PRICE,
        plan=Plan(10, 100, False, WORST, 1),
        hold=wallet_pb2.Hold(hold_id="hold-b", account_id="acct-1", amount_micros=WORST.micros),
        upstream_body={},
        started=datetime.now(UTC),
        budget=budget,
    )
    return peers, budget, p


def outcome(charge: int) -> Settlement:
    return Settlement(
        Rule.FINISHED_WITH_USAGE,
        Status.SUCCEEDED,
        Usage(10, 20, 0, True),
        Money(charge, Bucket.CREDIT),
        False,
    )


async def finish(peers: Any, p: Any, charge: int) -> tuple[Any, Money]:
    receipt = handlers.new_receipt(p, [])
    return await handlers.finish_request(
        peers, p, receipt, outcome(charge), Rule.FINISHED_WITH_USAGE, ""
    )


async def test_a_finish_is_queued_with_its_part_to_capture_and_the_draw_gives_back() -> None:
    queue, wallet, usage = KeepingQueue(), Wallet(), RecordingUsage()
    peers, budget, p = drawn(queue, wallet, usage)
    with TracerProvider().get_tracer(__name__).start_as_current_span("request") as span:
        receipt, charge = await finish(peers, p, 120)
    assert charge == Money(120, Bucket.CREDIT)
    assert receipt.entry_id == str(part_entry_id("hold-b", "req-1"))
    assert receipt.hold_id == "hold-b" and receipt.charge_micros == 120
    traceparent = queue.where.pop("traceparent")  # its delivery joins the request's trace
    assert format(span.get_span_context().span_id, "016x") in traceparent
    assert queue.where == {"account_id": "acct-1", "hold_id": "hold-b", "finish": "part"}
    assert wallet.parts == [] and usage.receipts == []  # the relay does those
    assert (budget.draws, budget.reserved, budget.spent) == (0, 0, 120)
    assert p.budget is None


async def test_a_finish_the_queue_cannot_take_is_captured_and_recorded_at_once() -> None:
    wallet, usage = Wallet(), RecordingUsage()
    peers, budget, p = drawn(Queue(broken=True), wallet, usage)
    receipt, charge = await finish(peers, p, 120)
    assert wallet.parts == [("hold-b", 120, "req-1")]
    assert [r.entry_id for r in usage.receipts] == [str(part_entry_id("hold-b", "req-1"))]
    assert charge.micros == receipt.charge_micros == 120
    assert (budget.draws, budget.reserved, budget.spent) == (0, 0, 120)


async def test_when_neither_can_take_it_the_draw_still_gives_back_and_the_error_is_raised() -> None:
    down = DomainError(Reason.SERVICE_UNAVAILABLE, "The wallet is not answering right now.")
    peers, budget, p = drawn(Queue(broken=True), Wallet(down), RecordingUsage())
    with pytest.raises(DomainError):
        await finish(peers, p, 120)
    # It may have been taken: counted as spent, so the budget never pays it twice.
    assert (budget.draws, budget.reserved, budget.spent) == (0, 0, 120)


async def test_a_request_on_its_own_hold_queues_a_settle_naming_the_derived_entry() -> None:
    queue, wallet, usage = KeepingQueue(), Wallet(), RecordingUsage()
    peers, budget, p = drawn(queue, wallet, usage)
    p.end_draw(peers)  # make it a request on a hold of its own
    p.hold = wallet_pb2.Hold(hold_id="hold-own", account_id="acct-1", amount_micros=500)
    receipt, charge = await finish(peers, p, 120)
    assert receipt.entry_id == str(settle_entry_id("hold-own")) and charge.micros == 120
    queue.where.pop("traceparent")
    assert queue.where == {"account_id": "acct-1", "hold_id": "hold-own", "finish": "settle"}
    assert wallet.settles == [] and usage.receipts == []  # the relay does those


async def test_a_request_that_charged_nothing_for_no_usage_queues_a_release() -> None:
    queue, wallet, usage = KeepingQueue(), Wallet(), RecordingUsage()
    peers, _, p = drawn(queue, wallet, usage)
    p.end_draw(peers)
    p.hold = wallet_pb2.Hold(hold_id="hold-own", account_id="acct-1", amount_micros=500)
    failed = Settlement(
        Rule.ERROR_BEFORE_FIRST_BYTE, Status.FAILED, None, Money(0, Bucket.CREDIT), False
    )
    receipt, _ = await handlers.finish_request(
        peers, p, handlers.new_receipt(p, []), failed, Rule.ERROR_BEFORE_FIRST_BYTE, "http_503"
    )
    assert receipt.entry_id == "" and queue.where["finish"] == "release"
