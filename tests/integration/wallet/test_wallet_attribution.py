"""What a credit paid for, on the real database (GetCreditUse, GetPaidFrom): first in,
first out over the bucket's ledger, a reversal of a charge giving its slices back,
paging, and refusals that say what to name instead."""

from __future__ import annotations

import uuid

import pytest

from tokenforge.errors import DomainError, Reason
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.wallet.v1 import wallet_pb2

CREDIT = common_pb2.BUCKET_CREDIT


async def charge(wallet, account: str, amount: int) -> str:
    """A request held for and settled at `amount`; answers its request id."""
    request_id = f"req-{uuid.uuid4()}"
    held = await wallet.call(
        "Hold",
        wallet_pb2.HoldRequest(
            account_id=account, bucket=CREDIT, amount_micros=amount, request_id=request_id
        ),
    )
    await wallet.call(
        "Settle", wallet_pb2.SettleRequest(hold_id=held.hold.hold_id, amount_micros=amount)
    )
    return request_id


async def test_two_credits_pay_in_order_and_a_reversed_charge_gives_its_slices_back(
    wallet, operator
) -> None:
    account = await wallet.open_funded()
    for order in ("o-first", "o-second"):
        await wallet.call(
            "Credit",
            wallet_pb2.CreditRequest(
                account_id=account,
                bucket=CREDIT,
                amount_micros=1_000,
                order_id=f"{order}-{account}",
            ),
        )
    small = await charge(wallet, account, 600)
    split = await charge(wallet, account, 700)
    paid = await wallet.call(
        "GetPaidFrom", wallet_pb2.GetPaidFromRequest(account_id=account, request_id=split)
    )
    first_page = await wallet.call(
        "GetCreditUse",
        wallet_pb2.GetCreditUseRequest(
            account_id=account, order_id=f"o-first-{account}", page_size=1
        ),
    )
    second_page = await wallet.call(
        "GetCreditUse",
        wallet_pb2.GetCreditUseRequest(
            account_id=account,
            order_id=f"o-first-{account}",
            page_size=1,
            page_token=first_page.next_page_token,
        ),
    )
    [row] = (
        await wallet.call(
            "ListLedger", wallet_pb2.ListLedgerRequest(account_id=account, request_id=split)
        )
    ).entries
    await operator.call(
        "Reverse", wallet_pb2.ReverseRequest(entry_id=row.entry_id, reason="upstream refunded")
    )
    after = await wallet.call(
        "GetCreditUse",
        wallet_pb2.GetCreditUseRequest(account_id=account, order_id=f"o-second-{account}"),
    )

    assert [(s.credit_order_id, s.used_micros) for s in paid.slices] == [
        (f"o-first-{account}", 400),
        (f"o-second-{account}", 300),
    ]
    assert (first_page.received_micros, first_page.used_micros, first_page.left_micros) == (
        1_000,
        1_000,
        0,
    )
    assert first_page.slices_total == 2
    assert [s.request_id for s in (*first_page.slices, *second_page.slices)] == [small, split]
    assert not second_page.next_page_token
    # The reversal gave the second credit its 300 back (and the first its 400).
    assert (after.used_micros, after.left_micros) == (0, 1_000)
    assert [s.used_micros for s in after.slices] == [300, -300]


async def test_a_row_that_added_no_money_is_not_a_credit(wallet) -> None:
    account = await wallet.open_funded(credit=1_000)
    request_id = await charge(wallet, account, 10)
    [row] = (
        await wallet.call(
            "ListLedger", wallet_pb2.ListLedgerRequest(account_id=account, request_id=request_id)
        )
    ).entries
    with pytest.raises(DomainError) as refused:
        await wallet.call(
            "GetCreditUse",
            wallet_pb2.GetCreditUseRequest(account_id=account, entry_id=row.entry_id),
        )
    with pytest.raises(DomainError) as unknown:
        await wallet.call(
            "GetCreditUse", wallet_pb2.GetCreditUseRequest(account_id=account, order_id="nope")
        )
    assert refused.value.reason is Reason.NOT_FOUND
    assert "a top-up credit or a positive adjustment" in refused.value.message
    assert unknown.value.reason is Reason.NOT_FOUND
