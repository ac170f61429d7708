"""Credits, adjustments, the ledger and its invariants on the real database (W1, W4-W7)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from tokenforge.errors import DomainError, Reason
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.wallet.v1 import wallet_pb2

CREDIT = common_pb2.BUCKET_CREDIT
ROUTED = common_pb2.BUCKET_ROUTED


def credit_request(account: str, amount: int, order_id: str, bucket: int = CREDIT) -> object:
    return wallet_pb2.CreditRequest(
        account_id=account, bucket=bucket, amount_micros=amount, order_id=order_id
    )


def adjust_request(account: str, amount: int, key: str, reason: str = "goodwill") -> object:
    return wallet_pb2.AdjustRequest(
        account_id=account,
        bucket=CREDIT,
        amount_micros=amount,
        reason=reason,
        operator="ops@example.com",
        idempotency_key=key,
    )


async def test_credit_with_the_internal_token_credits_the_named_bucket(wallet) -> None:
    account = await wallet.open_funded()
    response = await wallet.call("Credit", credit_request(account, 2_500_000, "o-1", ROUTED))
    entry = response.entry
    assert entry.kind == wallet_pb2.ENTRY_KIND_TOPUP_CREDIT
    assert (entry.amount_micros, entry.balance_after_micros, entry.order_id) == (
        2_500_000,
        2_500_000,
        "o-1",
    )
    assert (await wallet.balance(account, ROUTED)).posted_micros == 2_500_000
    assert (await wallet.balance(account, CREDIT)).posted_micros == 0


async def test_credit_with_the_admin_token_is_permission_denied(wallet, operator) -> None:
    account = await wallet.open_funded()
    with pytest.raises(DomainError) as caught:
        await operator.call("Credit", credit_request(account, 1, f"o-{uuid.uuid4()}"))
    assert caught.value.reason is Reason.PERMISSION_DENIED
    assert (await wallet.balance(account)).posted_micros == 0


async def test_credit_is_once_per_order_and_other_args_conflict(wallet) -> None:
    account = await wallet.open_funded()
    order = f"o-{uuid.uuid4()}"
    first = await wallet.call("Credit", credit_request(account, 1_000_000, order))
    again = await wallet.call("Credit", credit_request(account, 1_000_000, order))
    assert again.entry.entry_id == first.entry.entry_id
    for other in (
        credit_request(account, 2_000_000, order),
        credit_request(account, 1_000_000, order, ROUTED),
    ):
        with pytest.raises(DomainError) as caught:
            await wallet.call("Credit", other)
        assert caught.value.reason is Reason.IDEMPOTENCY_CONFLICT
    assert (await wallet.balance(account)).posted_micros == 1_000_000
    assert (await wallet.balance(account, ROUTED)).posted_micros == 0


async def test_adjust_with_the_internal_token_is_permission_denied(wallet) -> None:
    account = await wallet.open_funded()
    with pytest.raises(DomainError) as caught:
        await wallet.call("Adjust", adjust_request(account, 5, "k-internal"))
    assert caught.value.reason is Reason.PERMISSION_DENIED


async def test_adjust_is_once_per_key_with_a_reason(wallet, operator) -> None:
    account = await wallet.open_funded(credit=1_000)
    key = f"k-{uuid.uuid4()}"
    first = await operator.call("Adjust", adjust_request(account, 500, key))
    again = await operator.call("Adjust", adjust_request(account, 500, key))
    assert again.entry.entry_id == first.entry.entry_id
    assert first.entry.reason == "goodwill"
    assert first.entry.operator == "ops@example.com"
    assert first.entry.balance_after_micros == 1_500
    with pytest.raises(DomainError) as caught:
        await operator.call("Adjust", adjust_request(account, 600, key))
    assert caught.value.reason is Reason.IDEMPOTENCY_CONFLICT
    with pytest.raises(DomainError) as caught:
        await operator.call("Adjust", adjust_request(account, 600, f"k-{uuid.uuid4()}", " "))
    assert caught.value.reason is Reason.INVALID_ARGUMENT
    assert (await wallet.balance(account)).posted_micros == 1_500


async def test_negative_adjust_never_takes_available_below_zero(wallet, operator) -> None:
    account = await wallet.open_funded(credit=1_000)
    await wallet.call(
        "Hold",
        wallet_pb2.HoldRequest(
            account_id=account, bucket=CREDIT, amount_micros=600, request_id="r-1"
        ),
    )
    with pytest.raises(DomainError) as caught:
        await operator.call("Adjust", adjust_request(account, -401, f"k-{uuid.uuid4()}"))
    assert caught.value.reason is Reason.INSUFFICIENT_BALANCE
    taken = await operator.call("Adjust", adjust_request(account, -400, f"k-{uuid.uuid4()}"))
    assert taken.entry.balance_after_micros == 600
    after = await wallet.balance(account)
    assert (after.posted_micros, after.held_micros, after.available_micros) == (600, 600, 0)


async def test_ledger_lists_newest_first_with_filters_and_pages(wallet, operator) -> None:
    account = await wallet.open_funded()
    for i in range(5):
        await wallet.call("Credit", credit_request(account, 1_000 * (i + 1), f"ord-{account}-{i}"))
    await operator.call("Adjust", adjust_request(account, -500, f"k-{uuid.uuid4()}"))
    hold = (
        await wallet.call(
            "Hold",
            wallet_pb2.HoldRequest(
                account_id=account, bucket=CREDIT, amount_micros=700, request_id="req-ledger"
            ),
        )
    ).hold
    await wallet.call("Settle", wallet_pb2.SettleRequest(hold_id=hold.hold_id, amount_micros=300))

    everything = await wallet.call("ListLedger", wallet_pb2.ListLedgerRequest(account_id=account))
    kinds = [e.kind for e in everything.entries]
    assert kinds == [
        wallet_pb2.ENTRY_KIND_REQUEST_CHARGE,
        wallet_pb2.ENTRY_KIND_ADJUSTMENT,
        *[wallet_pb2.ENTRY_KIND_TOPUP_CREDIT] * 5,
    ]
    assert [e.balance_after_micros for e in everything.entries] == [
        14_200,
        14_500,
        15_000,
        10_000,
        6_000,
        3_000,
        1_000,
    ]
    assert everything.next_page_token == ""

    pages: list[str] = []
    token = ""
    while True:
        page = await wallet.call(
            "ListLedger",
            wallet_pb2.ListLedgerRequest(account_id=account, page_size=3, page_token=token),
        )
        pages.extend(e.entry_id for e in page.entries)
        token = page.next_page_token
        if not token:
            break
    assert pages == [e.entry_id for e in everything.entries]

    by_request = await wallet.call(
        "ListLedger", wallet_pb2.ListLedgerRequest(account_id=account, request_id="req-ledger")
    )
    assert [e.hold_id for e in by_request.entries] == [hold.hold_id]
    by_order = await wallet.call(
        "ListLedger",
        wallet_pb2.ListLedgerRequest(account_id=account, order_id=f"ord-{account}-2"),
    )
    assert [e.amount_micros for e in by_order.entries] == [3_000]
    by_kind = await wallet.call(
        "ListLedger",
        wallet_pb2.ListLedgerRequest(account_id=account, kind=wallet_pb2.ENTRY_KIND_ADJUSTMENT),
    )
    assert [e.amount_micros for e in by_kind.entries] == [-500]
    routed = await wallet.call(
        "ListLedger", wallet_pb2.ListLedgerRequest(account_id=account, bucket=ROUTED)
    )
    assert list(routed.entries) == []


async def test_ledger_of_unknown_account_is_not_found(wallet) -> None:
    with pytest.raises(DomainError) as caught:
        await wallet.call(
            "ListLedger", wallet_pb2.ListLedgerRequest(account_id=f"acct-{uuid.uuid4()}")
        )
    assert caught.value.reason is Reason.ACCOUNT_NOT_FOUND


async def test_ledger_refuses_a_forged_page_token(wallet) -> None:
    account = await wallet.open_funded()
    with pytest.raises(DomainError) as caught:
        await wallet.call(
            "ListLedger", wallet_pb2.ListLedgerRequest(account_id=account, page_token="%%%")
        )
    assert caught.value.reason is Reason.INVALID_ARGUMENT


async def test_every_entry_balances_and_every_balance_is_the_fold_of_its_journal(
    wallet, operator, engine: AsyncEngine
) -> None:
    account = await wallet.open_funded(credit=3_000_000, routed=1_000_000)
    hold = (
        await wallet.call(
            "Hold",
            wallet_pb2.HoldRequest(
                account_id=account, bucket=CREDIT, amount_micros=900_000, request_id="r-fold"
            ),
        )
    ).hold
    await wallet.call("Settle", wallet_pb2.SettleRequest(hold_id=hold.hold_id, amount_micros=1))
    await operator.call("Adjust", adjust_request(account, -2, f"k-{uuid.uuid4()}"))
    await wallet.call(
        "Hold",
        wallet_pb2.HoldRequest(
            account_id=account, bucket=ROUTED, amount_micros=5, request_id="r-open"
        ),
    )

    async with engine.connect() as conn:
        unbalanced = (
            await conn.execute(
                text(
                    "SELECT e.entry_id FROM wallet.journal_entries e "
                    "JOIN wallet.postings p USING (entry_id) "
                    "GROUP BY e.entry_id HAVING sum(p.amount) <> 0 OR count(*) < 2"
                )
            )
        ).all()
        mismatched = (
            await conn.execute(
                text(
                    "SELECT b.account_id, b.bucket, b.posted, b.held, "
                    "  coalesce((SELECT sum(p.amount) FROM wallet.postings p "
                    "    WHERE p.ledger_account = 'user:' || b.account_id || ':' || b.bucket), 0) "
                    "    AS folded, "
                    "  coalesce((SELECT sum(h.amount - h.captured) FROM wallet.holds h "
                    "    WHERE h.account_id = b.account_id AND h.bucket = b.bucket "
                    "      AND h.status = 'open'), 0) AS open_holds "
                    "FROM wallet.balances b"
                )
            )
        ).all()
        mine = [row for row in mismatched if row.account_id == account]
    assert unbalanced == []
    assert [r for r in mismatched if (r.posted, r.held) != (r.folded, r.open_holds)] == []
    assert sorted((r.bucket, r.posted, r.held) for r in mine) == [
        ("credit", 2_999_997, 0),
        ("routed", 1_000_000, 5),
    ]


async def test_the_ledger_is_append_only(wallet, engine: AsyncEngine) -> None:
    account = await wallet.open_funded(credit=1_000)
    for statement in (
        "UPDATE wallet.postings SET amount = amount + 1 WHERE ledger_account = :acct",
        "DELETE FROM wallet.postings WHERE ledger_account = :acct",
        "UPDATE wallet.journal_entries SET reason = 'edited' WHERE account_id = :id",
        "DELETE FROM wallet.journal_entries WHERE account_id = :id",
    ):
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError, match="append-only"):
                await conn.execute(
                    text(statement), {"acct": f"user:{account}:credit", "id": account}
                )
    assert (await wallet.balance(account)).posted_micros == 1_000


async def test_an_unbalanced_entry_is_refused_at_commit(wallet, engine: AsyncEngine) -> None:
    account = await wallet.open_funded()
    entry_id = uuid.uuid4()
    with pytest.raises(DBAPIError, match="unbalanced"):
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO wallet.journal_entries "
                    "(entry_id, kind, account_id, bucket, idempotency_key, created_at) "
                    "VALUES (:e, 'adjustment', :a, 'credit', :k, now())"
                ),
                {"e": entry_id, "a": account, "k": f"forged:{entry_id}"},
            )
            await conn.execute(
                text(
                    "INSERT INTO wallet.postings (entry_id, ledger_account, bucket, amount) "
                    "VALUES (:e, :acct, 'credit', 1000)"
                ),
                {"e": entry_id, "acct": f"user:{account}:credit"},
            )
    ledger = await wallet.call("ListLedger", wallet_pb2.ListLedgerRequest(account_id=account))
    assert list(ledger.entries) == []
