"""The observability kernel: which span exporter the OTEL_* variables configure, the
request id carried from gRPC metadata into every log line of a call, and the circuit
breaker gauge read from the routing health board."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import grpc
import orjson
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.routing.domain.health import BreakerPolicy, HealthBoard
from services.routing.metrics import BreakerCollector
from tokenforge.runtime.grpc_server import create_server
from tokenforge.runtime.logging import JsonFormatter
from tokenforge.runtime.telemetry import span_exporter


def clear_otel(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_TRACES_EXPORTER",
    ):
        monkeypatch.delenv(name, raising=False)


def test_without_an_otlp_endpoint_no_exporter_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clear_otel(monkeypatch)
    assert span_exporter() is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    assert span_exporter() is None


def test_an_otlp_endpoint_configures_the_otlp_exporter_unless_told_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clear_otel(monkeypatch)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    assert isinstance(span_exporter(), OTLPSpanExporter)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert span_exporter() is None


def test_the_console_exporter_prints_spans_without_a_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clear_otel(monkeypatch)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert isinstance(span_exporter(), ConsoleSpanExporter)


METHOD = "/test.v1.EchoService/Echo"


@pytest.fixture
async def echo_server() -> AsyncIterator[tuple[str, io.StringIO]]:
    """A server with one unary method that logs a line, through create_server's
    interceptors; its log lines go to a JSON formatter on a string."""
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter("echo"))
    loggers = [logging.getLogger("test.echo"), logging.getLogger("tokenforge.grpc.access")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        logging.getLogger("test.echo").info("echoing %s bytes", len(request))
        return request

    generic = grpc.method_handlers_generic_handler(
        "test.v1.EchoService", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )

    def add(_: Any, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((generic,))

    server = create_server([(add, None, "test.v1.EchoService")], port=0)
    await server.server.start()
    try:
        yield f"127.0.0.1:{server.port}", lines
    finally:
        await server.stop(0)
        for logger in loggers:
            logger.removeHandler(handler)


async def test_a_served_call_logs_with_the_callers_request_id_and_is_counted(
    echo_server: tuple[str, io.StringIO],
) -> None:
    address, lines = echo_server
    labels = {"method": METHOD, "code": "OK"}
    before = REGISTRY.get_sample_value("tokenforge_grpc_server_handled_total", labels) or 0.0
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(METHOD)
        answer = await call(b"ping", metadata=(("x-request-id", "req_follow_me"),), timeout=5)
        await call(b"anonymous", timeout=5)

    records = [orjson.loads(line) for line in lines.getvalue().splitlines()]
    handled = [r for r in records if r["logger"] == "test.echo"]
    # Only this server's method: servers of other tests may still serve in this process.
    access = [
        r
        for r in records
        if r["logger"] == "tokenforge.grpc.access" and r["msg"].startswith(METHOD)
    ]
    assert answer == b"ping"
    assert handled[0]["request_id"] == "req_follow_me" and handled[0]["service"] == "echo"
    assert "request_id" not in handled[1]  # no metadata, no request id (and no leak)
    assert [r.get("request_id") for r in access] == ["req_follow_me", None]
    assert access[0]["msg"].startswith(f"{METHOD} OK in ")
    after = REGISTRY.get_sample_value("tokenforge_grpc_server_handled_total", labels)
    assert after == before + 2


@dataclass
class FakeCatalog:
    channels: tuple[SimpleNamespace, ...]


def breaker_states(collector: BreakerCollector) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    [family] = text_string_to_metric_families(text)
    assert family.name == "tokenforge_routing_circuit_breaker_state"
    return {s.labels["channel"]: s.value for s in family.samples}


def test_the_breaker_gauge_reads_closed_open_and_half_open_per_channel() -> None:
    now = [0.0]
    board = HealthBoard(BreakerPolicy(failure_threshold=2, cool_down_s=10), clock=lambda: now[0])
    catalog = FakeCatalog((SimpleNamespace(id="primary"), SimpleNamespace(id="backup")))
    collector = BreakerCollector()
    unwatch = collector.watch(board, lambda: catalog)  # type: ignore[arg-type,return-value]

    assert breaker_states(collector) == {"primary": 0, "backup": 0}
    board.record("primary", "http_503", 10)
    board.record("primary", "http_503", 10)
    assert breaker_states(collector) == {"primary": 2, "backup": 0}
    now[0] = 11.0
    assert breaker_states(collector) == {"primary": 1, "backup": 0}
    unwatch()
    assert breaker_states(collector) == {}
