"""The capacity bench's own parts: the OTLP receiver the tracing variant exports to,
PostgreSQL's process titles read as the service that logged in, and the model's
arithmetic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from bench import capacity_bench
from tokenforge.runtime.embedded import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[3]


def test_the_receiver_counts_the_spans_a_real_exporter_sends(tmp_path: Path) -> None:
    port = free_port()
    stats = tmp_path / "sink.json"
    sink = subprocess.Popen(
        [sys.executable, "-m", "bench.otlp_sink", "--port", str(port), "--stats", str(stats)],
        cwd=ROOT,
    )
    try:
        wait_for_port("127.0.0.1", port, 30, sink)
        provider = TracerProvider()
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}", insecure=True)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test")
        for n in range(3):
            with tracer.start_as_current_span(f"span-{n}"):
                pass
        provider.shutdown()
    finally:
        sink.terminate()
        sink.wait(15)
    assert json.loads(stats.read_text()) == {"exports": 3, "spans": 3}


class Titled:
    def __init__(self, *words: str) -> None:
        self.words = list(words)

    def cmdline(self) -> list[str]:
        return self.words


@pytest.mark.parametrize(
    ("title", "label"),
    [
        (("postgres: tokenforge_wallet tokenforge 127.0.0.1(51234) idle",), "postgres:wallet"),
        (("postgres: tokenforge_gateway postgres 127.0.0.1(5) INSERT",), "postgres:gateway"),
        (("postgres: tokenforge postgres 127.0.0.1(5) idle",), "postgres:other"),
        (("postgres: checkpointer ",), "postgres:background"),
        (("/opt/pg/bin/postgres", "-D", "/tmp/pg"), "postgres:background"),
    ],
)
def test_postgres_processes_are_read_as_the_service_that_logged_in(
    title: tuple[str, ...], label: str
) -> None:
    assert capacity_bench.pg_label(Titled(*title)) == label  # type: ignore[arg-type]


def test_lsn_text_is_a_byte_position() -> None:
    assert capacity_bench.lsn("0/16B3748") == 0x16B3748
    assert capacity_bench.lsn("1/0") == 1 << 32


def test_replicas_leave_room_for_the_background_and_never_go_below_the_minimum() -> None:
    # 1,000 req/s x 2 ms = 2 cores; each replica may use 0.7 - 0.05 of a core: 4 replicas.
    cores, count = capacity_bench.replicas(1000, 2.0, 50.0)
    assert count == 4
    assert cores == pytest.approx(2.0 + 4 * 0.05)
    assert capacity_bench.replicas(10, 1.0, 0.0)[1] == capacity_bench.PROD_MIN_REPLICAS


def test_the_primary_is_the_smallest_size_that_keeps_its_target() -> None:
    assert capacity_bench.db_size(1.0) == 2  # 1 / 0.6 = 1.7 vCPUs
    assert capacity_bench.db_size(5.0) == 16  # 8.3 vCPUs
    assert capacity_bench.db_size(100.0) is None  # 167 vCPUs: past the largest


def test_each_step_names_the_limits_it_passes() -> None:
    measured = {
        "1 gateway": {
            "marginal_ms": {
                "gateway": 3.0,
                "routing": 0.5,
                "wallet": 0.5,
                "usage": 0.2,
                "payments": 0.0,
                "postgres:wallet": 0.4,
                "postgres:gateway": 0.2,
            },
            "idle_ms_per_s": {"gateway": 10.0, "payments": 8.0},
            "wal_bytes": 4000.0,
            "commits": 0.5,
            "db_bytes": 2000.0,
        }
    }
    plans = capacity_bench.model(measured, {})
    steps = {step["rate"]: step for step in plans["budgets on"]["steps"]}
    assert steps[1_000]["services"]["gateway"]["replicas"] == 5  # 3 cores / 0.69
    assert steps[1_000]["db_size"] == 2  # 0.6 cores busy / 0.6 = 1 vCPU
    assert steps[1_000]["wal_mb_s"] == pytest.approx(4.0)
    assert not any("max_connections" in limit for limit in steps[1_000]["limits"])
    assert any("WAL 400 MB/s" in limit for limit in steps[100_000]["limits"])
    assert any("primary vCPUs" in limit for limit in steps[100_000]["limits"])
    # The prod overlay's gateway requests the core a replica is planned on: its HPA asks
    # for the model's replicas, and only maxReplicas limits them.
    assert not any("HPA (70%" in limit for step in steps.values() for limit in step["limits"])
    assert any(
        "gateway replicas 44 > HPA maxReplicas 20" in limit for limit in steps[10_000]["limits"]
    )


def test_a_cpu_request_below_a_core_makes_the_hpa_ask_for_more_pods(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(capacity_bench, "PROD_GATEWAY_CPU_REQUEST", 0.2)
    measured = {
        "1 gateway": {
            "marginal_ms": {"gateway": 3.0, "postgres:wallet": 0.4},
            "idle_ms_per_s": {"gateway": 10.0},
            "wal_bytes": 4000.0,
            "commits": 0.5,
            "db_bytes": 2000.0,
        }
    }
    steps = {s["rate"]: s for s in capacity_bench.model(measured, {})["budgets on"]["steps"]}
    # 3 cores at 70% of 200m: 22 pods where 5 replicas do.
    assert (
        "the gateway HPA (70% of a 200m request) asks 22 pods > maxReplicas 20"
        in (steps[1_000]["limits"])
    )


def test_a_backend_that_ends_in_the_window_counts_once_and_not_against_its_role() -> None:
    before = {
        ("postgres", 10): ("postgres:background", 1.0),
        ("postgres", 0): ("", 5.0),  # reaped children so far
        ("postgres", 11): ("postgres:wallet", 3.0),  # ends in the window, at 3.5 s
        ("postgres", 12): ("postgres:wallet", 2.0),
        ("gateway", 20): ("gateway", 7.0),
        ("gateway", 0): ("", 0.0),
    }
    after = {
        ("postgres", 10): ("postgres:background", 1.25),
        ("postgres", 0): ("", 8.5),  # + 3.5 (backend 11)
        ("postgres", 12): ("postgres:wallet", 2.5),
        ("postgres", 13): ("postgres:wallet", 0.75),  # started in the window
        ("gateway", 20): ("gateway", 9.0),
        ("gateway", 0): ("", 0.0),
    }
    used = capacity_bench.cpu_between(before, after)
    assert used == pytest.approx(
        {
            "postgres:background": 0.25,
            "postgres:wallet": 1.25,
            "postgres:ended": 0.5,
            "gateway": 2.0,
        }
    )
