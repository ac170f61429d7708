"""Runs as the gateway sees them: the budget asked for (an amount, or an estimate of
N requests of so many tokens), and the aggregate receipt as JSON. No I/O."""

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


RUN_STATUS_NAMES = {1: "open", 2: "closing", 3: "closed", 4: "expired"}


def _amount(micros: int, bucket: Bucket) -> dict[str, Any]:
    from tokenforge.money import format_amount

    return {"micros": micros, "display": format_amount(micros, bucket)}


def run_json(run: Any) -> dict[str, Any]:
    """A usage_pb2.Run as the user API shows it."""
    from tokenforge.wire import bucket_from_proto

    bucket = bucket_from_proto(run.bucket)
    remaining = run.budget_micros - run.reserved_micros - run.spent_micros
    return {
        "id": run.run_id,
        "object": "run",
        "status": RUN_STATUS_NAMES.get(run.status, "unspecified"),
        "model": run.model or None,
        "bucket": bucket.value,
        "bucket_label": bucket.label,
        "budget": _amount(run.budget_micros, bucket),
        "spent": _amount(run.spent_micros, bucket),
        "reserved": _amount(run.reserved_micros, bucket),
        "remaining": _amount(max(remaining, 0), bucket),
        "requests": run.requests,
        "hold_id": run.hold_id,
        "ledger_entry_id": run.entry_id or None,
        "created_at": run.created_at.ToDatetime().isoformat() + "Z",
        "expires_at": run.expires_at.ToDatetime().isoformat() + "Z",
    }


def run_receipt_json(receipt: Any) -> dict[str, Any]:
    """A usage_pb2.RunReceipt: lines, totals per model, totals. Each charged line has
    its own ledger row (its part of the run's hold); the lines sum to the total.
    `ledger_entry_id` is only set for runs closed with one aggregate row (before
    per-request rows)."""
    from tokenforge.wire import bucket_from_proto

    bucket = bucket_from_proto(receipt.run.bucket)
    return {
        "object": "run.receipt",
        "run": run_json(receipt.run),
        "lines": [
            {
                "request_id": line.request_id,
                "model": line.selected_model,
                "upstream_model": line.upstream_model,
                "status": {1: "succeeded", 2: "partial", 3: "failed", 4: "rejected"}.get(
                    line.status, "unspecified"
                ),
                "prompt_tokens": line.prompt_tokens,
                "cached_tokens": line.cached_tokens,
                "completion_tokens": line.completion_tokens,
                "charge": _amount(line.charge_micros, bucket),
                "ledger_entry_id": line.entry_id or None,
                "receipt_url": f"/v1/usage/{line.request_id}",
            }
            for line in receipt.lines
        ],
        "models": [
            {
                "model": m.model,
                "requests": m.requests,
                "prompt_tokens": m.prompt_tokens,
                "cached_tokens": m.cached_tokens,
                "completion_tokens": m.completion_tokens,
                "charge": _amount(m.charge_micros, bucket),
            }
            for m in receipt.models
        ],
        "totals": {
            "requests": receipt.requests,
            "prompt_tokens": receipt.prompt_tokens,
            "cached_tokens": receipt.cached_tokens,
            "completion_tokens": receipt.completion_tokens,
            "charge": _amount(receipt.charge_micros, bucket),
            "duration_ms": receipt.duration_ms,
        },
        "ledger_entry_id": receipt.run.entry_id or None,
    }
