"""Channel health (circuit breaker on a fake clock, weighted order) and the limit
rules, without I/O."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from services.routing.domain.access import worst_case_micros
from services.routing.domain.catalog import Catalog
from services.routing.domain.health import BreakerPolicy, BreakerState, HealthBoard
from services.routing.domain.limits import (
    KeyLimits,
    SpendCap,
    check_in_flight,
    check_rate,
    check_spend,
    check_tokens_fit,
    require_ip_allowed,
    retry_after_s,
)
from services.routing.storage.catalog_file import DEMO_CATALOG, read_catalog
from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket


@dataclass(frozen=True)
class Ch:
    id: str
    weight: int = 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


POLICY = BreakerPolicy(failure_threshold=3, cool_down_s=30, probe_timeout_s=10, min_attempts=10)


def board() -> tuple[HealthBoard, FakeClock]:
    clock = FakeClock()
    return HealthBoard(POLICY, clock, random.Random(7)), clock


def test_breaker_opens_after_consecutive_failures_and_open_channel_is_skipped() -> None:
    health, _ = board()
    a, b = Ch("a"), Ch("b")
    for _ in range(2):
        health.record("a", "http_503", 100)
    assert health.view("a").state is BreakerState.CLOSED
    health.record("a", "timeout", 100)

    assert health.view("a").state is BreakerState.OPEN
    assert health.order([a, b]) == [b]
    assert health.view("a").last_failure == "timeout"


def test_breaker_probes_once_half_open_after_cool_down_and_closes_on_success() -> None:
    health, clock = board()
    a, b = Ch("a"), Ch("b")
    for _ in range(3):
        health.record("a", "connect_error", 5)
    clock.now += 29
    assert health.order([a, b]) == [b]

    clock.now += 1
    assert health.order([a, b]) == [a, b]  # the probe goes through
    assert health.breaker("a").state is BreakerState.HALF_OPEN
    assert health.order([a, b]) == [b]  # only one probe at a time

    health.record("a", "ok", 40)
    assert health.view("a").state is BreakerState.CLOSED
    assert health.order([a, b]) == [a, b]


def test_a_failed_probe_opens_the_breaker_again_for_a_new_cool_down() -> None:
    health, clock = board()
    for _ in range(3):
        health.record("a", "http_500", 5)
    clock.now += 30
    assert health.order([Ch("a")]) == [Ch("a")]
    health.record("a", "http_502", 5)

    assert health.breaker("a").state is BreakerState.OPEN
    clock.now += 10
    assert health.order([Ch("a"), Ch("b")]) == [Ch("b")]


def test_a_probe_never_reported_frees_the_probe_slot_after_its_timeout() -> None:
    health, clock = board()
    for _ in range(3):
        health.record("a", "http_500", 5)
    clock.now += 30
    assert health.order([Ch("a"), Ch("b")])[0] == Ch("a")
    clock.now += 10
    assert health.order([Ch("a"), Ch("b")])[0] == Ch("a")


def test_when_every_channel_is_open_they_are_all_tried_in_order() -> None:
    health, _ = board()
    for channel in ("a", "b"):
        for _ in range(3):
            health.record(channel, "http_503", 5)

    assert health.order([Ch("a"), Ch("b")]) == [Ch("a"), Ch("b")]


def test_a_high_error_rate_opens_the_breaker_without_consecutive_failures() -> None:
    health, _ = board()
    for _ in range(5):
        health.record("a", "ok", 10)
        health.record("a", "http_503", 10)

    assert health.view("a").state is BreakerState.OPEN


def test_client_errors_do_not_count_against_a_channel() -> None:
    health, _ = board()
    for _ in range(10):
        health.record("a", "http_400", 10)

    view = health.view("a")
    assert view.state is BreakerState.CLOSED and view.error_rate_ppm == 0


def test_health_reports_error_rate_and_latency_percentiles() -> None:
    health, _ = board()
    for latency in range(1, 101):
        health.record("a", "ok", latency)
    health.record("a", "http_503", 500)

    view = health.view("a")
    assert view.attempts_in_window == 101
    assert view.error_rate_ppm == 1_000_000 // 101
    assert (view.latency_p50_ms, view.latency_p95_ms) == (51, 96)
    assert view.last_failure == "http_503"


def test_equal_priority_channels_share_load_by_weight() -> None:
    health, _ = board()
    heavy, light, backup = Ch("heavy", 3), Ch("light", 1), Ch("backup")
    leads = {"heavy": 0, "light": 0}
    for _ in range(4000):
        order = health.order([heavy, light, backup], groups=[0, 0, 1])
        leads[order[0].id] += 1
        assert order[2] == backup

    assert 0.70 < leads["heavy"] / 4000 < 0.80


def test_a_weight_of_zero_is_never_first_in_its_group() -> None:
    health, _ = board()
    for _ in range(50):
        assert health.order([Ch("off", 0), Ch("on", 1)], groups=[0, 0])[0] == Ch("on")


def test_catalog_groups_channels_given_as_a_nested_list() -> None:
    text = DEMO_CATALOG.read_text().replace(
        "channels: [mock-primary, mock-backup]\n        retry: {max_attempts: 2, retry_on",
        "channels: [[mock-primary, mock-backup]]\n        retry: {max_attempts: 2, retry_on",
        1,
    )
    from services.routing.domain.catalog import parse_catalog

    model = parse_catalog(text.encode(), "t.yaml", {}).model("demo-chat")
    assert model is not None
    assert model.routes[0].groups == (0, 0)
    assert model.routes[1].groups == (0, 1)


# -- limits ---------------------------------------------------------------


def test_ip_allow_list_admits_listed_addresses_and_blocks_the_rest() -> None:
    limits = KeyLimits(ip_allowlist=("203.0.113.0/24", "2001:db8::1"))
    require_ip_allowed(limits, "203.0.113.77")
    require_ip_allowed(limits, "2001:db8::1")
    for address in ("198.51.100.1", "", "not-an-ip"):
        with pytest.raises(DomainError) as caught:
            require_ip_allowed(limits, address)
        assert caught.value.reason is Reason.PERMISSION_DENIED


def test_an_invalid_allow_list_entry_is_refused_when_the_key_is_made() -> None:
    with pytest.raises(DomainError) as caught:
        KeyLimits(ip_allowlist=("300.1.1.1",))
    assert caught.value.reason is Reason.INVALID_ARGUMENT


def test_over_the_rate_is_rate_limited_with_the_seconds_left_in_the_window() -> None:
    now = datetime(2026, 3, 1, 12, 0, 45, 500_000, tzinfo=UTC)
    check_rate(10, 10, "requests", now)
    with pytest.raises(DomainError) as caught:
        check_rate(10, 11, "requests", now)

    assert caught.value.reason is Reason.RATE_LIMITED
    assert caught.value.metadata == {
        "retry_after_s": "15",
        "limit": "10",
        "limit_kind": "requests",
    }
    assert retry_after_s(datetime(2026, 3, 1, 12, 0, 59, 999_999, tzinfo=UTC)) == 1


def test_a_request_larger_than_the_token_budget_is_refused_outright() -> None:
    check_tokens_fit(1000, 1000)
    with pytest.raises(DomainError) as caught:
        check_tokens_fit(1000, 1001)
    assert caught.value.reason is Reason.RATE_LIMITED


def test_in_flight_cap_counts_live_leases() -> None:
    check_in_flight(2, 1)
    with pytest.raises(DomainError) as caught:
        check_in_flight(2, 2)
    assert caught.value.metadata is not None and caught.value.metadata["retry_after_s"] == "1"


def test_spend_caps_refuse_once_reached_per_day_and_in_total() -> None:
    cap = SpendCap(Bucket.CREDIT, daily_micros=1_000_000, total_micros=5_000_000)
    check_spend(cap, 999_999, 4_999_999)
    check_spend(None, 10**12, 10**12)
    for today, total, kind in ((1_000_000, 1_000_000, "daily"), (0, 5_000_000, "total")):
        with pytest.raises(DomainError) as caught:
            check_spend(cap, today, total)
        assert caught.value.reason is Reason.SPEND_CAP_REACHED
        assert caught.value.metadata is not None and caught.value.metadata["cap"] == kind


def test_worst_case_is_the_whole_prompt_plus_the_output_cap_rounded_up() -> None:
    catalog: Catalog = read_catalog(DEMO_CATALOG, {})
    model = catalog.model("demo-chat")
    assert model is not None
    official = model.routes[0]
    # 1000 prompt x 2.5 CR/M + 100 output x 10 CR/M = 2500 + 1000 micro-CR.
    assert worst_case_micros(official, model, 1000, 100) == 3500
    # No cap from the client: the model's max output (1024) counts.
    assert worst_case_micros(official, model, 1000, 0) == 2500 + 10_240
    # Embeddings: 3 tokens x 0.1 CR/M = 0.3 micro-CR, rounded up to 1; no output.
    embed = catalog.model("demo-embed")
    assert embed is not None
    assert worst_case_micros(embed.routes[0], embed, 3, 500) == 1
