"""The gateway bench reads "c=1 added at most 3 ms on a quiet machine" in the round the
machine was quietest for it (bench/gateway_bench.py `quietest_c1`)."""

from __future__ import annotations

from typing import Any

from bench.gateway_bench import fewer_or_more, probe_ms, quietest_c1


def c1(*rounds: tuple[float, float]) -> dict[str, Any]:
    return {"c1": {"rounds": [{"probe_ms": p, "p50_ms": v} for p, v in rounds]}}


def test_the_quietest_round_decides_and_every_round_is_shown() -> None:
    summary = {
        # The direct upstream's slices, and tokenforge's: round 2 is the quietest for
        # both; round 3's direct slice was quiet, but tokenforge's was not.
        "direct": c1((9.0, 0.7), (6.0, 0.6), (6.1, 0.6)),
        "tokenforge": c1((8.0, 5.2), (6.2, 2.9), (12.0, 6.3)),
    }
    (line,) = quietest_c1(summary, "tokenforge")
    assert "2.30 ms in the quietest round (probe 6.2 ms; the run's quickest 6.0 ms), met" in line
    assert "each round: 4.50 (probe 9.0), 2.30 (probe 6.2), 5.70 (probe 12.0) ms" in line

    summary["tokenforge"] = c1((8.0, 5.2), (6.2, 3.7), (12.0, 6.3))
    (line,) = quietest_c1(summary, "tokenforge")
    assert "3.10 ms in the quietest round" in line and " ms), missed; each round" in line
    assert quietest_c1(summary, "shipped") == []  # not measured: no line


def test_the_probe_measures_time() -> None:
    assert 0 < probe_ms() < 10_000


def test_the_shipped_throughput_is_said_fewer_or_more() -> None:
    assert fewer_or_more(404, 384) == "5% more"
    assert fewer_or_more(450, 471) == "4% fewer"
    assert fewer_or_more(1, 0) == "-"
