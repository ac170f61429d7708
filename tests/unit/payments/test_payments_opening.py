"""Opening an order: providers, rates, caps and expiry, all fixed at creation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.payments.domain.model import Order, TopUpStatus
from services.payments.domain.orders import open_order
from services.payments.domain.providers import MAX_PAID_AMOUNT_MINOR, provider_named
from services.payments.domain.rates import received_micros
from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def open_(**overrides: Any) -> Order:
    args: dict[str, Any] = {
        "account_id": "acct-1",
        "bucket": Bucket.ROUTED,
        "provider": "sandbox",
        "paid_amount_minor": 1250,
        "currency": "USD",
        "idempotency_key": "k1",
        "now": NOW,
    }
    args.update(overrides)
    return open_order(**args)


@pytest.mark.parametrize("bucket", [Bucket.CREDIT, Bucket.ROUTED])
def test_one_dollar_buys_one_unit_of_either_bucket(bucket: Bucket) -> None:
    assert received_micros(bucket, "USD", 100) == (1_000_000, 10_000)
    assert received_micros(bucket, "USD", 1) == (10_000, 10_000)


def test_new_order_is_pending_with_its_bucket_rate_and_expiry_fixed() -> None:
    order = open_(now=NOW)

    assert order.status is TopUpStatus.PENDING
    assert order.bucket is Bucket.ROUTED
    assert order.received_micros == 12_500_000
    assert order.rate_micros_per_minor == 10_000
    assert order.expires_at == NOW + timedelta(minutes=15)


def test_expiry_follows_the_configured_ttl() -> None:
    order = open_(ttl=timedelta(seconds=30))

    assert order.expires_at == NOW + timedelta(seconds=30)


def test_currency_defaults_to_the_providers_and_is_normalised() -> None:
    assert open_(currency="").currency == "USD"
    assert open_(currency="usd").currency == "USD"


@pytest.mark.parametrize("amount", [0, -1, MAX_PAID_AMOUNT_MINOR + 1])
def test_amount_outside_the_limits_is_refused(amount: int) -> None:
    with pytest.raises(DomainError) as caught:
        open_(paid_amount_minor=amount)

    assert caught.value.reason is Reason.INVALID_ARGUMENT
    assert caught.value.metadata == {"param": "paid_amount_minor"}
    assert str(MAX_PAID_AMOUNT_MINOR) in caught.value.message


def test_largest_allowed_amount_is_accepted() -> None:
    order = open_(paid_amount_minor=MAX_PAID_AMOUNT_MINOR)

    assert order.received_micros == MAX_PAID_AMOUNT_MINOR * 10_000


def test_unknown_provider_is_not_allowed_and_the_message_lists_the_known_ones() -> None:
    with pytest.raises(DomainError) as caught:
        open_(provider="paypal")

    assert caught.value.reason is Reason.PROVIDER_NOT_ALLOWED
    assert "sandbox" in caught.value.message


def test_currency_the_provider_does_not_take_is_refused() -> None:
    with pytest.raises(DomainError) as caught:
        open_(currency="EUR")

    assert caught.value.reason is Reason.INVALID_ARGUMENT
    assert "USD" in caught.value.message


def test_sandbox_funds_both_buckets_and_can_be_simulated() -> None:
    sandbox = provider_named("sandbox")

    assert sandbox.buckets == {Bucket.CREDIT, Bucket.ROUTED}
    assert sandbox.simulated and not sandbox.needs_review


def test_account_is_required() -> None:
    with pytest.raises(DomainError) as caught:
        open_(account_id="")

    assert caught.value.reason is Reason.INVALID_ARGUMENT
