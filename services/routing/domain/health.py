"""Channel health: a circuit breaker per channel, and the order channels are tried in.

The gateway reports every attempt (channel, outcome, latency) after each request.
A channel's breaker:

- **closed** (normal) -> **open** after `failure_threshold` consecutive failures, or
  when at least `min_attempts` attempts in the last `window_s` failed at a rate of
  `max_error_rate` or more;
- **open** -> **half_open** once `cool_down_s` have passed: exactly one request is
  let through as a probe (another probe only if the first is not reported within
  `probe_timeout_s`);
- **half_open** -> **closed** when the probe succeeds, back to **open** when it fails.

A failure is what says the channel is unwell: a timeout, a connection error, an
HTTP 5xx or 429. A 4xx is the request's own fault and counts as a success here.

Resolve skips open channels. When every channel of a route is open it tries them
all anyway, in their order: the request is then the probe, and a route that might
be back is better than a refusal (failed requests are charged by the route's policy,
by default not at all).

Channels of equal priority (a group in the catalog: `channels: [[a, b], c]`) share
load by `weight`: a weighted random order within the group (each channel leads
with probability weight / sum of weights), then the next group.

The breakers live in the memory of each routing replica and learn from the reports
that replica receives; with several replicas each opens on its own evidence (a
failing channel is skipped everywhere after at most threshold x replicas failures).

The clock is injectable (`now` is monotonic seconds) so tests run on a fake one.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from tokenforge.attempts import is_channel_failure


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    failure_threshold: int = 5
    window_s: float = 60.0
    min_attempts: int = 20
    max_error_rate: float = 0.5
    cool_down_s: float = 30.0
    probe_timeout_s: float = 30.0


@dataclass
class _Sample:
    at: float
    failed: bool
    latency_ms: int


@dataclass
class HealthView:
    channel_id: str
    state: BreakerState
    error_rate_ppm: int
    latency_p50_ms: int
    latency_p95_ms: int
    attempts_in_window: int
    last_failure: str
    last_failure_at: float | None


def _percentile(sorted_values: Sequence[int], fraction: float) -> int:
    """Nearest-rank percentile; 0 with no samples."""
    if not sorted_values:
        return 0
    rank = max(1, -(-int(fraction * 1000 * len(sorted_values)) // 1000))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class CircuitBreaker:
    channel_id: str
    policy: BreakerPolicy = field(default_factory=BreakerPolicy)
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    opened_at: float = 0.0
    probe_started_at: float | None = None
    last_failure: str = ""
    last_failure_at: float | None = None
    samples: deque[_Sample] = field(default_factory=deque)

    def _trim(self, now: float) -> None:
        while self.samples and now - self.samples[0].at > self.policy.window_s:
            self.samples.popleft()

    def _open(self, now: float) -> None:
        self.state = BreakerState.OPEN
        self.opened_at = now
        self.probe_started_at = None

    def allows(self, now: float) -> bool:
        """May a request use this channel now? In half-open, True hands out the probe."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if now - self.opened_at < self.policy.cool_down_s:
                return False
            self.state = BreakerState.HALF_OPEN
            self.probe_started_at = now
            return True
        # Half-open: one probe at a time; a probe never reported frees the slot later.
        if (
            self.probe_started_at is not None
            and now - self.probe_started_at < self.policy.probe_timeout_s
        ):
            return False
        self.probe_started_at = now
        return True

    def record(self, outcome: str, latency_ms: int, now: float) -> None:
        failed = is_channel_failure(outcome)
        self.samples.append(_Sample(now, failed, max(latency_ms, 0)))
        self._trim(now)
        if failed:
            self.consecutive_failures += 1
            self.last_failure = outcome
            self.last_failure_at = now
        else:
            self.consecutive_failures = 0
        if self.state is BreakerState.HALF_OPEN:
            if failed:
                self._open(now)
            else:
                self.state = BreakerState.CLOSED
                self.probe_started_at = None
            return
        if self.state is BreakerState.CLOSED and failed:
            if self.consecutive_failures >= self.policy.failure_threshold:
                self._open(now)
                return
            attempts = len(self.samples)
            failures = sum(1 for s in self.samples if s.failed)
            if (
                attempts >= self.policy.min_attempts
                and failures >= self.policy.max_error_rate * attempts
            ):
                self._open(now)

    def view(self, now: float) -> HealthView:
        self._trim(now)
        state = self.state
        if state is BreakerState.OPEN and now - self.opened_at >= self.policy.cool_down_s:
            state = BreakerState.HALF_OPEN
        attempts = len(self.samples)
        failures = sum(1 for s in self.samples if s.failed)
        latencies = sorted(s.latency_ms for s in self.samples)
        return HealthView(
            channel_id=self.channel_id,
            state=state,
            error_rate_ppm=failures * 1_000_000 // attempts if attempts else 0,
            latency_p50_ms=_percentile(latencies, 0.50),
            latency_p95_ms=_percentile(latencies, 0.95),
            attempts_in_window=attempts,
            last_failure=self.last_failure,
            last_failure_at=self.last_failure_at,
        )


class WeightedChannel(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def weight(self) -> int: ...


C = TypeVar("C", bound=WeightedChannel)


class HealthBoard:
    """Every channel's breaker, on one clock."""

    def __init__(
        self,
        policy: BreakerPolicy | None = None,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        import time

        self.policy = policy or BreakerPolicy()
        self.clock = clock or time.monotonic
        self.rng = rng or random.Random()
        self._breakers: dict[str, CircuitBreaker] = {}

    def breaker(self, channel_id: str) -> CircuitBreaker:
        found = self._breakers.get(channel_id)
        if found is None:
            found = self._breakers[channel_id] = CircuitBreaker(channel_id, self.policy)
        return found

    def record(self, channel_id: str, outcome: str, latency_ms: int) -> None:
        self.breaker(channel_id).record(outcome, latency_ms, self.clock())

    def view(self, channel_id: str) -> HealthView:
        return self.breaker(channel_id).view(self.clock())

    def all_closed(self, channel_ids: Iterable[str]) -> bool:
        """Is every one of these channels' breakers closed (no channel skipped, no
        probe handed out)?"""
        return all(self.breaker(c).state is BreakerState.CLOSED for c in channel_ids)

    def order(self, channels: Sequence[C], groups: Sequence[int] | None = None) -> list[C]:
        """The channels to try, in order: groups in catalog order, weighted random
        within a group, open channels skipped (all of them, in order, if all are open)."""
        groups = list(groups) if groups is not None else list(range(len(channels)))
        ordered: list[C] = []
        for group in sorted(set(groups)):
            members = [c for c, g in zip(channels, groups, strict=True) if g == group]
            ordered.extend(weighted_order(members, self.rng))
        now = self.clock()
        allowed = [c for c in ordered if self.breaker(c.id).allows(now)]
        return allowed if allowed else ordered


def weighted_order(channels: Sequence[C], rng: random.Random) -> list[C]:
    """A random order where each channel leads with probability weight / total
    (Efraimidis-Spirakis keys u ** (1 / weight)); a weight of 0 always goes last."""
    if len(channels) <= 1:
        return list(channels)

    def key(channel: C) -> float:
        if channel.weight <= 0:
            return -1.0
        return float(rng.random() ** (1.0 / channel.weight))

    return sorted(channels, key=key, reverse=True)
