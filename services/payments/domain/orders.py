"""Opening an order: validation, the rate, the expiry time, all fixed at creation."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket

from .model import Order, TopUpStatus
from .providers import Provider, provider_named
from .rates import received_micros


@dataclass(frozen=True)
class OrderTtls:
    """How long pending orders wait for payment: per provider (`per_provider`), else
    one for all (`everyone`), else the provider's own (`Provider.order_ttl`)."""

    per_provider: Mapping[str, timedelta] = field(default_factory=dict)
    everyone: timedelta | None = None

    def for_provider(self, provider: Provider) -> timedelta:
        return self.per_provider.get(provider.name) or self.everyone or provider.order_ttl


def open_order(
    *,
    account_id: str,
    bucket: Bucket,
    provider: str,
    paid_amount_minor: int,
    currency: str,
    idempotency_key: str | None,
    now: datetime,
    ttl: timedelta | OrderTtls | None = None,
) -> Order:
    """A new pending order, or a refusal that says what to change."""
    if not account_id:
        raise DomainError(
            Reason.INVALID_ARGUMENT, "account_id is required.", {"param": "account_id"}
        )
    chosen = provider_named(provider)
    currency = (currency or chosen.default_currency).upper()
    chosen.check_order(bucket, currency, paid_amount_minor)
    micros, rate = received_micros(bucket, currency, paid_amount_minor)
    if not isinstance(ttl, timedelta):
        ttl = (ttl or OrderTtls()).for_provider(chosen)
    return Order(
        order_id=str(uuid.uuid4()),
        account_id=account_id,
        bucket=bucket,
        provider=chosen.name,
        paid_amount_minor=paid_amount_minor,
        currency=currency,
        received_micros=micros,
        rate_micros_per_minor=rate,
        status=TopUpStatus.PENDING,
        created_at=now,
        expires_at=now + ttl,
        idempotency_key=idempotency_key or None,
    )
