"""Runs as the gateway sees them: the budget asked for (an amount, or an estimate of
N requests of so many tokens). No I/O (their JSON is in services/gateway/presenting.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenforge.errors import DomainError, Reason
from tokenforge.money import (
    MAX_AMOUNT_MICROS,
    MICROS_PER_UNIT,
    Bucket,
    MoneyError,
    Price,
    parse_amount,
)

MAX_ESTIMATE_REQUESTS = 10_000
# A request's tokens fit a 32-bit integer (every wire field that carries them does).
MAX_ESTIMATE_TOKENS = 2**31 - 1


@dataclass(frozen=True)
class Estimate:
    """N requests of `prompt_tokens` in and at most `max_tokens` out each."""

    requests: int
    prompt_tokens: int
    max_tokens: int

    def per_request(self, price: Price) -> int:
        return price.worst_case(self.prompt_tokens, self.max_tokens).micros

    def budget(self, price: Price) -> int:
        return self.requests * self.per_request(price)


def parse_estimate(raw: Any) -> Estimate:
    if not isinstance(raw, dict):
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "`estimate` is an object: {requests, prompt_tokens, max_tokens}.",
            {"param": "estimate"},
        )
    values: dict[str, int] = {}
    for name in ("requests", "prompt_tokens", "max_tokens"):
        value = raw.get(name)
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not 1 <= value <= MAX_ESTIMATE_TOKENS
        ):
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                f"`estimate.{name}` must be a whole number from 1 to {MAX_ESTIMATE_TOKENS}.",
                {"param": f"estimate.{name}"},
            )
        values[name] = value
    if values["requests"] > MAX_ESTIMATE_REQUESTS:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            f"A run estimate covers at most {MAX_ESTIMATE_REQUESTS} requests.",
            {"param": "estimate.requests"},
        )
    return Estimate(values["requests"], values["prompt_tokens"], values["max_tokens"])


def parse_budget(raw: Any, bucket: Bucket | None = None) -> int:
    """A decimal string in the bucket's unit ("2.5" = 2.5 CR); never a float; at most
    MAX_AMOUNT_MICROS."""
    unit = f" in {bucket.symbol}" if bucket is not None else ""
    if not isinstance(raw, str):
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            f'`budget` is a decimal string{unit}, e.g. "2.5".',
            {"param": "budget"},
        )
    try:
        micros = parse_amount(raw)
    except (MoneyError, ValueError):
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            f'`budget` {shown!r} is not an amount: use a decimal string like "2.5" '
            f"(at most 6 decimals, at most {MAX_AMOUNT_MICROS // MICROS_PER_UNIT:,}).",
            {"param": "budget"},
        ) from None
    if micros <= 0:
        raise DomainError(
            Reason.INVALID_ARGUMENT, "`budget` must be above zero.", {"param": "budget"}
        )
    return micros
