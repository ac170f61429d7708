"""Extending holds and reversing entries: pure domain rules."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.wallet.domain.model import (
    MAX_HOLD_LIFETIME_S,
    Balance,
    EntryKind,
    Hold,
    HoldStatus,
    adjustment,
    reversal,
    topup_credit,
)
from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def funded(amount: int = 1_000) -> Balance:
    balance = Balance("acct-1", Bucket.CREDIT)
    topup_credit(balance, amount, "order-1", NOW, "")
    return balance


def test_extend_moves_the_expiry_later_and_never_earlier() -> None:
    hold = Hold.place(funded(), 100, "req-1", 60, NOW)
    assert hold.extend(600, NOW + timedelta(seconds=30))
    assert hold.expires_at == NOW + timedelta(seconds=630)
    assert not hold.extend(10, NOW + timedelta(seconds=40))
    assert hold.expires_at == NOW + timedelta(seconds=630)


def test_extend_stops_at_the_maximum_lifetime() -> None:
    hold = Hold.place(funded(), 100, "req-1", 3600, NOW)
    cap = NOW + timedelta(seconds=MAX_HOLD_LIFETIME_S)
    now = NOW
    while hold.expires_at < cap:
        now = hold.expires_at - timedelta(minutes=1)
        hold.extend(3600, now)
    assert hold.expires_at == cap
    with pytest.raises(DomainError) as caught:
        hold.extend(3600, now)
    assert caught.value.reason is Reason.INVALID_TRANSITION
    assert "new hold" in caught.value.message


@pytest.mark.parametrize("ttl", [0, -1, 3601])
def test_extend_needs_a_ttl_within_bounds(ttl: int) -> None:
    hold = Hold.place(funded(), 100, "req-1", 60, NOW)
    with pytest.raises(DomainError) as caught:
        hold.extend(ttl, NOW)
    assert caught.value.reason is Reason.INVALID_ARGUMENT


def test_extend_of_an_expired_or_ended_hold_is_refused() -> None:
    balance = funded()
    hold = Hold.place(balance, 100, "req-1", 60, NOW)
    with pytest.raises(DomainError) as caught:
        hold.extend(60, NOW + timedelta(seconds=60))
    assert caught.value.reason is Reason.HOLD_EXPIRED
    hold.release(balance, NOW)
    with pytest.raises(DomainError) as caught:
        hold.extend(60, NOW)
    assert caught.value.reason is Reason.HOLD_NOT_OPEN


def test_another_accounts_hold_does_not_belong_to_it() -> None:
    hold = Hold.place(funded(), 100, "req-1", 60, NOW)
    assert hold.belongs_to("") and hold.belongs_to("acct-1")
    assert not hold.belongs_to("acct-2")


def test_a_reversal_has_the_opposite_postings_and_references_the_entry() -> None:
    balance = funded(1_000)
    original = adjustment(balance, -200, "fee", "ops", "k1", NOW)
    undone = reversal(original, balance, "fee charged by mistake", "ops", NOW)
    assert undone.kind is EntryKind.REVERSAL
    assert undone.reverses_entry_id == original.entry_id
    assert [p.amount for p in undone.postings] == [-p.amount for p in original.postings]
    assert (undone.amount, undone.balance_after, balance.posted) == (200, 1_000, 1_000)
    assert undone.idempotency_key == f"reverse:{original.entry_id}"


def test_a_reversal_is_not_reversed_and_needs_a_reason() -> None:
    balance = funded(1_000)
    original = adjustment(balance, 5, "goodwill", "ops", "k1", NOW)
    with pytest.raises(DomainError) as caught:
        reversal(original, balance, "  ", "ops", NOW)
    assert caught.value.reason is Reason.INVALID_ARGUMENT
    undone = reversal(original, balance, "typo", "ops", NOW)
    with pytest.raises(DomainError) as caught:
        reversal(undone, balance, "undo the undo", "ops", NOW)
    assert caught.value.reason is Reason.INVALID_TRANSITION


def test_reversing_a_credit_never_takes_available_below_zero() -> None:
    balance = Balance("acct-1", Bucket.CREDIT)
    credit = topup_credit(balance, 500, "order-1", NOW, "")
    Hold.place(balance, 400, "req-1", 60, NOW)
    with pytest.raises(DomainError) as caught:
        reversal(credit, balance, "chargeback", "ops", NOW)
    assert caught.value.reason is Reason.INSUFFICIENT_BALANCE
    assert (balance.posted, balance.held) == (500, 400)


def test_hold_status_values_are_the_wire_words() -> None:
    assert [s.value for s in HoldStatus] == ["open", "settled", "released", "expired"]
    assert uuid.UUID(str(Hold.place(funded(), 1, "r", 0, NOW).hold_id))
