"""ExtendHold, Reverse, ListHolds, ledger time windows, per-caller permissions and
Reconcile, through gRPC against the real database."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.wallet import app, handlers
from services.wallet.client import WalletClient
from services.wallet.domain import commands
from services.wallet.storage.unit_of_work import UnitOfWork
from tests.integration.wallet.conftest import ADMIN, INTERNAL, Wallet
from tokenforge.config import Settings
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.wallet.v1 import wallet_pb2
from tokenforge.money import Bucket
from tokenforge.runtime.grpc_client import Peer
from tokenforge.runtime.service import RunningService

CREDIT = common_pb2.BUCKET_CREDIT


def stamp(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


async def place(wallet: Wallet, account: str, amount: int, **kw: object) -> wallet_pb2.Hold:
    response = await wallet.call(
        "Hold",
        wallet_pb2.HoldRequest(
            account_id=account,
            bucket=CREDIT,
            amount_micros=amount,
            request_id=f"req-{uuid.uuid4()}",
            **kw,
        ),
    )
    return response.hold


# ExtendHold


async def test_extend_hold_moves_expiry_later_and_never_earlier(wallet: Wallet) -> None:
    account = await wallet.open_funded(credit=1_000)
    hold = await place(wallet, account, 100, ttl_seconds=30)
    extended = (
        await wallet.call(
            "ExtendHold",
            wallet_pb2.ExtendHoldRequest(hold_id=hold.hold_id, ttl_seconds=600, account_id=account),
        )
    ).hold
    lifetime = extended.expires_at.ToDatetime(tzinfo=UTC).timestamp() - time.time()
    assert 590 < lifetime <= 600
    shorter = (
        await wallet.call(
            "ExtendHold", wallet_pb2.ExtendHoldRequest(hold_id=hold.hold_id, ttl_seconds=10)
        )
    ).hold
    assert shorter.expires_at == extended.expires_at
    assert (await wallet.balance(account)).held_micros == 100


async def test_extend_hold_is_bounded_by_the_hold_lifetime(
    wallet: Wallet, uow_at: Callable[[timedelta], UnitOfWork]
) -> None:
    account = await wallet.open_funded(credit=1_000)
    hold = await place(wallet, account, 100, ttl_seconds=3600)
    with pytest.raises(DomainError) as caught:
        await wallet.call(
            "ExtendHold", wallet_pb2.ExtendHoldRequest(hold_id=hold.hold_id, ttl_seconds=3601)
        )
    assert caught.value.reason is Reason.INVALID_ARGUMENT
    # Kept alive hour by hour, the hold stops at 4 hours after it was placed.
    for minutes in (50, 100, 150, 200):
        extended = await handlers.extend_hold(
            commands.ExtendHold(hold.hold_id, 3600), uow_at(timedelta(minutes=minutes))
        )
    assert extended.expires_at - extended.created_at == timedelta(hours=4)
    with pytest.raises(DomainError) as caught:
        await handlers.extend_hold(
            commands.ExtendHold(hold.hold_id, 3600), uow_at(timedelta(minutes=230))
        )
    assert caught.value.reason is Reason.INVALID_TRANSITION
    assert "maximum lifetime" in caught.value.message
    await wallet.call("Release", wallet_pb2.ReleaseRequest(hold_id=hold.hold_id))


async def test_extend_of_an_expired_or_ended_hold_is_refused(
    wallet: Wallet, uow_at: Callable[[timedelta], UnitOfWork]
) -> None:
    account = await wallet.open_funded(credit=1_000)
    hold = await place(wallet, account, 100, ttl_seconds=30)
    with pytest.raises(DomainError) as caught:
        await handlers.extend_hold(
            commands.ExtendHold(hold.hold_id, 600), uow_at(timedelta(seconds=31))
        )
    assert caught.value.reason is Reason.HOLD_EXPIRED
    await wallet.call("Settle", wallet_pb2.SettleRequest(hold_id=hold.hold_id, amount_micros=1))
    with pytest.raises(DomainError) as caught:
        await wallet.call(
            "ExtendHold", wallet_pb2.ExtendHoldRequest(hold_id=hold.hold_id, ttl_seconds=60)
        )
    assert caught.value.reason is Reason.HOLD_NOT_OPEN


# Another account's hold


async def test_another_accounts_hold_is_not_found_for_settle_release_and_extend(
    wallet: Wallet,
) -> None:
    mine = await wallet.open_funded(credit=1_000)
    theirs = await wallet.open_funded(credit=1_000)
    hold = await place(wallet, mine, 400)
    for method, request in (
        (
            "Settle",
            wallet_pb2.SettleRequest(hold_id=hold.hold_id, amount_micros=1, account_id=theirs),
        ),
        ("Release", wallet_pb2.ReleaseRequest(hold_id=hold.hold_id, account_id=theirs)),
        (
            "ExtendHold",
            wallet_pb2.ExtendHoldRequest(hold_id=hold.hold_id, ttl_seconds=60, account_id=theirs),
        ),
    ):
        with pytest.raises(DomainError) as caught:
            await wallet.call(method, request)
        assert caught.value.reason is Reason.NOT_FOUND, method
        assert caught.value.metadata == {"hold_id": hold.hold_id}
    assert (await wallet.balance(mine)).held_micros == 400
    settled = await wallet.call(
        "Settle", wallet_pb2.SettleRequest(hold_id=hold.hold_id, amount_micros=1, account_id=mine)
    )
    assert settled.hold.status == wallet_pb2.HOLD_STATUS_SETTLED


# Reverse


async def test_reverse_writes_the_opposite_entry_once_and_replays(
    wallet: Wallet, operator: Wallet
) -> None:
    account = await wallet.open_funded(credit=1_000_000)
    hold = await place(wallet, account, 300_000)
    charge = (
        await wallet.call(
            "Settle", wallet_pb2.SettleRequest(hold_id=hold.hold_id, amount_micros=250_000)
        )
    ).entry
    request = wallet_pb2.ReverseRequest(
        entry_id=charge.entry_id, reason="upstream double-billed", operator="ops@example.com"
    )
    first = (await operator.call("Reverse", request)).entry
    again = (await operator.call("Reverse", request)).entry
    assert again.entry_id == first.entry_id
    assert first.kind == wallet_pb2.ENTRY_KIND_REVERSAL
    assert first.reverses_entry_id == charge.entry_id
    assert first.amount_micros == 250_000
    assert first.balance_after_micros == 1_000_000
    assert (first.request_id, first.operator, first.reason) == (
        charge.request_id,
        "ops@example.com",
        "upstream double-billed",
    )
    assert (await wallet.balance(account)).posted_micros == 1_000_000

    with pytest.raises(DomainError) as caught:
        await operator.call(
            "Reverse", wallet_pb2.ReverseRequest(entry_id=charge.entry_id, reason="again")
        )
    assert caught.value.reason is Reason.INVALID_TRANSITION
    assert "already reversed" in caught.value.message
    with pytest.raises(DomainError) as caught:
        await operator.call(
            "Reverse", wallet_pb2.ReverseRequest(entry_id=first.entry_id, reason="undo")
        )
    assert caught.value.reason is Reason.INVALID_TRANSITION
    assert "itself a reversal" in caught.value.message
    assert (await wallet.balance(account)).posted_micros == 1_000_000


async def test_reversing_a_credit_never_takes_available_below_zero(
    wallet: Wallet, operator: Wallet
) -> None:
    account = await wallet.open_funded()
    credit = (
        await wallet.call(
            "Credit",
            wallet_pb2.CreditRequest(
                account_id=account, bucket=CREDIT, amount_micros=500, order_id=f"o-{uuid.uuid4()}"
            ),
        )
    ).entry
    hold = await place(wallet, account, 300)
    with pytest.raises(DomainError) as caught:
        await operator.call(
            "Reverse", wallet_pb2.ReverseRequest(entry_id=credit.entry_id, reason="chargeback")
        )
    assert caught.value.reason is Reason.INSUFFICIENT_BALANCE
    assert (await wallet.balance(account)).posted_micros == 500
    await wallet.call("Release", wallet_pb2.ReleaseRequest(hold_id=hold.hold_id))
    reversed_ = (
        await operator.call(
            "Reverse", wallet_pb2.ReverseRequest(entry_id=credit.entry_id, reason="chargeback")
        )
    ).entry
    assert (reversed_.amount_micros, reversed_.balance_after_micros) == (-500, 0)


async def test_reverse_of_an_unknown_entry_is_not_found(operator: Wallet) -> None:
    for entry_id in (str(uuid.uuid4()), "nope"):
        with pytest.raises(DomainError) as caught:
            await operator.call("Reverse", wallet_pb2.ReverseRequest(entry_id=entry_id, reason="x"))
        assert caught.value.reason is Reason.NOT_FOUND


# Listing


async def test_ledger_time_window_keeps_rows_inside_it(wallet: Wallet, operator: Wallet) -> None:
    account = await wallet.open_funded(credit=1_000)
    entries = (
        await wallet.call("ListLedger", wallet_pb2.ListLedgerRequest(account_id=account))
    ).entries
    created = entries[0].created_at.ToDatetime(tzinfo=UTC)

    async def window(**kw: object) -> int:
        response = await wallet.call(
            "ListLedger", wallet_pb2.ListLedgerRequest(account_id=account, **kw)
        )
        return len(response.entries)

    assert await window(from_time=stamp(created)) == 1
    assert await window(from_time=stamp(created + timedelta(microseconds=1))) == 0
    assert await window(to_time=stamp(created)) == 0
    assert await window(to_time=stamp(created + timedelta(seconds=1))) == 1
    with pytest.raises(DomainError) as caught:
        await window(from_time=stamp(created), to_time=stamp(created))
    assert caught.value.reason is Reason.INVALID_ARGUMENT


async def test_list_holds_filters_by_status_and_time_and_pages(wallet: Wallet) -> None:
    account = await wallet.open_funded(credit=10_000)
    placed = [await place(wallet, account, 100 + i) for i in range(5)]
    await wallet.call(
        "Settle", wallet_pb2.SettleRequest(hold_id=placed[0].hold_id, amount_micros=40)
    )
    await wallet.call("Release", wallet_pb2.ReleaseRequest(hold_id=placed[1].hold_id))

    seen: list[wallet_pb2.Hold] = []
    token = ""
    while True:
        page = await wallet.call(
            "ListHolds",
            wallet_pb2.ListHoldsRequest(account_id=account, page_size=2, page_token=token),
        )
        seen += page.holds
        token = page.next_page_token
        if not token:
            break
    assert [h.hold_id for h in seen] == [h.hold_id for h in reversed(placed)]
    settled = next(h for h in seen if h.hold_id == placed[0].hold_id)
    assert (settled.status, settled.captured_micros, settled.amount_micros) == (
        wallet_pb2.HOLD_STATUS_SETTLED,
        40,
        100,
    )
    assert settled.entry_id and settled.request_id == placed[0].request_id
    assert settled.HasField("ended_at") and settled.HasField("created_at")
    assert not seen[0].HasField("ended_at")

    open_ = await wallet.call(
        "ListHolds",
        wallet_pb2.ListHoldsRequest(account_id=account, status=wallet_pb2.HOLD_STATUS_OPEN),
    )
    assert {h.hold_id for h in open_.holds} == {h.hold_id for h in placed[2:]}
    later = placed[2].created_at.ToDatetime(tzinfo=UTC)
    windowed = await wallet.call(
        "ListHolds", wallet_pb2.ListHoldsRequest(account_id=account, from_time=stamp(later))
    )
    assert {h.hold_id for h in windowed.holds} == {h.hold_id for h in placed[2:]}
    for hold in placed[2:]:
        await wallet.call("Release", wallet_pb2.ReleaseRequest(hold_id=hold.hold_id))


# Per-caller credentials


@pytest.fixture(scope="module")
async def named_wallet(database_url: str) -> RunningService:
    running = await app.start(
        Settings(
            database_url=database_url,
            internal_token=INTERNAL,
            admin_token=ADMIN,
            caller_tokens={
                "gateway": "tok-gateway",
                "payments": "tok-payments",
                "usage": "tok-usage",
            },
        ),
        port=0,
    )
    yield running  # type: ignore[misc]
    await running.stop()


async def test_each_caller_gets_only_the_calls_the_wallet_allows_it(
    named_wallet: RunningService, wallet: Wallet
) -> None:
    account = await wallet.open_funded(credit=10_000)
    entry_id = (
        (await wallet.call("ListLedger", wallet_pb2.ListLedgerRequest(account_id=account)))
        .entries[0]
        .entry_id
    )
    outcomes: dict[tuple[str, str], str] = {}
    for caller, token in (
        ("gateway", "tok-gateway"),
        ("payments", "tok-payments"),
        ("usage", "tok-usage"),
        ("internal", INTERNAL),
        ("operator", ADMIN),
        ("stranger", "tok-unknown"),
    ):
        client = WalletClient.connect(named_wallet.address, token, attempts=1)
        calls = {
            "Hold": lambda c=client: c.hold(account, Bucket.CREDIT, 1, f"r-{uuid.uuid4()}"),
            "Credit": lambda c=client: c.credit(account, Bucket.CREDIT, 1, f"o-{uuid.uuid4()}"),
            "Adjust": lambda c=client: c.adjust(
                account, Bucket.CREDIT, 1, "fix", str(uuid.uuid4())
            ),
            "Reverse": lambda c=client: c.reverse(entry_id, "no such reason"),
            "Balances": lambda c=client: c.balances(account),
            "ListHolds": lambda c=client: c.holds(account),
        }
        try:
            for name, call in calls.items():
                try:
                    answer = await call()
                    outcomes[(caller, name)] = "ok"
                    if name == "Hold":
                        await client.release(answer.hold_id)  # who may hold may release
                except DomainError as error:
                    outcomes[(caller, name)] = error.reason.value
        finally:
            await client.close()

    denied, unauth = "PERMISSION_DENIED", "UNAUTHENTICATED"
    assert outcomes == {
        **{(c, "Hold"): "ok" for c in ("gateway", "internal", "operator")},
        ("payments", "Hold"): denied,
        ("usage", "Hold"): denied,
        ("internal", "Credit"): "ok",
        **{(c, "Credit"): denied for c in ("gateway", "payments", "usage", "operator")},
        ("operator", "Adjust"): "ok",
        **{(c, "Adjust"): denied for c in ("gateway", "payments", "usage", "internal")},
        ("operator", "Reverse"): "ok",
        **{(c, "Reverse"): denied for c in ("gateway", "payments", "usage", "internal")},
        **{
            (c, n): "ok"
            for c in ("gateway", "payments", "usage", "internal", "operator")
            for n in ("Balances", "ListHolds")
        },
        **{
            ("stranger", n): unauth
            for n in ("Hold", "Credit", "Adjust", "Reverse", "Balances", "ListHolds")
        },
    }


async def test_an_adjustment_records_the_operator_it_came_from(
    operator: Wallet, wallet: Wallet
) -> None:
    account = await wallet.open_funded(credit=10)
    entry = (
        await operator.call(
            "Adjust",
            wallet_pb2.AdjustRequest(
                account_id=account,
                bucket=CREDIT,
                amount_micros=5,
                reason="goodwill",
                idempotency_key=str(uuid.uuid4()),
            ),
        )
    ).entry
    assert entry.operator == "operator"


# Reconcile


async def test_reconcile_reports_a_balance_that_is_not_the_fold_of_its_journal(
    wallet: Wallet, operator: Wallet, engine: AsyncEngine
) -> None:
    account = await wallet.open_funded(credit=1_000)
    clean = await operator.call("Reconcile", wallet_pb2.ReconcileRequest())
    assert clean.ok and clean.violations == []
    assert clean.accounts_checked >= 1 and clean.entries_checked >= 1
    forge = (
        "UPDATE wallet.balances SET posted = posted + :d "
        "WHERE account_id = :a AND bucket = 'credit'"
    )
    async with engine.begin() as conn:
        await conn.execute(text(forge), {"d": 7, "a": account})
    try:
        report = await operator.call("Reconcile", wallet_pb2.ReconcileRequest())
        with pytest.raises(DomainError) as caught:
            await wallet.call("Reconcile", wallet_pb2.ReconcileRequest())
        assert caught.value.reason is Reason.PERMISSION_DENIED
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(forge), {"d": -7, "a": account})
    assert not report.ok
    assert [(v.rule, v.subject) for v in report.violations] == [("W7", f"{account}/credit")]
    assert "1007" in report.violations[0].detail and "1000" in report.violations[0].detail


async def test_client_reads_and_refusals_come_back_as_domain_errors(
    wallet_app: RunningService, wallet: Wallet
) -> None:
    account = await wallet.open_funded(routed=50)
    client = WalletClient(Peer("wallet", wallet_app.address, INTERNAL))
    try:
        hold = await client.hold(account, Bucket.ROUTED, 30, "req-client")
        assert (await client.hold(account, Bucket.ROUTED, 30, "req-client")).hold_id == hold.hold_id
        with pytest.raises(DomainError) as caught:
            await client.hold(account, Bucket.ROUTED, 30, "req-other")
        assert caught.value.reason is Reason.INSUFFICIENT_BALANCE
        assert caught.value.metadata["available_micros"] == "20"
        longer = await client.extend(hold.hold_id, 900, account_id=account)
        assert longer.expires_at.seconds > hold.expires_at.seconds
        settled = await client.settle(hold.hold_id, 12, account_id=account)
        assert settled.entry.amount_micros == -12
        assert (await client.balance(account, Bucket.ROUTED)).posted_micros == 38
        page = await client.ledger(account, request_id="req-client")
        assert [e.entry_id for e in page.entries] == [settled.entry.entry_id]
        holds = await client.holds(account, status=wallet_pb2.HOLD_STATUS_SETTLED)
        assert [h.hold_id for h in holds.holds] == [hold.hold_id]
    finally:
        await client.close()
