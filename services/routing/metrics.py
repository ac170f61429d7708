"""The routing service's Prometheus metrics: each channel's circuit-breaker state,
read from the health board when Prometheus scrapes (0 closed, 1 half-open, 2 open)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.routing.domain.catalog import Catalog
from services.routing.domain.health import BreakerState, HealthBoard

STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class BreakerCollector(Collector):
    """Every watched board's breakers, one sample per channel of its catalog (the
    worst state when two boards in one process know the same channel: tests)."""

    def __init__(self) -> None:
        self._boards: dict[int, tuple[HealthBoard, Callable[[], Catalog]]] = {}

    def watch(self, board: HealthBoard, catalog: Callable[[], Catalog]) -> Callable[[], None]:
        """Report this board; answers the function that stops reporting it."""
        key = id(board)
        self._boards[key] = (board, catalog)

        def unwatch() -> None:
            self._boards.pop(key, None)

        return unwatch

    def states(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for board, catalog in list(self._boards.values()):
            for channel in catalog().channels:
                value = STATE_VALUE[board.view(channel.id).state]
                found[channel.id] = max(value, found.get(channel.id, 0))
        return found

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "tokenforge_routing_circuit_breaker_state",
            "Each channel's circuit breaker: 0 closed, 1 half-open, 2 open.",
            labels=["channel"],
        )
        for channel, value in sorted(self.states().items()):
            family.add_metric([channel], value)
        yield family

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


BREAKERS = BreakerCollector()
REGISTRY.register(BREAKERS)
