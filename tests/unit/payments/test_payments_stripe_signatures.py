"""Stripe webhook verification, without a network: Stripe's signing scheme, secrets
in rotation, and a +/-300 s window checked in both directions."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from services.payments.adapters.stripe_checkout import parse_event, verify_signature
from tokenforge.errors import DomainError, Reason

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
BODY = (
    b'{"id":"evt_1","type":"checkout.session.completed",'
    b'"data":{"object":{"id":"cs_1","metadata":{"order_id":"o-1"}}}}'
)


def signed(body: bytes, secret: str, at: datetime = NOW) -> str:
    t = int(at.timestamp())
    return (
        f"t={t},v1={hmac.new(secret.encode(), f'{t}.'.encode() + body, hashlib.sha256).hexdigest()}"
    )


def test_a_body_signed_with_any_configured_secret_passes() -> None:
    verify_signature(BODY, signed(BODY, "whsec_b"), ("whsec_a", "whsec_b"), NOW)


@pytest.mark.parametrize(
    ("header", "words"),
    [
        (signed(BODY, "whsec_x"), "matches none"),
        (signed(BODY + b" ", "whsec_a"), "matches none"),
        (signed(BODY, "whsec_a", NOW - timedelta(seconds=301)), "301 s old"),
        (signed(BODY, "whsec_a", NOW + timedelta(seconds=301)), "301 s in the future"),
        ("v1=abc", "no timestamp"),
        ("", "no Stripe-Signature"),
    ],
    ids=["forged", "other-body", "stale", "future", "no-timestamp", "missing"],
)
def test_a_bad_signature_or_timestamp_is_refused_saying_why(header: str, words: str) -> None:
    with pytest.raises(DomainError) as refused:
        verify_signature(BODY, header, ("whsec_a",), NOW)
    assert refused.value.reason is Reason.INVALID_ARGUMENT
    assert words in refused.value.message


def test_timestamps_at_the_edge_of_the_window_pass_both_ways() -> None:
    for skew in (-300, 300):
        at = NOW + timedelta(seconds=skew)
        verify_signature(BODY, signed(BODY, "whsec_a", at), ("whsec_a",), NOW)


def test_an_event_names_its_id_type_session_and_order() -> None:
    event = parse_event(BODY)
    assert (event.event_id, event.type, event.object_id, event.order_id) == (
        "evt_1",
        "checkout.session.completed",
        "cs_1",
        "o-1",
    )
