"""The usage service's Prometheus metrics: receipts stored, by status; receipts refused
because their request id already has another; the mismatches the last reconciliation
found (served with the shared ones, see tokenforge/runtime/metrics.py)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from services.usage.domain.receipts import ReceiptStatus

RECEIPTS_STORED = Counter(
    "tokenforge_usage_receipts_stored_total",
    "Receipts stored (replays of a stored receipt not counted), by status.",
    ["status"],
)
# One child per status, bound once: counting a stored receipt is one increment.
STORED = {s: RECEIPTS_STORED.labels(s.value) for s in ReceiptStatus}
RECEIPT_CONFLICTS = Counter(
    "tokenforge_usage_receipt_conflicts_total",
    "Receipts refused because their request id already has another receipt.",
)
RECONCILE_MISMATCHES = Gauge(
    "tokenforge_usage_reconcile_mismatches",
    "Mismatches between receipts and the wallet's ledger the last Reconcile found "
    "(0: every hold, receipt and charge row agreed).",
)
