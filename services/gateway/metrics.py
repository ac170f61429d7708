"""The gateway's Prometheus metrics: HTTP requests by route, upstream calls by channel,
charges and receipts, the finish queue and budgets (served with the shared ones, see
tokenforge/runtime/metrics.py)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from tokenforge.runtime.metrics import LATENCY_BUCKETS

HTTP_REQUESTS = Counter(
    "tokenforge_http_requests_total",
    "HTTP requests answered by the gateway, by route template and status.",
    ["method", "route", "status"],
)

HTTP_LATENCY = Histogram(
    "tokenforge_http_request_seconds",
    "HTTP time to the response headers, by route template.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)

UPSTREAM_LATENCY = Histogram(
    "tokenforge_upstream_seconds",
    "Upstream call time (to the status line for streams), by channel and outcome.",
    ["channel", "outcome"],
    buckets=LATENCY_BUCKETS,
)

UPSTREAM_TTFT = Histogram(
    "tokenforge_upstream_time_to_first_token_seconds",
    "Time from a stream's status line to its first content chunk, by channel.",
    ["channel"],
    buckets=LATENCY_BUCKETS,
)

UPSTREAM_ERRORS = Counter(
    "tokenforge_upstream_errors_total",
    "Upstream attempts that failed, by channel and outcome.",
    ["channel", "outcome"],
)

CHARGES = Counter(
    "tokenforge_charges_micros_total",
    "Micro-units charged to users, by bucket and route kind.",
    ["bucket", "route"],
)

RECEIPTS = Counter(
    "tokenforge_receipts_total",
    "Receipts recorded by the gateway, by status and settlement rule.",
    ["status", "rule"],
)

RECEIPTS_QUEUED = Counter(
    "tokenforge_receipts_queued_total",
    "Receipts of settled requests the gateway kept in its queue because the usage "
    "service could not be reached.",
)

RECEIPTS_RELAYED = Counter(
    "tokenforge_receipts_relayed_total",
    "Queued receipts the gateway's relay handed to usage, by outcome (recorded, refused).",
    ["outcome"],
)

RECEIPTS_WAITING = Gauge(
    "tokenforge_receipts_waiting",
    "Receipts in the gateway's queue (refused ones included), as the relay last counted.",
)

BUDGET_DRAWS = Counter(
    "tokenforge_budget_draws_total",
    "Requests the gateway held for, by how: from a budget in memory (budget) or with a "
    "wallet hold of their own (hold).",
    ["how"],
)

BUDGETS = Counter(
    "tokenforge_budgets_total",
    "Budgets (one wallet hold a gateway replica draws a busy account's requests from), "
    "by event: opened, refused (the balance could not cover it), closed.",
    ["event"],
)

CHARGES_NOT_COLLECTED = Counter(
    "tokenforge_charges_not_collected_total",
    "Queued finishes whose charge could not be captured because the budget's hold had "
    "already ended (expired through a wallet outage): the receipt says charge 0.",
)
UPSTREAM_OPEN = Gauge(
    "tokenforge_upstream_open_connections",
    "Upstream calls this gateway process holds open (streams included).",
)
GATEWAY_BUSY = Counter(
    "tokenforge_gateway_busy_total",
    "Requests refused at once (503 gateway_busy) because this gateway process held "
    "TOKENFORGE_UPSTREAM_MAX_CONNECTIONS upstream calls open.",
)
