"""A request's answer waits for its finish at most FINISH_WAIT_S (issue 21: the finish
queue and the wallet both unreachable while PostgreSQL restarts). Past it the client
hears the charge being settled, its ledger entry and where the receipt will be (503
receipt_pending, not to be sent again), or that nothing is charged; the finish itself
goes on and lands."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from services.gateway.adapters.upstream import Attempt
from services.gateway.domain.commands import ChatCommand
from services.gateway.domain.planning import Plan, counted_usage
from services.gateway.domain.settlement import Rule
from services.gateway.flow import finish as finish_stage
from services.gateway.flow.admit import Admitted
from services.gateway.flow.finish import finish
from services.gateway.flow.reservation import OwnHold
from services.gateway.flow.reserve import Prepared
from services.gateway.flow.stream import ChatStream
from services.gateway.transport.http.common import error_response
from tests.unit.gateway.fakes import PacedUpstream, RecordingUsage, peers_with
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.routing.v1 import routing_pb2
from tokenforge.holds import settle_entry_id
from tokenforge.money import Bucket, Money, Price

HOLD = "7b0c1f1e-0000-4000-8000-000000000001"
PRICE = Price(Bucket.CREDIT, input_per_million=1_000_000, output_per_million=2_000_000)
WORST = Money(50_000, Bucket.CREDIT)


class SlowQueue:
    """The finish queue while the gateway's database restarts: a put waits until let go."""

    def __init__(self) -> None:
        self.back = asyncio.Event()
        self.kept: dict[str, dict[str, Any]] = {}

    async def put(self, request_id: str, receipt: bytes, **where: Any) -> None:
        await self.back.wait()
        self.kept[request_id] = where


class Routing:
    def report_outcome(self, *_: Any, **__: Any) -> None:
        pass


def prepared() -> Prepared:
    resolved = routing_pb2.ResolveResponse(selected_model="demo-chat")
    resolved.principal.account_id = "acct-1"
    resolved.route.upstream_model = "mock-gpt"
    resolved.route.bucket = common_pb2.BUCKET_CREDIT
    body = {"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]}
    cmd = ChatCommand("req-1", "tf_key", body, trace_id="")
    plan = Plan(10, 20, True, WORST, 1)
    admitted = Admitted(
        cmd, routing_pb2.ENDPOINT_CHAT_COMPLETIONS, resolved, PRICE, plan, datetime.now(UTC)
    )
    return Prepared(admitted, OwnHold(HOLD, "acct-1", WORST), PRICE, plan, {})


def slow_finish(monkeypatch: pytest.MonkeyPatch) -> tuple[SlowQueue, Any, Prepared]:
    """A request whose finish waits on the queue, and an answer that waits 50 ms for it."""
    monkeypatch.setattr(finish_stage, "FINISH_WAIT_S", 0.05)
    queue = SlowQueue()
    peers = peers_with(RecordingUsage(), queue)
    peers.__dict__["routing_client"] = Routing()
    return queue, peers, prepared()


async def test_past_its_wait_the_answer_names_the_charge_being_settled_and_it_lands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue, peers, p = slow_finish(monkeypatch)
    usage = counted_usage(p.cmd.body, 7)
    with pytest.raises(DomainError) as raised:
        await finish(peers, p, [], Rule.FINISHED_WITHOUT_USAGE, None, usage)
    error = raised.value
    charge = p.settled_charge
    assert charge is not None and charge.micros > 0
    assert error.reason is Reason.RECEIPT_PENDING
    assert error.metadata == {
        "request_id": "req-1",
        "charge_micros": str(charge.micros),
        "bucket": "credit",
        "ledger_entry_id": str(settle_entry_id(HOLD)),
    }
    assert "Do not send it again" in error.message and "/v1/usage/req-1" in error.message
    answer = error_response(error)
    assert answer.status_code == 503 and answer.headers["x-should-retry"] == "false"

    queue.back.set()  # the database is back: the finish that went on lands
    assert p.finishing is not None
    receipt, charged = await asyncio.wait_for(asyncio.shield(p.finishing), 5)
    assert charged == charge and receipt.charge_micros == charge.micros
    assert queue.kept["req-1"]["finish"] == "settle"


async def test_past_its_wait_a_request_that_charges_nothing_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue, peers, p = slow_finish(monkeypatch)
    with pytest.raises(DomainError) as raised:
        await finish(peers, p, [], Rule.NOT_ANSWERED, None, counted_usage(p.cmd.body, 0))
    assert raised.value.reason is Reason.SERVICE_UNAVAILABLE
    assert "nothing is charged" in raised.value.message
    assert "x-should-retry" not in error_response(raised.value).headers  # SDKs may retry
    queue.back.set()
    assert p.finishing is not None
    _, charged = await asyncio.wait_for(asyncio.shield(p.finishing), 5)
    assert charged.micros == 0 and queue.kept["req-1"]["finish"] == "release"


async def test_a_stream_whose_finish_waits_past_its_wait_ends_with_the_charge_being_settled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue, peers, p = slow_finish(monkeypatch)
    upstream = PacedUpstream(words=2)
    attempts = [Attempt("ch-1", "ok", 3)]
    stream = ChatStream(peers, p, upstream, attempts, {}, client_wants_usage=True)  # type: ignore[arg-type]
    events = [event async for event in stream.events()]
    assert [json.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:2]] == [
        "w0 ",
        "w1 ",
    ]
    # No usage chunk (its receipt is not recorded yet): the charge being settled instead.
    pending = json.loads(events[2][6:])["error"]
    charge = p.settled_charge
    assert charge is not None and charge.micros > 0
    assert pending["code"] == "receipt_pending"
    assert pending["details"]["charge_micros"] == charge.micros
    assert pending["details"]["ledger_entry_id"] == str(settle_entry_id(HOLD))
    assert "/v1/usage/req-1" in pending["message"]
    assert events[3:] == [b"data: [DONE]\n\n"]
    assert upstream.closed == 1

    queue.back.set()  # the database is back: the finish that went on lands, once
    assert p.finishing is not None
    receipt, charged = await asyncio.wait_for(asyncio.shield(p.finishing), 5)
    assert charged == charge and receipt.charge_micros == charge.micros
    assert queue.kept["req-1"]["finish"] == "settle"


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (DomainError(Reason.SERVICE_UNAVAILABLE, "wallet away"), "service_unavailable"),
        (DomainError(Reason.INVALID_ARGUMENT, "bad"), "invalid_request"),
        (DomainError(Reason.INTERNAL, "ours"), "internal_error"),
        (RuntimeError("SELECT secret"), "internal_error"),
        (asyncio.CancelledError(), "cancelled"),
    ],
)
def test_a_receipt_names_the_code_of_the_answer_that_ended_its_request(
    failure: BaseException, code: str
) -> None:
    """What the client was told and what its receipt says are the same word."""
    assert finish_stage.ended_by(failure) == code
    if isinstance(failure, DomainError):
        body: Any = json.loads(bytes(error_response(failure).body))
        assert body["error"]["code"] == code
