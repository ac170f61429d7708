"""HoldMany, SettleMany, CapturePartMany and ReleaseMany, and the batching WalletClient,
on the real PostgreSQL through gRPC: a batch item behaves exactly as its unary call (W2, W3,
W4, errors, permissions), and concurrent calls through one client really leave in
batches (each test checks its batcher's `batched_items`)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest

from services.wallet import app
from services.wallet.client import WalletClient
from tests.integration.wallet.conftest import (
    ADMIN,
    INTERNAL,
    Wallet,
    assert_one_of_settle_or_release_won,
)
from tokenforge.config import Settings
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.wallet.v1 import wallet_pb2
from tokenforge.holds import part_entry_id
from tokenforge.money import Bucket
from tokenforge.runtime.batch_items import MAX_BATCH_ITEMS
from tokenforge.runtime.grpc_client import Peer
from tokenforge.runtime.service import RunningService
from tokenforge.wire import item_error_from_proto

CREDIT = common_pb2.BUCKET_CREDIT


@pytest.fixture
async def client(wallet_app: RunningService) -> AsyncIterator[WalletClient]:
    """One batching client shared by every concurrent caller of a test."""
    found = WalletClient(Peer("wallet", wallet_app.address, INTERNAL))
    yield found
    await found.close()


def hold_request(account: str, amount: int, request_id: str = "", **kw: Any) -> Any:
    return wallet_pb2.HoldRequest(
        account_id=account,
        bucket=kw.pop("bucket", CREDIT),
        amount_micros=amount,
        request_id=request_id or f"req-{uuid.uuid4()}",
        **kw,
    )


def batched(client: WalletClient, name: str) -> int:
    return int(getattr(client, f"{name}_batcher").batched_items)


# Races through the batching client.


async def test_balance_100_and_200_concurrent_holds_of_1_through_one_client_exactly_100_succeed(
    wallet: Wallet, client: WalletClient
) -> None:
    account = await wallet.open_funded(credit=100)
    refusals: list[DomainError] = []

    async def attempt(n: int) -> bool:
        try:
            await client.hold(account, Bucket.CREDIT, 1, f"req-{n}-{uuid.uuid4()}")
        except DomainError as error:
            refusals.append(error)
            return False
        return True

    results = await asyncio.gather(*(attempt(n) for n in range(200)))
    after = await wallet.balance(account)
    assert batched(client, "hold") > 0
    assert sum(results) == 100
    assert {e.reason for e in refusals} == {Reason.INSUFFICIENT_BALANCE}
    # What each refused hold saw available: never below zero (W2).
    assert all(int((e.metadata or {})["available_micros"]) >= 0 for e in refusals)
    assert (after.posted_micros, after.held_micros, after.available_micros) == (100, 100, 0)


async def test_one_idempotency_key_sent_20_times_at_once_in_batches_has_one_effect(
    wallet: Wallet, client: WalletClient
) -> None:
    account = await wallet.open_funded(credit=1_000)
    holds = await asyncio.gather(
        *(
            client.hold(account, Bucket.CREDIT, 300, "req-twenty", idempotency_key=f"key-{account}")
            for _ in range(20)
        )
    )
    assert batched(client, "hold") > 0
    assert len({h.SerializeToString(deterministic=True) for h in holds}) == 1
    listed = await client.holds(account)
    assert [h.hold_id for h in listed.holds] == [holds[0].hold_id]
    assert (await wallet.balance(account)).held_micros == 300
    await client.release(holds[0].hold_id)


async def test_50_settles_and_50_releases_of_one_hold_in_batches_change_the_ledger_once(
    wallet: Wallet, client: WalletClient
) -> None:
    account = await wallet.open_funded(credit=1_000)
    hold = await client.hold(account, Bucket.CREDIT, 100, "req-batch-race")

    async def attempt(call: Awaitable[Any], method: str) -> str:
        try:
            answer = await call
        except DomainError as error:
            assert error.reason is Reason.HOLD_NOT_OPEN
            return "refused"
        status = answer.hold.status if method == "Settle" else answer.status
        return f"{method}:{wallet_pb2.HoldStatus.Name(status)}"

    calls = [attempt(client.settle(hold.hold_id, 60), "Settle") for _ in range(50)]
    calls += [attempt(client.release(hold.hold_id), "Release") for _ in range(50)]
    outcomes = await asyncio.gather(*calls)

    assert batched(client, "settle") > 0 and batched(client, "release") > 0
    ledger = await client.ledger(account, request_id="req-batch-race")
    after = await wallet.balance(account)
    assert_one_of_settle_or_release_won(outcomes, ledger.entries, after)


async def test_each_batched_settle_keeps_its_own_trace_id_on_its_ledger_row(
    wallet: Wallet, client: WalletClient
) -> None:
    account = await wallet.open_funded(credit=1_000)
    holds = await asyncio.gather(
        *(client.hold(account, Bucket.CREDIT, 10, f"req-trace-{n}-{account}") for n in range(12))
    )
    traces = [f"{n:032x}" for n in range(1, 13)]
    settled = await asyncio.gather(
        *(
            client.settle(h.hold_id, 7, account_id=account, trace_id=t)
            for h, t in zip(holds, traces, strict=True)
        )
    )
    assert batched(client, "settle") > 0
    assert [s.entry.trace_id for s in settled] == traces
    assert [s.entry.hold_id for s in settled] == [h.hold_id for h in holds]


async def test_concurrent_parts_through_one_client_leave_in_batches_each_with_its_own_row(
    wallet: Wallet, client: WalletClient
) -> None:
    account = await wallet.open_funded(credit=1_000)
    hold = await client.hold(account, Bucket.CREDIT, 500, f"run-{uuid.uuid4()}")
    traces = [f"{n:032x}" for n in range(1, 13)]
    parts = await asyncio.gather(
        *(
            client.capture_part(hold.hold_id, 10, f"req-{n}", account_id=account, trace_id=t)
            for n, t in enumerate(traces)
        )
    )
    assert batched(client, "part") > 0
    assert client.part_batcher.calls < 12  # fewer calls than parts: they were coalesced
    assert [p.entry.trace_id for p in parts] == traces
    assert [p.entry.entry_id for p in parts] == [
        str(part_entry_id(hold.hold_id, f"req-{n}")) for n in range(12)
    ]
    assert max(p.hold.captured_micros for p in parts) == 120
    after = await wallet.balance(account)
    assert (after.posted_micros, after.held_micros) == (880, 380)
    await client.release(hold.hold_id)


async def test_two_part_batches_and_unary_parts_on_one_hold_never_capture_more_than_it(
    wallet: Wallet,
) -> None:
    account = await wallet.open_funded(credit=10_000)
    hold = (await wallet.call("Hold", hold_request(account, 1_000))).hold

    def part(n: int) -> Any:
        return wallet_pb2.CapturePartRequest(
            hold_id=hold.hold_id, amount_micros=30, request_id=f"req-{n}", account_id=account
        )

    answers: dict[str, set[str]] = {}

    def note(request: Any, kind: str, what: Any) -> None:
        if kind == "answer":
            answers.setdefault(request.request_id, set()).add(what.entry.entry_id)
        else:
            assert what.reason is Reason.SETTLE_ABOVE_HOLD, what

    async def batch(numbers: range) -> None:
        items = [part(n) for n in numbers]
        answer = await wallet.call(
            "CapturePartMany", wallet_pb2.CapturePartManyRequest(parts=items)
        )
        for item, outcome in zip(items, answer.outcomes, strict=True):
            if outcome.WhichOneof("outcome") == "answer":
                note(item, "answer", outcome.answer)
            else:
                note(item, "error", item_error_from_proto(outcome.error))

    async def unary(n: int) -> None:
        request = part(n)
        try:
            note(request, "answer", await wallet.call("CapturePart", request))
        except DomainError as error:
            note(request, "error", error)

    # 80 request ids of 30 each (2,400) on a hold of 1,000; ids 20 to 59 are sent twice
    # or three times at once (in both batches and alone).
    await asyncio.gather(
        batch(range(0, 40)),
        batch(range(20, 60)),
        *(unary(n) for n in range(40, 80)),
        *(unary(n) for n in range(30, 50)),
    )
    rows = (
        await wallet.call(
            "ListLedger",
            wallet_pb2.ListLedgerRequest(
                account_id=account, kind=wallet_pb2.ENTRY_KIND_REQUEST_CHARGE, page_size=500
            ),
        )
    ).entries
    holds = await wallet.call("ListHolds", wallet_pb2.ListHoldsRequest(account_id=account))
    after = await wallet.balance(account)
    # 1,000 / 30: exactly 33 parts fit (W2, W3), each (hold, request) once (W4), and
    # every answer for one request names its one row.
    assert len(rows) == 33 == len(answers)
    assert {e.request_id: {e.entry_id} for e in rows} == answers
    assert all(e.entry_id == str(part_entry_id(hold.hold_id, e.request_id)) for e in rows)
    assert holds.holds[0].captured_micros == 990
    assert (after.posted_micros, after.held_micros) == (10_000 - 990, 10)
    await wallet.call("Release", wallet_pb2.ReleaseRequest(hold_id=hold.hold_id))


# A batch answers each item as its unary call.


def outcome_of(outcome: Any) -> tuple[str, Any]:
    if outcome.WhichOneof("outcome") == "error":
        error = item_error_from_proto(outcome.error)
        return "error", (error.reason, error.message, error.metadata)
    return "answer", outcome.answer.SerializeToString(deterministic=True)


async def unary_outcome(wallet: Wallet, method: str, request: Any) -> tuple[str, Any]:
    try:
        answer = await wallet.call(method, request)
    except DomainError as error:
        return "error", (error.reason, error.message, error.metadata)
    return "answer", answer.SerializeToString(deterministic=True)


async def test_a_hold_batch_of_good_and_refused_items_answers_each_as_its_unary_call(
    wallet: Wallet,
) -> None:
    rich = await wallet.open_funded(credit=1_000)
    poor = await wallet.open_funded(credit=50)
    taken = await wallet.open_funded(credit=1_000)
    first = (await wallet.call("Hold", hold_request(taken, 100, "req-first"))).hold
    items = [
        hold_request(rich, 300),  # placed
        hold_request(poor, 100),  # insufficient balance
        hold_request(f"nobody-{uuid.uuid4()}", 10),  # no such account
        hold_request(rich, 10, bucket=common_pb2.BUCKET_UNSPECIFIED),  # no bucket
        hold_request(rich, 0),  # not a positive amount
        hold_request(taken, 999, "req-first"),  # the key with other arguments
        hold_request(taken, 100, "req-first"),  # a replay: the first hold
        hold_request(rich, 10, "req-\x00"),  # a NUL: refused before the database
    ]
    answer = await wallet.call("HoldMany", wallet_pb2.HoldManyRequest(holds=items))
    batch = [outcome_of(o) for o in answer.outcomes]
    # Each request alone now: replays answer the same holds, refusals the same errors.
    alone = [await unary_outcome(wallet, "Hold", item) for item in items]
    assert batch == alone
    assert [kind for kind, _ in batch] == ["answer", *["error"] * 5, "answer", "error"]
    assert [what[0] for kind, what in batch if kind == "error"] == [
        Reason.INSUFFICIENT_BALANCE,
        Reason.ACCOUNT_NOT_FOUND,
        Reason.INVALID_ARGUMENT,
        Reason.INVALID_ARGUMENT,
        Reason.IDEMPOTENCY_CONFLICT,
        Reason.INVALID_ARGUMENT,
    ]
    assert answer.outcomes[6].answer.hold.hold_id == first.hold_id
    assert (await wallet.balance(rich)).held_micros == 300
    assert (await wallet.balance(poor)).held_micros == 0
    assert (await wallet.balance(taken)).held_micros == 100


async def test_settle_and_release_batches_answer_each_item_as_its_unary_call(
    wallet: Wallet,
) -> None:
    account = await wallet.open_funded(credit=1_000)
    other = await wallet.open_funded(credit=1_000)

    async def place(owner: str, amount: int) -> str:
        response = await wallet.call("Hold", hold_request(owner, amount))
        return str(response.hold.hold_id)

    to_settle, too_small, not_theirs, to_release = (
        await place(account, 100),
        await place(account, 50),
        await place(other, 40),
        await place(account, 30),
    )
    settles = [
        wallet_pb2.SettleRequest(hold_id=to_settle, amount_micros=60, account_id=account),
        wallet_pb2.SettleRequest(hold_id=too_small, amount_micros=51),  # above the hold
        wallet_pb2.SettleRequest(hold_id=not_theirs, amount_micros=1, account_id=account),
        wallet_pb2.SettleRequest(hold_id=str(uuid.uuid4()), amount_micros=1),  # unknown
        wallet_pb2.SettleRequest(hold_id="not-a-hold-id", amount_micros=1),
        wallet_pb2.SettleRequest(hold_id=to_release, amount_micros=-1),  # negative
    ]
    settled = await wallet.call("SettleMany", wallet_pb2.SettleManyRequest(settles=settles))
    releases = [
        wallet_pb2.ReleaseRequest(hold_id=to_release, reason="upstream failed"),
        wallet_pb2.ReleaseRequest(hold_id=to_settle),  # settled: can not be given back
        wallet_pb2.ReleaseRequest(hold_id=not_theirs, account_id=account),
        wallet_pb2.ReleaseRequest(hold_id=str(uuid.uuid4())),
    ]
    released = await wallet.call("ReleaseMany", wallet_pb2.ReleaseManyRequest(releases=releases))

    settle_batch = [outcome_of(o) for o in settled.outcomes]
    release_batch = [outcome_of(o) for o in released.outcomes]
    assert settle_batch == [await unary_outcome(wallet, "Settle", s) for s in settles]
    assert release_batch == [await unary_outcome(wallet, "Release", r) for r in releases]
    assert [kind for kind, _ in settle_batch] == ["answer", *["error"] * 5]
    assert [what[0] for kind, what in settle_batch if kind == "error"] == [
        Reason.SETTLE_ABOVE_HOLD,
        Reason.NOT_FOUND,
        Reason.NOT_FOUND,
        Reason.NOT_FOUND,
        Reason.INVALID_ARGUMENT,
    ]
    assert [kind for kind, _ in release_batch] == ["answer", "error", "error", "error"]
    assert [what[0] for kind, what in release_batch if kind == "error"] == [
        Reason.HOLD_NOT_OPEN,
        Reason.NOT_FOUND,
        Reason.NOT_FOUND,
    ]
    assert settled.outcomes[0].answer.entry.amount_micros == -60
    assert released.outcomes[0].answer.hold.status == wallet_pb2.HOLD_STATUS_RELEASED
    after = await wallet.balance(account)
    # Settled 60 of 100; the hold of 50 stays open (its settle was refused).
    assert (after.posted_micros, after.held_micros) == (940, 50)
    assert (await wallet.balance(other)).held_micros == 40
    for hold_id, owner in ((too_small, account), (not_theirs, other)):
        await wallet.call("Release", wallet_pb2.ReleaseRequest(hold_id=hold_id, account_id=owner))


async def test_a_part_batch_answers_each_item_as_its_unary_call(wallet: Wallet) -> None:
    account = await wallet.open_funded(credit=1_000)
    other = await wallet.open_funded(credit=1_000)

    async def place(owner: str, amount: int) -> str:
        response = await wallet.call("Hold", hold_request(owner, amount))
        return str(response.hold.hold_id)

    run, earlier, not_theirs = (
        await place(account, 100),
        await place(account, 50),
        await place(other, 40),
    )

    def part(hold_id: str, amount: int, request_id: str, owner: str = account) -> Any:
        return wallet_pb2.CapturePartRequest(
            hold_id=hold_id,
            amount_micros=amount,
            request_id=request_id,
            account_id=owner,
            trace_id="trace-part",
        )

    first = await wallet.call("CapturePart", part(earlier, 20, "req-earlier"))
    parts = [
        part(run, 60, "req-a"),  # captured
        part(run, 60, "req-a"),  # the same part again in the batch: answers the first
        part(earlier, 20, "req-earlier"),  # a replay of a part captured before
        part(run, 41, "req-b"),  # above what is left (40)
        part(not_theirs, 10, "req-c"),  # another account's hold
        part(run, 61, "req-a"),  # the part's key with another amount
        part(run, 10, ""),  # no request id
        part(str(uuid.uuid4()), 10, "req-d"),  # unknown hold
        part(run, 0, "req-zero"),  # zero: no row
    ]
    captured = await wallet.call("CapturePartMany", wallet_pb2.CapturePartManyRequest(parts=parts))
    batch = [outcome_of(o) for o in captured.outcomes]
    # Each part alone now: replays answer the same rows, refusals the same errors.
    assert batch == [await unary_outcome(wallet, "CapturePart", p) for p in parts]
    assert [kind for kind, _ in batch] == [*["answer"] * 3, *["error"] * 5, "answer"]
    assert [what[0] for kind, what in batch if kind == "error"] == [
        Reason.SETTLE_ABOVE_HOLD,
        Reason.NOT_FOUND,
        Reason.IDEMPOTENCY_CONFLICT,
        Reason.INVALID_ARGUMENT,
        Reason.NOT_FOUND,
    ]
    a, again, replay = (captured.outcomes[n].answer for n in range(3))
    assert a.entry.entry_id == again.entry.entry_id == str(part_entry_id(run, "req-a"))
    assert replay.entry.entry_id == first.entry.entry_id
    assert (a.entry.amount_micros, a.hold.captured_micros) == (-60, 60)
    assert not captured.outcomes[8].answer.HasField("entry")
    after = await wallet.balance(account)
    assert (after.posted_micros, after.held_micros) == (920, 70)
    assert (await wallet.balance(other)).held_micros == 40
    for hold_id, owner in ((run, account), (earlier, account), (not_theirs, other)):
        await wallet.call("Release", wallet_pb2.ReleaseRequest(hold_id=hold_id, account_id=owner))


async def test_a_batch_of_256_is_served_and_one_above_is_invalid_argument_changing_nothing(
    wallet: Wallet,
) -> None:
    account = await wallet.open_funded(credit=1_000)
    too_many = [hold_request(account, 1) for _ in range(MAX_BATCH_ITEMS + 1)]
    for method, request in (
        ("HoldMany", wallet_pb2.HoldManyRequest(holds=too_many)),
        (
            "SettleMany",
            wallet_pb2.SettleManyRequest(
                settles=[wallet_pb2.SettleRequest(hold_id=str(uuid.uuid4()))] * 257
            ),
        ),
        (
            "CapturePartMany",
            wallet_pb2.CapturePartManyRequest(
                parts=[
                    wallet_pb2.CapturePartRequest(
                        hold_id=str(uuid.uuid4()), amount_micros=1, request_id=f"req-{n}"
                    )
                    for n in range(257)
                ]
            ),
        ),
        (
            "ReleaseMany",
            wallet_pb2.ReleaseManyRequest(
                releases=[wallet_pb2.ReleaseRequest(hold_id=str(uuid.uuid4()))] * 257
            ),
        ),
    ):
        with pytest.raises(DomainError) as caught:
            await wallet.call(method, request)
        assert caught.value.reason is Reason.INVALID_ARGUMENT, method
        assert (caught.value.metadata or {})["max_items"] == "256"
    assert (await wallet.balance(account)).held_micros == 0

    full = await wallet.call("HoldMany", wallet_pb2.HoldManyRequest(holds=too_many[:256]))
    assert [o.WhichOneof("outcome") for o in full.outcomes] == ["answer"] * 256
    assert [o.answer.hold.request_id for o in full.outcomes] == [
        r.request_id for r in too_many[:256]
    ]
    assert (await wallet.balance(account)).held_micros == 256
    released = await wallet.call(
        "ReleaseMany",
        wallet_pb2.ReleaseManyRequest(
            releases=[
                wallet_pb2.ReleaseRequest(hold_id=o.answer.hold.hold_id) for o in full.outcomes
            ]
        ),
    )
    assert {o.answer.hold.status for o in released.outcomes} == {wallet_pb2.HOLD_STATUS_RELEASED}
    assert (await wallet.balance(account)).held_micros == 0


# Who may call a batch: exactly who may call its unary method.


@pytest.fixture(scope="module")
async def named_wallet(database_url: str) -> AsyncIterator[RunningService]:
    running = await app.start(
        Settings(
            database_url=database_url,
            internal_token=INTERNAL,
            admin_token=ADMIN,
            caller_tokens={"gateway": "tok-gateway", "payments": "tok-payments"},
        ),
        port=0,
    )
    yield running
    await running.stop()


async def outcomes_for(them: Wallet, account: str, hold_ids: list[str]) -> dict[str, str]:
    """Each hot-path method and its batch, called once by one caller."""
    settle_one, settle_many, release_one, release_many, part_of = hold_ids
    calls: dict[str, tuple[str, Any]] = {
        "Hold": ("Hold", hold_request(account, 1)),
        "HoldMany": ("HoldMany", wallet_pb2.HoldManyRequest(holds=[hold_request(account, 1)])),
        "Settle": ("Settle", wallet_pb2.SettleRequest(hold_id=settle_one, amount_micros=1)),
        "SettleMany": (
            "SettleMany",
            wallet_pb2.SettleManyRequest(
                settles=[wallet_pb2.SettleRequest(hold_id=settle_many, amount_micros=1)]
            ),
        ),
        "CapturePart": (
            "CapturePart",
            wallet_pb2.CapturePartRequest(
                hold_id=part_of, amount_micros=1, request_id=f"req-{uuid.uuid4()}"
            ),
        ),
        "CapturePartMany": (
            "CapturePartMany",
            wallet_pb2.CapturePartManyRequest(
                parts=[
                    wallet_pb2.CapturePartRequest(
                        hold_id=part_of, amount_micros=1, request_id=f"req-{uuid.uuid4()}"
                    )
                ]
            ),
        ),
        "Release": ("Release", wallet_pb2.ReleaseRequest(hold_id=release_one)),
        "ReleaseMany": (
            "ReleaseMany",
            wallet_pb2.ReleaseManyRequest(
                releases=[wallet_pb2.ReleaseRequest(hold_id=release_many)]
            ),
        ),
    }
    outcomes: dict[str, str] = {}
    for name, (method, request) in calls.items():
        try:
            answer = await them.call(method, request)
        except DomainError as error:
            outcomes[name] = error.reason.value
            continue
        if name.endswith("Many"):
            # The batch was admitted, and its one item was served.
            [item] = answer.outcomes
            assert item.WhichOneof("outcome") == "answer", item
        outcomes[name] = "ok"
    return outcomes


async def test_each_batch_method_admits_exactly_the_callers_of_its_unary_method(
    named_wallet: RunningService, wallet: Wallet
) -> None:
    account = await wallet.open_funded(credit=10_000)
    outcomes: dict[tuple[str, str], str] = {}
    for caller, token in (
        ("gateway", "tok-gateway"),
        ("internal", INTERNAL),
        ("operator", ADMIN),
        ("payments", "tok-payments"),
        ("stranger", "tok-unknown"),
    ):
        hold_ids = [
            str((await wallet.call("Hold", hold_request(account, amount))).hold.hold_id)
            for amount in (1, 1, 1, 1, 2)  # the last pays for two parts of 1
        ]
        peer = Peer("wallet", named_wallet.address, token)
        try:
            found = await outcomes_for(Wallet(peer), account, hold_ids)
        finally:
            await peer.close()
        # The hold the parts were taken from stays open: end it.
        await wallet.call("Release", wallet_pb2.ReleaseRequest(hold_id=hold_ids[4]))
        outcomes.update({(caller, name): outcome for name, outcome in found.items()})

    methods = (
        "Hold",
        "HoldMany",
        "Settle",
        "SettleMany",
        "CapturePart",
        "CapturePartMany",
        "Release",
        "ReleaseMany",
    )
    assert outcomes == {
        **{(c, m): "ok" for c in ("gateway", "internal", "operator") for m in methods},
        **{("payments", m): "PERMISSION_DENIED" for m in methods},
        **{("stranger", m): "UNAUTHENTICATED" for m in methods},
    }
