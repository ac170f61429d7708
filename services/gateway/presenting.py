"""How money reads for a person: receipts, balances, ledger rows and top-ups in the
glossary's words (see GLOSSARY.md). Plain Python over the wire messages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tokenforge.generated.payments.v1 import payments_pb2
from tokenforge.generated.routing.v1 import routing_pb2
from tokenforge.generated.usage.v1 import usage_pb2
from tokenforge.generated.wallet.v1 import wallet_pb2
from tokenforge.money import MAX_AMOUNT_MICROS, Bucket, Money, decimal_text, format_amount
from tokenforge.vocabulary import ENTRY_KINDS, TOPUP_STATES, amount_json
from tokenforge.wire import bucket_from_proto, enum_word, iso, route_kind_from_proto

RECEIPT_STATUS = {
    usage_pb2.RECEIPT_STATUS_SUCCEEDED: ("succeeded", "Succeeded"),
    usage_pb2.RECEIPT_STATUS_PARTIAL: ("partial", "Stopped early: charged for what was generated"),
    usage_pb2.RECEIPT_STATUS_FAILED: ("failed", "Failed: see the charge policy"),
    usage_pb2.RECEIPT_STATUS_REJECTED: ("rejected", "Not run: nothing charged"),
}

ENTRY_KIND = {
    wallet_pb2.ENTRY_KIND_TOPUP_CREDIT: "topup_credit",
    wallet_pb2.ENTRY_KIND_REQUEST_CHARGE: "request_charge",
    wallet_pb2.ENTRY_KIND_ADJUSTMENT: "adjustment",
    wallet_pb2.ENTRY_KIND_REVERSAL: "reversal",
}

TOPUP_STATUS = {
    payments_pb2.TOP_UP_STATUS_PENDING: "pending",
    payments_pb2.TOP_UP_STATUS_AWAITING_REVIEW: "awaiting_review",
    payments_pb2.TOP_UP_STATUS_SUCCEEDED: "succeeded",
    payments_pb2.TOP_UP_STATUS_FAILED: "failed",
    payments_pb2.TOP_UP_STATUS_EXPIRED: "expired",
    payments_pb2.TOP_UP_STATUS_REJECTED: "rejected",
    payments_pb2.TOP_UP_STATUS_CANCELED: "canceled",
}


def amount(micros: int, bucket: Bucket) -> dict[str, Any]:
    return amount_json(micros, bucket)


def balance_json(b: wallet_pb2.BucketBalance) -> dict[str, Any]:
    bucket = bucket_from_proto(b.bucket)
    return {
        "bucket": bucket.value,
        "label": bucket.label,
        "symbol": bucket.symbol,
        "pays_for": bucket.pays_for,
        "posted": amount(b.posted_micros, bucket),
        "held": amount(b.held_micros, bucket),
        "available": amount(b.available_micros, bucket),
        # `held` split (docs/GLOSSARY.md, "Held money"): they sum to `held`.
        "held_for_requests": amount(b.held_for_requests_micros, bucket),
        "set_aside": amount(b.set_aside_micros, bucket),
    }


def ledger_entry_json(e: wallet_pb2.LedgerEntry) -> dict[str, Any]:
    bucket = bucket_from_proto(e.bucket)
    kind = ENTRY_KIND.get(e.kind, "unspecified")
    row: dict[str, Any] = {
        "entry_id": e.entry_id,
        "kind": kind,
        "kind_text": ENTRY_KINDS[kind].reads if kind in ENTRY_KINDS else kind,
        "bucket": bucket.value,
        "change": amount(e.amount_micros, bucket),
        # Kept one release (docs/GLOSSARY.md, "Wire changes"): `change`.
        "amount": amount(e.amount_micros, bucket),
        "balance_after": amount(e.balance_after_micros, bucket),
        "created_at": iso(e.created_at),
        "trace_id": e.trace_id or None,
    }
    if e.request_id:
        row["request_id"] = e.request_id
        row["receipt_url"] = f"/v1/usage/{e.request_id}"
    if e.order_id:
        row["order_id"] = e.order_id
        row["topup_url"] = f"/v1/topups/{e.order_id}"
    if e.kind == wallet_pb2.ENTRY_KIND_REQUEST_CHARGE:
        row["charge"] = amount(-e.amount_micros, bucket)
    if e.kind == wallet_pb2.ENTRY_KIND_TOPUP_CREDIT:
        row["received_balance"] = amount(e.amount_micros, bucket)
    if e.reverses_entry_id:
        row["reverses_entry_id"] = e.reverses_entry_id
    if e.reason:
        row["reason"] = e.reason
    return row


def receipt_json(r: usage_pb2.Receipt) -> dict[str, Any]:
    """The one shape of a receipt: in the answer (`receipt`, the stream's last chunk)
    and at GET /v1/usage/{request_id} alike."""
    bucket = bucket_from_proto(r.bucket)
    status, words = RECEIPT_STATUS.get(r.status, ("unspecified", ""))
    return {
        "request_id": r.request_id,
        "status": status,
        "status_text": words,
        "selected_model": r.selected_model,
        "upstream_model": r.upstream_model,
        "route": route_kind_from_proto(r.route_kind),
        "bucket": bucket.value,
        "bucket_label": bucket.label,
        "attempts": [
            {"channel": a.channel_id, "outcome": a.outcome, "latency_ms": a.latency_ms}
            for a in r.attempts
        ],
        "fallback_used": r.fallback_used,
        "route_attempts": route_attempts_json(r),
        "tokens": {
            "prompt": r.prompt_tokens,
            "cached": r.cached_tokens,
            # Parts of `prompt` (written to the upstream's cache) and of `completion`
            # (reasoning, charged as output).
            "cache_write": r.cache_write_tokens,
            "completion": r.completion_tokens,
            "reasoning": r.reasoning_tokens,
            "reported_by_upstream": r.tokens_reported,
        },
        "prices": {
            "input_per_million": amount(r.prices.input_per_million_micros, bucket),
            "cached_input_per_million": amount(r.prices.cached_input_per_million_micros, bucket),
            "cache_write_per_million": amount(r.prices.cache_write_per_million_micros, bucket),
            "output_per_million": amount(r.prices.output_per_million_micros, bucket),
            "reasoning_per_million": amount(r.prices.output_per_million_micros, bucket),
            "request_fee": amount(r.prices.request_fee_micros, bucket),
        },
        "charge": amount(r.charge_micros, bucket),
        "hold_id": r.hold_id,
        "ledger_entry_id": r.entry_id or None,
        "ledger_url": f"/v1/wallet/ledger?request_id={r.request_id}",
        # The top-ups that paid it, first in, first out (derived from its ledger row,
        # which may not exist yet when the answer is sent).
        "paid_from_url": f"/v1/usage/{r.request_id}/paid-from",
        "receipt_url": f"/v1/usage/{r.request_id}",
        "trace_id": r.trace_id,
        "catalog_version": r.catalog_version,
        "run_id": r.run_id or None,
        # The API format the client spoke; "openai" for Chat Completions and Embeddings.
        "client_format": r.client_format or "openai",
        # The protocol of the channel that answered (None when no channel did).
        "channel_protocol": r.channel_protocol or None,
        "error": r.error_code or None,
        "settlement_rule": r.settlement_rule or None,
        "started_at": iso(r.started_at),
        "finished_at": iso(r.finished_at),
    }


def cost_fields(charge: Money) -> dict[str, Any]:
    """`usage.cost` as a JSON number (what OpenRouter sends and clients read), with the
    exact integer `cost_micros` beside it and the unit."""
    return {
        "cost": cost_number(charge.micros),
        "cost_micros": charge.micros,
        "cost_currency": charge.bucket.symbol,
        "cost_bucket": charge.bucket.value,
    }


def cost_number(micros: int) -> float:
    """The JSON number for an amount, made from its exact decimal text at the last step
    before serialization (nothing computes with it). Exact: every amount within
    MAX_AMOUNT_MICROS has at most 15 significant digits, so the nearest double's
    shortest text (what orjson writes) is that decimal again: parsing the number back
    gives micros / 10**6 exactly (docs/ARCHITECTURE.md, "Numbers where clients expect
    numbers"; tests/unit/gateway/test_cost_number.py)."""
    if abs(micros) > MAX_AMOUNT_MICROS:
        raise ValueError(f"{micros} micro-units is beyond MAX_AMOUNT_MICROS")
    return float(decimal_text(micros))


def receipt_headers(receipt: usage_pb2.Receipt, final: bool = True) -> dict[str, str]:
    """Route and bucket are known before the first byte; the charge only at the end."""
    bucket = bucket_from_proto(receipt.bucket)
    headers = {
        "x-tokenforge-route": route_kind_from_proto(receipt.route_kind),
        "x-tokenforge-bucket": bucket.value,
        "x-tokenforge-upstream-model": receipt.upstream_model,
        "x-tokenforge-receipt": f"/v1/usage/{receipt.request_id}",
    }
    left = [a for a in receipt.route_attempts if a.outcome == "fell_back"]
    if left:
        # The route (and bucket) that paid is the one above; this names the way here.
        path = [route_kind_from_proto(a.route_kind) for a in left]
        headers["x-tokenforge-fallback-route"] = "->".join(
            [*path, route_kind_from_proto(receipt.route_kind)]
        )
    if final:
        headers["x-tokenforge-charge"] = format_amount(receipt.charge_micros, bucket)
        headers["x-tokenforge-charge-micros"] = str(receipt.charge_micros)
    return headers


def route_attempts_json(r: usage_pb2.Receipt) -> list[dict[str, Any]]:
    """Every route the request was tried on when it fell back to another route (empty
    when it stayed on its route); the last one paid."""
    rows = []
    for a in r.route_attempts:
        bucket = bucket_from_proto(a.bucket)
        rows.append(
            {
                "route": route_kind_from_proto(a.route_kind),
                "bucket": bucket.value,
                "bucket_label": bucket.label,
                "upstream_model": a.upstream_model,
                "prices": {
                    "input_per_million": amount(a.prices.input_per_million_micros, bucket),
                    "output_per_million": amount(a.prices.output_per_million_micros, bucket),
                },
                "hold_id": a.hold_id or None,
                "outcome": a.outcome,
                "channel_attempts": a.channel_attempts,
            }
        )
    return rows


def topup_state(t: payments_pb2.TopUp, ledger_entry_id: str | None) -> str:
    """The order's state as the user reads it (tokenforge.vocabulary.TOPUP_STATES): a
    paid order is `paid` until its ledger row exists, then `credited`."""
    status = TOPUP_STATUS.get(t.status, "unspecified")
    if status == "succeeded":
        return "credited" if ledger_entry_id else "paid"
    return status


def arrived_late(t: payments_pb2.TopUp) -> bool:
    """Whether the order went to review because its payment came after it expired."""
    expires = t.expires_at.ToDatetime(tzinfo=UTC)
    return any(
        TOPUP_STATUS.get(x.to_status) == "awaiting_review"
        and (TOPUP_STATUS.get(x.from_status) == "expired" or x.at.ToDatetime(tzinfo=UTC) >= expires)
        for x in t.transitions
    )


def topup_status_text(
    t: payments_pb2.TopUp, now: datetime | None = None, ledger_entry_id: str | None = None
) -> str:
    bucket = bucket_from_proto(t.bucket)
    state = topup_state(t, ledger_entry_id)
    words = TOPUP_STATES[state].reads if state in TOPUP_STATES else state
    if state == "pending":
        now = now or datetime.now(UTC)
        left_s = max(int((t.expires_at.ToDatetime(tzinfo=UTC) - now).total_seconds()), 0)
        left = (
            f"{left_s // 3600} h {left_s % 3600 // 60} min"
            if left_s >= 3600
            else (f"{left_s // 60} min")
        )
        if t.provider == "manual_transfer":
            return f"{words} (expires in {left}): send the bank transfer, then submit its reference"
        return f"{words} (expires in {left})"
    received = format_amount(t.received_micros, bucket)
    rejected = f"{words}: no balance was added"
    if state == "rejected":
        reasons = [x.reason for x in t.transitions if TOPUP_STATUS.get(x.to_status) == "rejected"]
        if reasons:
            rejected += f" ({reasons[-1].removeprefix('rejected: ')})"
    review = f"{words}: we received your transfer details"
    if arrived_late(t):
        review = (
            f"{words}: your payment arrived after the order expired; we are checking it "
            f"before adding {received} to {bucket.label}"
        )
    elif t.provider != "manual_transfer":
        review = f"{words}: we received your payment and are checking it"
    return {
        "awaiting_review": review,
        "paid": f"{words}: {received} is being added to {bucket.label}",
        "credited": f"{words}: {received} added to {bucket.label}",
        "expired": f"{words} before payment: nothing was charged, no balance added",
        "failed": f"{words}: no balance was added",
        "rejected": rejected,
        "canceled": f"{words}: no balance was added",
    }.get(state, state)


def topup_json(t: payments_pb2.TopUp, ledger_entry_id: str | None = None) -> dict[str, Any]:
    """One order as the user reads it; `ledger_entry_id` once the wallet credited it."""
    bucket = bucket_from_proto(t.bucket)
    return {
        "object": "topup",
        "order_id": t.order_id,
        # `state` and its text; `status` (the payments service's word, `succeeded`
        # where `state` says paid or credited) is kept one release.
        "state": topup_state(t, ledger_entry_id),
        "state_text": topup_status_text(t, ledger_entry_id=ledger_entry_id),
        "late": arrived_late(t),
        "status": TOPUP_STATUS.get(t.status, "unspecified"),
        "status_text": topup_status_text(t, ledger_entry_id=ledger_entry_id),
        "bucket": bucket.value,
        "bucket_label": bucket.label,
        "provider": t.provider,
        "topup_amount": {
            "minor": t.paid_amount_minor,
            "currency": t.currency,
            "display": f"{t.paid_amount_minor // 100}.{t.paid_amount_minor % 100:02d} {t.currency}",
        },
        "received_balance": amount(t.received_micros, bucket),
        "checkout_url": t.checkout_url or None,
        "transfer_reference": t.transfer_reference or None,
        "created_at": iso(t.created_at),
        "expires_at": iso(t.expires_at),
        "ledger_entry_id": ledger_entry_id,
        "ledger_url": f"/v1/wallet/ledger?order_id={t.order_id}",
        "uses_url": f"/v1/topups/{t.order_id}/uses",
        "transitions": [
            {
                "from": TOPUP_STATUS.get(x.from_status, "none"),
                "to": TOPUP_STATUS.get(x.to_status, "none"),
                "reason": x.reason,
                "actor": x.actor,
                "at": iso(x.at),
            }
            for x in t.transitions
        ],
    }


def model_json(m: routing_pb2.Model, created: int) -> dict[str, Any]:
    routes = []
    for r in m.routes:
        bucket = bucket_from_proto(r.bucket)
        routes.append(
            {
                "kind": route_kind_from_proto(r.kind),
                "bucket": bucket.value,
                "bucket_label": bucket.label,
                "symbol": bucket.symbol,
                "upstream_model": r.upstream_model,
                "prices": {
                    "input_per_million": amount(r.prices.input_per_million_micros, bucket),
                    "cached_input_per_million": amount(
                        r.prices.cached_input_per_million_micros, bucket
                    ),
                    "cache_write_per_million": amount(
                        r.prices.cache_write_per_million_micros, bucket
                    ),
                    "output_per_million": amount(r.prices.output_per_million_micros, bucket),
                    "request_fee": amount(r.prices.request_fee_micros, bucket),
                },
                "channels": [c.channel_id for c in r.channels],
                # The API each channel speaks (the gateway translates to it and back).
                "channel_protocols": [c.protocol or "openai_chat" for c in r.channels],
                # Each channel's circuit state, error rate and latency (routing's view).
                "health": [
                    {
                        "channel": h.channel_id,
                        "state": h.state,
                        "error_rate": h.error_rate_ppm / 1_000_000,
                        "latency_p50_ms": h.latency_p50_ms,
                        "latency_p95_ms": h.latency_p95_ms,
                        "last_failure": h.last_failure or None,
                    }
                    for h in r.health
                ],
            }
        )
    return {
        "id": m.id,
        "object": "model",
        "created": created,
        "owned_by": "tokenforge",
        "display_name": m.display_name,
        "context_length": m.context_length,
        "max_output_tokens": m.max_output_tokens,
        "routes": routes,
    }


def run_json(run: usage_pb2.Run) -> dict[str, Any]:
    """A usage_pb2.Run as the user API shows it."""
    bucket = bucket_from_proto(run.bucket)
    remaining = run.budget_micros - run.reserved_micros - run.spent_micros
    return {
        "id": run.run_id,
        "object": "run",
        "status": enum_word(usage_pb2.RunStatus, run.status),
        "model": run.model or None,
        "bucket": bucket.value,
        "bucket_label": bucket.label,
        "budget": amount(run.budget_micros, bucket),
        "charged": amount(run.spent_micros, bucket),
        "held": amount(run.reserved_micros, bucket),
        "left": amount(max(remaining, 0), bucket),
        # Kept one release (docs/GLOSSARY.md, "Wire changes"): charged, held, left.
        "spent": amount(run.spent_micros, bucket),
        "reserved": amount(run.reserved_micros, bucket),
        "remaining": amount(max(remaining, 0), bucket),
        "requests": run.requests,
        "hold_id": run.hold_id,
        "ledger_entry_id": run.entry_id or None,
        "created_at": run.created_at.ToDatetime().isoformat() + "Z",
        "expires_at": run.expires_at.ToDatetime().isoformat() + "Z",
    }


def run_receipt_json(receipt: usage_pb2.RunReceipt) -> dict[str, Any]:
    """A usage_pb2.RunReceipt: lines, totals per model, totals. Each charged line has
    its own ledger row (its part of the run's hold); the lines sum to the total.
    `ledger_entry_id` is only set for runs closed with one aggregate row (before
    per-request rows)."""
    bucket = bucket_from_proto(receipt.run.bucket)
    return {
        "object": "run.receipt",
        "run": run_json(receipt.run),
        "lines": [
            {
                "request_id": line.request_id,
                "model": line.selected_model,
                "upstream_model": line.upstream_model,
                "status": enum_word(usage_pb2.ReceiptStatus, line.status),
                "prompt_tokens": line.prompt_tokens,
                "cached_tokens": line.cached_tokens,
                "completion_tokens": line.completion_tokens,
                "charge": amount(line.charge_micros, bucket),
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
                "charge": amount(m.charge_micros, bucket),
            }
            for m in receipt.models
        ],
        "totals": {
            "requests": receipt.requests,
            "prompt_tokens": receipt.prompt_tokens,
            "cached_tokens": receipt.cached_tokens,
            "completion_tokens": receipt.completion_tokens,
            "charge": amount(receipt.charge_micros, bucket),
            "duration_ms": receipt.duration_ms,
        },
        "ledger_entry_id": receipt.run.entry_id or None,
    }


# What a top-up paid for, and what paid for a request (the wallet's first-in-first-out
# attribution, docs/GLOSSARY.md "What a top-up paid for").
def slice_json(s: wallet_pb2.CreditSlice, bucket: Bucket) -> dict[str, Any]:
    """One slice: the part `used` of one credit that paid one ledger row."""
    row: dict[str, Any] = {
        "entry_id": s.entry_id,
        "kind": ENTRY_KIND.get(s.kind, "unspecified"),
        "request_id": s.request_id or None,
        "receipt_url": f"/v1/usage/{s.request_id}" if s.request_id else None,
        "used": amount(s.used_micros, bucket),
        "created_at": iso(s.created_at),
        "credit_entry_id": s.credit_entry_id,
        "order_id": s.credit_order_id or None,
        "topup_url": f"/v1/topups/{s.credit_order_id}" if s.credit_order_id else None,
    }
    return row


def credit_use_json(answer: wallet_pb2.GetCreditUseResponse) -> dict[str, Any]:
    """A top-up's use: received, used, left, and one page of what it paid for."""
    bucket = bucket_from_proto(answer.credit.bucket)
    return {
        "object": "list",
        "order_id": answer.credit.order_id or None,
        "ledger_entry_id": answer.credit.entry_id,
        "bucket": bucket.value,
        "bucket_label": bucket.label,
        "received_balance": amount(answer.received_micros, bucket),
        "used": amount(answer.used_micros, bucket),
        "left": amount(answer.left_micros, bucket),
        "total": answer.slices_total,
        "data": [slice_json(s, bucket) for s in answer.slices],
        "next_cursor": answer.next_page_token or None,
    }


def paid_from_json(slices: list[wallet_pb2.CreditSlice], bucket: Bucket) -> list[dict[str, Any]]:
    """The credits (top-ups, mostly) that paid a request, with what each paid."""
    return [slice_json(s, bucket) for s in slices]
