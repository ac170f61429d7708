"""Checks on a running `tokenforge dev` (used by test_dev_command.py): every service's
real /metrics endpoint parses and moved with one paid request and one top-up, and one
request id can be followed through the services' JSON logs under one trace id."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(url: str) -> Samples:
    """Every sample of one /metrics endpoint, parsed by the Prometheus text parser."""
    text = httpx.get(url, timeout=5).text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 if none)."""
    return sum(v for found, v in samples.get(name, []) if labels.items() <= found.items())


def check_dev_metrics(info: dict[str, Any], charge_micros: int, topup_micros: int) -> None:
    """After one paid request (bucket credit) and one sandbox top-up (bucket credit)."""
    assert set(info["metrics"]) == set(info["services"])
    handled = "tokenforge_grpc_server_handled_total"

    gateway = scrape(info["metrics"]["gateway"])
    assert value(gateway, "tokenforge_http_requests_total", route="/v1/chat/completions") >= 1
    assert value(gateway, "tokenforge_charges_micros_total", bucket="credit") >= charge_micros
    assert value(gateway, "tokenforge_upstream_seconds_count", outcome="ok") >= 1

    routing = scrape(info["metrics"]["routing"])
    breakers = routing["tokenforge_routing_circuit_breaker_state"]
    assert breakers and all(v == 0 for _, v in breakers), breakers  # all closed
    assert value(routing, handled, method="/tokenforge.routing.v1.RoutingService/Resolve") >= 1

    wallet = scrape(info["metrics"]["wallet"])
    holds = "tokenforge_wallet_holds_total"
    assert value(wallet, holds, bucket="credit", outcome="placed") >= 1
    assert value(wallet, holds, bucket="credit", outcome="settled") >= 1
    # The demo grants are adjustments: this process charged and credited exactly these.
    assert value(wallet, "tokenforge_wallet_charges_micros_total", bucket="credit") == (
        charge_micros
    )
    assert (
        value(wallet, "tokenforge_wallet_topup_credits_micros_total", bucket="credit")
        == topup_micros
    )
    [(labels, pending)] = wallet["tokenforge_wallet_consumer_pending_messages"]
    assert labels == {"consumer": "wallet-topup-credits"} and pending >= 0
    assert value(wallet, handled, method="/tokenforge.wallet.v1.WalletService/Hold") >= 1

    payments = scrape(info["metrics"]["payments"])
    orders = "tokenforge_payments_orders_total"
    assert value(payments, orders, state="pending", provider="sandbox") >= 1
    assert value(payments, orders, state="succeeded", provider="sandbox") >= 1
    assert value(payments, "tokenforge_payments_outbox_published_total") >= 1
    deadline = time.monotonic() + 5
    while value(payments, "tokenforge_payments_outbox_backlog") != 0:
        assert time.monotonic() < deadline, "the outbox backlog never drained to 0"
        time.sleep(0.2)
        payments = scrape(info["metrics"]["payments"])
    assert "tokenforge_payments_outbox_backlog" in payments

    usage = scrape(info["metrics"]["usage"])
    assert value(usage, handled, method="/tokenforge.usage.v1.UsageService/RecordReceipt") >= 1


def check_request_followed_in_logs(logs: dict[str, str], request_id: str, trace_id: str) -> None:
    """The request's log lines in gateway, routing, wallet and usage: JSON, all with
    its request id and its one trace id."""
    for name in ("gateway.log", "routing.log", "wallet.log", "usage.log"):
        lines = [json.loads(line) for line in logs[name].splitlines() if line.startswith("{")]
        mine = [line for line in lines if line.get("request_id") == request_id]
        assert mine, f"{name} has no line for request {request_id}"
        assert {line["trace_id"] for line in mine} == {trace_id}, name
        assert all(line["span_id"] and line["level"] for line in mine), name
        assert {line["service"] for line in mine} == {name.removesuffix(".log")}
