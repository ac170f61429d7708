"""The top-up order state machine (P1): every allowed and every refused move."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.payments.domain.model import Order, TopUpStatus
from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket

S = TopUpStatus
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

# Written out by hand, not read from the code under test.
EXPECTED_ALLOWED = {
    (S.PENDING, S.SUCCEEDED),
    (S.PENDING, S.FAILED),
    (S.PENDING, S.EXPIRED),
    (S.PENDING, S.CANCELED),
    (S.PENDING, S.AWAITING_REVIEW),
    (S.AWAITING_REVIEW, S.SUCCEEDED),
    (S.AWAITING_REVIEW, S.REJECTED),
    (S.EXPIRED, S.AWAITING_REVIEW),
}
ALL_PAIRS = list(itertools.product(S, S))
REFUSED = [p for p in ALL_PAIRS if p not in EXPECTED_ALLOWED]
TERMINAL = [S.SUCCEEDED, S.FAILED, S.REJECTED, S.CANCELED]


def order_in(status: TopUpStatus) -> Order:
    return Order(
        order_id="9f1d2c1e-0000-4000-8000-000000000001",
        account_id="acct-1",
        bucket=Bucket.CREDIT,
        provider="sandbox",
        paid_amount_minor=1000,
        currency="USD",
        received_micros=10_000_000,
        rate_micros_per_minor=10_000,
        status=status,
        created_at=T0,
        expires_at=T0 + timedelta(minutes=15),
    )


@pytest.mark.parametrize(("from_status", "to_status"), sorted(EXPECTED_ALLOWED))
def test_allowed_move_writes_one_transition_and_one_event(
    from_status: TopUpStatus, to_status: TopUpStatus
) -> None:
    order = order_in(from_status)
    order.move_to(to_status, reason="because", actor="tester", at=T0)

    assert order.status is to_status
    assert order.version == 1
    [transition] = order.transitions
    assert (transition.from_status, transition.to_status) == (from_status, to_status)
    assert (transition.reason, transition.actor, transition.at) == ("because", "tester", T0)
    [event] = order.events
    assert event.status is to_status
    assert event.subject_event == to_status.value
    assert (event.order_id, event.bucket, event.received_micros) == (
        order.order_id,
        Bucket.CREDIT,
        10_000_000,
    )


@pytest.mark.parametrize(("from_status", "to_status"), REFUSED)
def test_refused_move_raises_invalid_transition_and_changes_nothing(
    from_status: TopUpStatus, to_status: TopUpStatus
) -> None:
    order = order_in(from_status)

    with pytest.raises(DomainError) as caught:
        order.move_to(to_status, reason="because", actor="tester", at=T0)

    assert caught.value.reason is Reason.INVALID_TRANSITION
    assert caught.value.metadata == {
        "order_id": order.order_id,
        "status": from_status.value,
        "requested_status": to_status.value,
    }
    # The message names the current state in plain words and what to do next.
    assert from_status.plain_words in caught.value.message
    assert "top-up" in caught.value.message.lower()
    assert order.status is from_status
    assert order.transitions == [] and order.events == [] and order.version == 0


@given(
    start=st.sampled_from(TERMINAL),
    attempts=st.lists(st.sampled_from(list(S)), min_size=1, max_size=10),
)
def test_terminal_states_stay_terminal_whatever_is_tried(
    start: TopUpStatus, attempts: list[TopUpStatus]
) -> None:
    order = order_in(start)
    for target in attempts:
        try:
            order.move_to(target, reason="try", actor="tester", at=T0)
        except DomainError as error:
            assert error.reason is Reason.INVALID_TRANSITION
    assert order.status is start
    assert order.events == []


@given(
    moves=st.lists(st.sampled_from(["pay", "fail", "expire", "pay_late"]), min_size=1, max_size=12)
)
def test_any_sequence_of_outcomes_credits_at_most_once(moves: list[str]) -> None:
    order = order_in(S.PENDING)
    for move in moves:
        try:
            if move == "pay":
                order.confirm_payment(at=T0, actor="t")
            elif move == "pay_late":
                order.confirm_payment(at=T0 + timedelta(hours=1), actor="t")
            elif move == "fail":
                order.fail(at=T0, actor="t")
            else:
                order.expire(at=T0, actor="t")
        except DomainError as error:
            assert error.reason is Reason.INVALID_TRANSITION
    statuses = [e.status for e in order.events]
    assert statuses.count(S.SUCCEEDED) <= 1
    if S.EXPIRED in statuses or S.FAILED in statuses:
        assert S.SUCCEEDED not in statuses
    for t in order.transitions:
        assert (t.from_status, t.to_status) in EXPECTED_ALLOWED


def test_payment_in_time_succeeds() -> None:
    order = order_in(S.PENDING)

    assert order.confirm_payment(at=T0 + timedelta(minutes=14), actor="sandbox")

    assert order.status is S.SUCCEEDED
    assert [e.status for e in order.events] == [S.SUCCEEDED]


def test_payment_after_expiry_time_goes_to_review_even_before_the_sweeper_ran() -> None:
    order = order_in(S.PENDING)

    assert order.confirm_payment(at=T0 + timedelta(minutes=15), actor="sandbox")

    assert order.status is S.AWAITING_REVIEW
    assert [e.status for e in order.events] == [S.AWAITING_REVIEW]
    assert "after the order expired" in order.transitions[0].reason


def test_payment_for_an_expired_order_goes_to_review_never_succeeds() -> None:
    order = order_in(S.EXPIRED)

    assert order.confirm_payment(at=T0 + timedelta(minutes=1), actor="sandbox")

    assert order.status is S.AWAITING_REVIEW
    assert S.SUCCEEDED not in [e.status for e in order.events]


def test_payment_from_a_provider_that_needs_review_waits_for_an_operator() -> None:
    order = order_in(S.PENDING)

    order.confirm_payment(at=T0, actor="bank", needs_review=True)

    assert order.status is S.AWAITING_REVIEW


@pytest.mark.parametrize("status", [S.SUCCEEDED, S.AWAITING_REVIEW])
def test_replayed_payment_changes_nothing(status: TopUpStatus) -> None:
    order = order_in(status)

    assert order.confirm_payment(at=T0, actor="sandbox") is False

    assert order.status is status and order.events == [] and order.version == 0


def test_replayed_failure_and_expiry_change_nothing() -> None:
    failed, expired = order_in(S.FAILED), order_in(S.EXPIRED)

    assert failed.fail(at=T0, actor="sandbox") is False
    assert expired.expire(at=T0, actor="sweeper") is False

    assert failed.events == [] and expired.events == []


@pytest.mark.parametrize("status", [S.FAILED, S.CANCELED, S.REJECTED])
def test_payment_for_a_closed_order_is_refused_with_what_to_do(status: TopUpStatus) -> None:
    order = order_in(status)

    with pytest.raises(DomainError) as caught:
        order.confirm_payment(at=T0, actor="sandbox")

    assert caught.value.reason is Reason.INVALID_TRANSITION
    assert "Create a new top-up" in caught.value.message


def test_failing_a_paid_order_is_refused() -> None:
    order = order_in(S.SUCCEEDED)

    with pytest.raises(DomainError) as caught:
        order.fail(at=T0, actor="sandbox")

    assert caught.value.reason is Reason.INVALID_TRANSITION
    assert "paid and credited" in caught.value.message
    assert order.status is S.SUCCEEDED
