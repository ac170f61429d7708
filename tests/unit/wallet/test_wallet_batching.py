"""The batch use cases against the in-memory repository, and the batching client
against a fake stub: outcomes in order, each item's refusal its own, retries."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from services.wallet import handlers
from services.wallet.client import WalletClient
from services.wallet.domain import commands
from services.wallet.storage.unit_of_work import UnitOfWork
from tests.unit.wallet.fakes import FakeUnitOfWork
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.wallet.v1 import wallet_pb2
from tokenforge.money import Bucket
from tokenforge.runtime.batch_items import MAX_BATCH_ITEMS
from tokenforge.wire import item_error_to_proto

# The batch use cases.


@pytest.fixture
async def uow() -> FakeUnitOfWork:
    fake = FakeUnitOfWork()
    await handlers.open_account(commands.OpenAccount("acct-1"), fake)
    await handlers.credit_topup(commands.CreditTopUp("acct-1", Bucket.CREDIT, 100, "o-1"), fake)
    return fake


async def test_place_holds_answers_each_item_in_order_as_place_hold_would(
    uow: FakeUnitOfWork,
) -> None:
    cmds = [
        commands.PlaceHold("acct-1", Bucket.CREDIT, 60, "req-1"),
        commands.PlaceHold("ghost", Bucket.CREDIT, 1, "req-2"),
        commands.PlaceHold("acct-1", Bucket.CREDIT, 0, "req-3"),
        commands.PlaceHold("acct-1", Bucket.CREDIT, 61, "req-1"),
        commands.PlaceHold("acct-1", Bucket.CREDIT, 60, "req-1"),
    ]
    outcomes = await handlers.place_holds(cmds, lambda: uow)
    placed, ghost, zero, conflict, replay = outcomes
    assert not isinstance(placed, DomainError) and not isinstance(replay, DomainError)
    assert replay.hold_id == placed.hold_id
    assert [o.reason for o in (ghost, zero, conflict) if isinstance(o, DomainError)] == [
        Reason.ACCOUNT_NOT_FOUND,
        Reason.INVALID_ARGUMENT,
        Reason.IDEMPOTENCY_CONFLICT,
    ]
    assert uow.committed.balances_[("acct-1", Bucket.CREDIT)].held == 60


async def test_capture_parts_answers_each_item_in_order_as_capture_part_would(
    uow: FakeUnitOfWork,
) -> None:
    hold = await handlers.place_hold(commands.PlaceHold("acct-1", Bucket.CREDIT, 50, "r"), uow)
    hold_id = str(hold.hold_id)
    cmds = [
        commands.CapturePart(hold_id, 30, "req-a"),
        commands.CapturePart(hold_id, 30, "req-a"),  # a replay
        commands.CapturePart(hold_id, 21, "req-b"),  # above what is left (20)
        commands.CapturePart(hold_id, 31, "req-a"),  # the key with another amount
        commands.CapturePart(hold_id, 5, "req-c", account_id="acct-2"),  # not theirs
        commands.CapturePart(hold_id, 5, ""),  # no request id
    ]
    outcomes = await handlers.capture_parts(cmds, lambda: uow)
    first, replay, above, conflict, other, unnamed = outcomes
    assert not isinstance(first, DomainError) and not isinstance(replay, DomainError)
    assert first.entry is not None and replay.entry == first.entry
    assert [o.reason for o in (above, conflict, other, unnamed) if isinstance(o, DomainError)] == [
        Reason.SETTLE_ABOVE_HOLD,
        Reason.IDEMPOTENCY_CONFLICT,
        Reason.NOT_FOUND,
        Reason.INVALID_ARGUMENT,
    ]
    assert uow.committed.holds_[hold.hold_id].captured == 30
    assert uow.committed.balances_[("acct-1", Bucket.CREDIT)].held == 20


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (RuntimeError("a bug"), Reason.INTERNAL),
        # The database gone mid-batch (a restart): unavailable, which callers retry.
        (ConnectionError("the database went away"), Reason.SERVICE_UNAVAILABLE),
    ],
    ids=["unexpected", "database gone"],
)
async def test_an_item_that_fails_is_refused_alone_and_the_others_stand(
    uow: FakeUnitOfWork, failure: Exception, reason: Reason
) -> None:
    def factory() -> UnitOfWork:
        # Call 1 asks for a shared transaction (the fake has none); 2 to 4 are the items.
        factory.calls += 1  # type: ignore[attr-defined]
        if factory.calls == 3:  # type: ignore[attr-defined]
            raise failure
        return uow

    factory.calls = 0  # type: ignore[attr-defined]
    first, second, third = await handlers.place_holds(
        [commands.PlaceHold("acct-1", Bucket.CREDIT, 10, f"req-{n}") for n in range(3)], factory
    )
    assert isinstance(second, DomainError) and second.reason is reason
    assert not isinstance(first, DomainError) and not isinstance(third, DomainError)
    assert uow.committed.balances_[("acct-1", Bucket.CREDIT)].held == 20


async def test_a_batch_above_the_cap_is_refused_whole_and_runs_nothing(
    uow: FakeUnitOfWork,
) -> None:
    cmds = [
        commands.ReleaseHold("00000000-0000-0000-0000-000000000000")
        for _ in range(MAX_BATCH_ITEMS + 1)
    ]
    with pytest.raises(DomainError) as caught:
        await handlers.release_holds(cmds, lambda: uow)
    assert caught.value.reason is Reason.INVALID_ARGUMENT
    assert uow.commits == 2  # the fixture's open and credit only
    assert await handlers.release_holds([], lambda: uow) == []


# The batching client.


class FakeStub:
    """Hold and HoldMany answered after a pause (so calls pile up), recording each
    call; `down` batch calls fail first as the wallet being unavailable."""

    def __init__(self, refuse: set[str], down: int = 0) -> None:
        self.refuse = refuse
        self.down = down
        self.calls: list[tuple[str, int]] = []

    def refusal(self, request: Any) -> DomainError:
        return DomainError(
            Reason.INSUFFICIENT_BALANCE,
            f"too low for {request.request_id}",
            {"requested_micros": str(request.amount_micros)},
        )

    def answer(self, request: Any) -> Any:
        return wallet_pb2.HoldResponse(
            hold=wallet_pb2.Hold(
                hold_id=f"hold-{request.request_id}", request_id=request.request_id
            )
        )

    async def Hold(self, request: Any) -> Any:
        self.calls.append(("Hold", 1))
        await asyncio.sleep(0.001)
        if request.request_id in self.refuse:
            raise self.refusal(request)
        return self.answer(request)

    async def HoldMany(self, request: Any) -> Any:
        self.calls.append(("HoldMany", len(request.holds)))
        await asyncio.sleep(0.001)
        if self.down:
            self.down -= 1
            raise DomainError(Reason.SERVICE_UNAVAILABLE, "down", {"service": "wallet"})
        return wallet_pb2.HoldManyResponse(
            outcomes=[
                wallet_pb2.HoldOutcome(error=item_error_to_proto(self.refusal(r)))
                if r.request_id in self.refuse
                else wallet_pb2.HoldOutcome(answer=self.answer(r))
                for r in request.holds
            ]
        )


class FakePeer:
    def __init__(self) -> None:
        # A stub needs a channel; this one is never connected (the test swaps the stub).
        self.channel = grpc.aio.insecure_channel("127.0.0.1:9")

    async def call(self, method: Callable[[Any], Awaitable[Any]], request: Any, **kw: Any) -> Any:
        return await method(request)


def fake_client(stub: FakeStub | FakePartStub, **options: Any) -> WalletClient:
    async def no_sleep(seconds: float) -> None:
        pass

    client = WalletClient(FakePeer(), sleep=no_sleep, **options)  # type: ignore[arg-type]
    client.stub = stub
    return client


async def hold_all(client: WalletClient, count: int) -> list[str | DomainError]:
    async def one(n: int) -> str | DomainError:
        try:
            return (await client.hold("acct-1", Bucket.CREDIT, n + 1, f"req-{n}")).hold_id
        except DomainError as error:
            return error

    return await asyncio.gather(*(one(n) for n in range(count)))


async def test_concurrent_holds_leave_in_batches_and_each_caller_gets_its_own_outcome() -> None:
    stub = FakeStub(refuse={"req-5"})
    client = fake_client(stub)
    outcomes = await hold_all(client, 12)
    # One alone (nothing in flight), the eleven that arrived meanwhile in one batch.
    assert stub.calls == [("Hold", 1), ("HoldMany", 11)]
    assert client.hold_batcher.batched_items == 11
    refused = outcomes.pop(5)
    assert outcomes == [f"hold-req-{n}" for n in range(12) if n != 5]
    assert isinstance(refused, DomainError)
    assert (refused.reason, refused.message, refused.metadata) == (
        Reason.INSUFFICIENT_BALANCE,
        "too low for req-5",
        {"requested_micros": "6"},
    )


async def test_a_batch_that_found_the_wallet_unavailable_is_retried_item_by_item() -> None:
    stub = FakeStub(refuse=set(), down=1)
    client = fake_client(stub)
    outcomes = await hold_all(client, 12)
    assert outcomes == [f"hold-req-{n}" for n in range(12)]
    assert stub.calls[:2] == [("Hold", 1), ("HoldMany", 11)]
    # The eleven came back in later calls, alone or batched, each answered once.
    assert sum(size for _, size in stub.calls[2:]) == 11


async def test_without_batching_every_call_is_its_unary_method() -> None:
    stub = FakeStub(refuse={"req-1"})
    client = fake_client(stub, batching=False)
    outcomes = await hold_all(client, 6)
    assert stub.calls == [("Hold", 1)] * 6
    assert not client.hold_batcher.batching
    assert [o if isinstance(o, str) else o.reason for o in outcomes] == [
        "hold-req-0",
        Reason.INSUFFICIENT_BALANCE,
        *[f"hold-req-{n}" for n in range(2, 6)],
    ]


class FakePartStub:
    """CapturePart and CapturePartMany answered after a pause (so calls pile up),
    recording each call; a part above 100 is refused."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def outcome(self, request: Any) -> Any:
        if request.amount_micros > 100:
            raise DomainError(Reason.SETTLE_ABOVE_HOLD, f"too much for {request.request_id}")
        return wallet_pb2.CapturePartResponse(
            hold=wallet_pb2.Hold(hold_id=request.hold_id),
            entry=wallet_pb2.LedgerEntry(
                request_id=request.request_id,
                amount_micros=-request.amount_micros,
                trace_id=request.trace_id,
            ),
        )

    async def CapturePart(self, request: Any) -> Any:
        self.calls.append(("CapturePart", 1))
        await asyncio.sleep(0.001)
        return self.outcome(request)

    async def CapturePartMany(self, request: Any) -> Any:
        self.calls.append(("CapturePartMany", len(request.parts)))
        await asyncio.sleep(0.001)
        outcomes = []
        for part in request.parts:
            try:
                outcomes.append(wallet_pb2.CapturePartOutcome(answer=self.outcome(part)))
            except DomainError as error:
                outcomes.append(wallet_pb2.CapturePartOutcome(error=item_error_to_proto(error)))
        return wallet_pb2.CapturePartManyResponse(outcomes=outcomes)


async def test_concurrent_parts_leave_in_one_capture_part_many_each_with_its_own_answer() -> None:
    stub = FakePartStub()
    client = fake_client(stub)

    async def one(n: int) -> Any:
        try:
            return await client.capture_part(
                "hold-1", 10 * n, f"req-{n}", account_id="acct-1", trace_id=f"t-{n}"
            )
        except DomainError as error:
            return error

    outcomes = await asyncio.gather(*(one(n) for n in range(12)))
    # Submitted in one turn (as a relay round's are): all twelve in one batch call.
    assert stub.calls == [("CapturePartMany", 12)]
    assert client.part_batcher.batched_items == 12
    refused = outcomes.pop(11)
    assert isinstance(refused, DomainError) and refused.reason is Reason.SETTLE_ABOVE_HOLD
    assert [(o.entry.request_id, o.entry.amount_micros, o.entry.trace_id) for o in outcomes] == [
        (f"req-{n}", -10 * n, f"t-{n}") for n in range(11)
    ]
