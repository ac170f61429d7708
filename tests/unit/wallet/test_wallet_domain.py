"""The wallet's money rules as plain Python: no database, no network."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.wallet.domain.model import (
    Balance,
    EntryKind,
    Hold,
    HoldStatus,
    JournalEntry,
    Posting,
    adjustment,
    hold_ttl,
    request_charge,
    topup_credit,
)
from tokenforge.errors import DomainError, Reason
from tokenforge.money import MAX_AMOUNT_MICROS, Bucket

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def funded(micros: int, bucket: Bucket = Bucket.CREDIT) -> Balance:
    return Balance("acct-1", bucket, posted=micros)


def test_a_hold_reserves_available_money() -> None:
    balance = funded(1_000)
    hold = Hold.place(balance, 400, "req-1", 0, NOW)
    assert (balance.posted, balance.held, balance.available) == (1_000, 400, 600)
    assert hold.status is HoldStatus.OPEN
    assert hold.expires_at == NOW + timedelta(seconds=300)


def test_a_hold_above_available_is_refused_with_what_to_do_next() -> None:
    balance = Balance("acct-1", Bucket.ROUTED, posted=120_000, held=20_000)
    with pytest.raises(DomainError) as caught:
        Hold.place(balance, 300_000, "req-1", 0, NOW)
    error = caught.value
    assert error.reason is Reason.INSUFFICIENT_BALANCE
    assert error.message.startswith("Routed balance too low: 0.1 RB available")
    assert "0.3 RB" in error.message and "Top up the Routed balance" in error.message
    assert error.metadata == {
        "bucket": "routed",
        "available_micros": "100000",
        "requested_micros": "300000",
    }
    assert balance.held == 20_000


@pytest.mark.parametrize("amount", [0, -1])
def test_a_hold_must_be_positive(amount: int) -> None:
    with pytest.raises(DomainError) as caught:
        Hold.place(funded(10), amount, "req-1", 0, NOW)
    assert caught.value.reason is Reason.INVALID_ARGUMENT


def test_hold_ttl_defaults_and_is_bounded() -> None:
    assert hold_ttl(0) == timedelta(seconds=300)
    assert hold_ttl(3600) == timedelta(hours=1)
    for bad in (-1, 3601):
        with pytest.raises(DomainError) as caught:
            hold_ttl(bad)
        assert caught.value.reason is Reason.INVALID_ARGUMENT


def test_settle_captures_the_charge_and_releases_the_rest() -> None:
    balance = funded(1_000)
    hold = Hold.place(balance, 400, "req-1", 0, NOW)
    after = hold.settle(150, balance, NOW)
    assert after == 850
    assert (balance.posted, balance.held) == (850, 0)
    assert (hold.status, hold.captured, hold.ended_at) == (HoldStatus.SETTLED, 150, NOW)
    assert hold.is_replay_of_settle(150) and not hold.is_replay_of_settle(149)


def test_settle_above_the_hold_is_refused_and_changes_nothing() -> None:
    balance = funded(1_000)
    hold = Hold.place(balance, 400, "req-1", 0, NOW)
    with pytest.raises(DomainError) as caught:
        hold.settle(401, balance, NOW)
    assert caught.value.reason is Reason.SETTLE_ABOVE_HOLD
    assert (balance.posted, balance.held, hold.status) == (1_000, 400, HoldStatus.OPEN)


def test_settle_after_expiry_is_refused() -> None:
    balance = funded(1_000)
    hold = Hold.place(balance, 400, "req-1", 10, NOW)
    with pytest.raises(DomainError) as caught:
        hold.settle(1, balance, NOW + timedelta(seconds=10))
    assert caught.value.reason is Reason.HOLD_EXPIRED
    assert hold.status is HoldStatus.OPEN


def test_a_hold_ends_exactly_once() -> None:
    balance = funded(1_000)
    hold = Hold.place(balance, 400, "req-1", 10, NOW)
    assert hold.release(balance, NOW)
    assert not hold.release(balance, NOW)
    assert not hold.expire(balance, NOW + timedelta(hours=1))
    assert (balance.held, hold.status) == (0, HoldStatus.RELEASED)
    with pytest.raises(DomainError) as caught:
        hold.settle(1, balance, NOW)
    assert caught.value.reason is Reason.HOLD_NOT_OPEN


def test_a_settled_hold_can_not_be_released() -> None:
    balance = funded(1_000)
    hold = Hold.place(balance, 400, "req-1", 10, NOW)
    hold.settle(5, balance, NOW)
    with pytest.raises(DomainError) as caught:
        hold.release(balance, NOW)
    assert caught.value.reason is Reason.HOLD_NOT_OPEN
    assert not hold.expire(balance, NOW + timedelta(hours=1))
    assert (balance.posted, balance.held) == (995, 0)


def test_expiry_waits_for_the_ttl() -> None:
    balance = funded(1_000)
    hold = Hold.place(balance, 400, "req-1", 10, NOW)
    assert not hold.expire(balance, NOW + timedelta(seconds=9))
    assert hold.expire(balance, NOW + timedelta(seconds=10))
    assert (hold.status, balance.held) == (HoldStatus.EXPIRED, 0)
    with pytest.raises(DomainError) as caught:
        hold.settle(1, balance, NOW)
    assert caught.value.reason is Reason.HOLD_EXPIRED


def test_entries_balance_to_zero_and_record_the_balance_after() -> None:
    balance = funded(1_000)
    credit = topup_credit(balance, 500, "order-1", NOW, "")
    hold = Hold.place(balance, 400, "req-1", 0, NOW)
    charge = request_charge(hold, balance, hold.settle(300, balance, NOW), NOW, "t")
    adjust = adjustment(balance, -200, "refund", "ops", "k-1", NOW)
    for entry, kind, amount, after in (
        (credit, EntryKind.TOPUP_CREDIT, 500, 1_500),
        (charge, EntryKind.REQUEST_CHARGE, -300, 1_200),
        (adjust, EntryKind.ADJUSTMENT, -200, 1_000),
    ):
        assert sum(p.amount for p in entry.postings) == 0
        assert (entry.kind, entry.amount, entry.balance_after) == (kind, amount, after)
    assert [p.ledger_account for p in charge.postings] == [
        "user:acct-1:credit",
        "system:revenue:credit",
    ]
    assert credit.postings[1].ledger_account == "system:topup_clearing:credit"
    assert adjust.postings[1].ledger_account == "system:adjustments:credit"


def test_an_unbalanced_or_mixed_bucket_entry_can_not_exist() -> None:
    def entry(*postings: Posting) -> JournalEntry:
        return JournalEntry(
            uuid.uuid4(), EntryKind.ADJUSTMENT, "acct-1", Bucket.CREDIT, "k", postings, NOW
        )

    with pytest.raises(ValueError, match="sum to zero"):
        entry(Posting("user:acct-1:credit", Bucket.CREDIT, 5), Posting("x", Bucket.CREDIT, -4))
    with pytest.raises(ValueError, match="mixes buckets"):
        entry(Posting("user:acct-1:credit", Bucket.CREDIT, 5), Posting("x", Bucket.ROUTED, -5))
    with pytest.raises(ValueError, match="two postings"):
        entry(Posting("user:acct-1:credit", Bucket.CREDIT, 0))


def test_a_negative_adjustment_never_takes_available_below_zero() -> None:
    balance = Balance("acct-1", Bucket.CREDIT, posted=1_000, held=600)
    with pytest.raises(DomainError) as caught:
        adjustment(balance, -401, "refund", "ops", "k-1", NOW)
    assert caught.value.reason is Reason.INSUFFICIENT_BALANCE
    assert adjustment(balance, -400, "refund", "ops", "k-2", NOW).balance_after == 600


@pytest.mark.parametrize(
    ("amount", "reason", "key", "field"),
    [(0, "r", "k", "amount_micros"), (5, " ", "k", "reason"), (5, "r", "", "idempotency_key")],
)
def test_an_adjustment_needs_an_amount_a_reason_and_a_key(
    amount: int, reason: str, key: str, field: str
) -> None:
    with pytest.raises(DomainError) as caught:
        adjustment(funded(10), amount, reason, "ops", key, NOW)
    assert caught.value.reason is Reason.INVALID_ARGUMENT
    assert caught.value.metadata == {"field": field}


def test_parts_take_from_what_is_held_and_leave_the_hold_open() -> None:
    balance = funded(1_000)
    hold = Hold.place(balance, 400, "run-1", 0, NOW)
    assert hold.capture_part(150, balance, NOW) == 850
    assert hold.capture_part(50, balance, NOW) == 800
    assert (hold.status, hold.captured, hold.remaining) == (HoldStatus.OPEN, 200, 200)
    assert (balance.posted, balance.held, balance.available) == (800, 200, 600)
    with pytest.raises(DomainError) as caught:
        hold.capture_part(201, balance, NOW)
    assert caught.value.reason is Reason.SETTLE_ABOVE_HOLD
    assert (hold.captured, balance.posted, balance.held) == (200, 800, 200)


def test_a_hold_with_parts_settles_and_releases_only_what_is_still_held() -> None:
    balance = funded(1_000)
    settled = Hold.place(balance, 400, "run-1", 0, NOW)
    settled.capture_part(100, balance, NOW)
    assert settled.settle(30, balance, NOW) == 870
    assert (settled.status, settled.captured) == (HoldStatus.SETTLED, 130)
    assert settled.is_replay_of_settle(30, settle_charge=30)
    assert not settled.is_replay_of_settle(130, settle_charge=30)
    released = Hold.place(balance, 300, "run-2", 0, NOW)
    released.capture_part(120, balance, NOW)
    assert released.release(balance, NOW)
    assert (released.status, released.captured) == (HoldStatus.RELEASED, 120)
    assert (balance.posted, balance.held) == (750, 0)


def test_an_expired_hold_keeps_its_parts_and_gives_the_rest_back() -> None:
    balance = funded(1_000)
    hold = Hold.place(balance, 400, "run-1", 60, NOW)
    hold.capture_part(100, balance, NOW)
    later = NOW + timedelta(seconds=61)
    with pytest.raises(DomainError) as caught:
        hold.capture_part(1, balance, later)
    assert caught.value.reason is Reason.HOLD_EXPIRED
    assert hold.expire(balance, later)
    assert (hold.captured, balance.posted, balance.held) == (100, 900, 0)


@pytest.mark.parametrize("amount", [MAX_AMOUNT_MICROS + 1, 2**63 - 1])
def test_an_amount_beyond_the_bound_is_refused_before_any_balance_moves(amount: int) -> None:
    balance = funded(2**62)
    for attempt in (
        lambda: Hold.place(balance, amount, "req-1", 0, NOW),
        lambda: adjustment(balance, amount, "why", "op", "k-1", NOW),
        lambda: adjustment(balance, -amount, "why", "op", "k-2", NOW),
    ):
        with pytest.raises(DomainError) as refused:
            attempt()
        assert refused.value.reason is Reason.INVALID_ARGUMENT
    assert (balance.posted, balance.held) == (2**62, 0)
