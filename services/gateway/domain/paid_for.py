"""What a top-up paid for, and what paid for a request, as the user reads them (the
wallet's first-in-first-out attribution, docs/GLOSSARY.md "What a top-up paid for")."""

from __future__ import annotations

from typing import Any

from services.gateway.domain.presenting import ENTRY_KIND, amount
from tokenforge.money import Bucket
from tokenforge.wallet.v1 import wallet_pb2
from tokenforge.wire import bucket_from_proto, iso


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


def paid_from_json(answer: wallet_pb2.GetPaidFromResponse, bucket: Bucket) -> list[dict[str, Any]]:
    """The credits (top-ups, mostly) that paid a request, with what each paid."""
    return [slice_json(s, bucket) for s in answer.slices]
