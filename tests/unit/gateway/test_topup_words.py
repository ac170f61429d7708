"""A top-up tells the truth about its moment (docs/GLOSSARY.md, "Top-ups"): paid is
"being credited" until its ledger row exists, then "credited"; a payment after the
order expired says so and that it is being reviewed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2

from services.gateway.presenting import topup_json
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.payments.v1 import payments_pb2 as pb

CREATED = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def stamp(when: datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(when)
    return value


def order(provider: str, *moves: tuple[int, int, timedelta]) -> pb.TopUp:
    top_up = pb.TopUp(
        order_id="ord_1",
        bucket=common_pb2.BUCKET_CREDIT,
        provider=provider,
        paid_amount_minor=1000,
        currency="USD",
        received_micros=10_000_000,
        status=moves[-1][1] if moves else pb.TOP_UP_STATUS_PENDING,
        created_at=stamp(CREATED),
        expires_at=stamp(CREATED + timedelta(minutes=15)),
    )
    for before, after, at in moves:
        top_up.transitions.add(from_status=before, to_status=after, at=stamp(CREATED + at))
    return top_up


PAID = (pb.TOP_UP_STATUS_PENDING, pb.TOP_UP_STATUS_SUCCEEDED, timedelta(minutes=2))


def test_a_paid_order_is_being_credited_until_its_ledger_row_exists() -> None:
    before = topup_json(order("sandbox", PAID), ledger_entry_id=None)
    after = topup_json(order("sandbox", PAID), ledger_entry_id="e-1")

    assert (before["state"], before["state_text"]) == (
        "paid",
        "Paid, being credited: 10 CR is being added to Credit",
    )
    assert (after["state"], after["state_text"]) == ("credited", "Credited: 10 CR added to Credit")
    assert before["status"] == after["status"] == "succeeded"  # kept one release


def test_a_payment_after_the_order_expired_says_so_and_that_it_is_reviewed() -> None:
    expired = (pb.TOP_UP_STATUS_PENDING, pb.TOP_UP_STATUS_EXPIRED, timedelta(minutes=15))
    late = (pb.TOP_UP_STATUS_EXPIRED, pb.TOP_UP_STATUS_AWAITING_REVIEW, timedelta(minutes=20))
    shown = topup_json(order("sandbox", expired, late))

    assert shown["state"] == "awaiting_review" and shown["late"]
    assert shown["state_text"] == (
        "Waiting for review: your payment arrived after the order expired; we are checking "
        "it before adding 10 CR to Credit"
    )


def test_a_transfer_reviewed_in_time_is_not_called_late() -> None:
    proof = (pb.TOP_UP_STATUS_PENDING, pb.TOP_UP_STATUS_AWAITING_REVIEW, timedelta(minutes=5))
    shown = topup_json(order("manual_transfer", proof))

    assert not shown["late"]
    assert shown["state_text"] == "Waiting for review: we received your transfer details"
