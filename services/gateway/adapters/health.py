"""What the gateway tells routing around a request: the request's shape before it
is resolved (for token limits and the worst case), and how it ended after (every
channel attempt for channel health, the charge for spend caps, the end of the
in-flight lease).

The report is fire-and-forget off the request path (a background task, so the
client never waits for it), but never lost silently: a failed report is logged
with the request id. A lost report costs little: the lease expires by its TTL and
the breaker learns from the next request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from services.gateway.adapters.peers import Peers
from services.gateway.adapters.upstream import Attempt
from services.gateway.domain.planning import estimate_prompt_tokens, requested_output_cap
from tokenforge.errors import DomainError
from tokenforge.money import Money
from tokenforge.routing.v1 import routing_pb2
from tokenforge.wire import bucket_to_proto

log = logging.getLogger(__name__)

# Reports in flight: kept referenced until done.
_reports: set[asyncio.Task[None]] = set()


def request_shape(body: dict[str, Any]) -> tuple[int, int]:
    """(prompt estimate, client's output cap or 0); a malformed cap is left to the
    planner to refuse with its own message."""
    try:
        cap = requested_output_cap(body) or 0
    except DomainError:
        cap = 0
    return estimate_prompt_tokens(body), cap


async def _send(peers: Peers, request: routing_pb2.ReportOutcomeRequest) -> None:
    try:
        await peers.routing.call(
            peers.routing_stub.ReportOutcome, request, request_id=request.request_id
        )
    except Exception as error:  # noqa: BLE001 - logged, never raised into a finished request
        log.warning(
            "outcome report for %s not delivered (%s): %s",
            request.request_id,
            type(error).__name__,
            error,
        )


def report_outcome(
    peers: Peers,
    resolved: routing_pb2.ResolveResponse,
    request_id: str,
    attempts: Sequence[Attempt],
    charge: Money | None,
) -> None:
    """Send the outcome in the background (attempts may be empty: a request refused
    after Resolve only ends its lease)."""
    if not attempts and not resolved.lease_id and (charge is None or charge.micros == 0):
        return
    request = routing_pb2.ReportOutcomeRequest(
        request_id=request_id,
        key_id=resolved.principal.key_id,
        lease_id=resolved.lease_id,
        attempts=[
            routing_pb2.AttemptReport(
                channel_id=a.channel_id, outcome=a.outcome, latency_ms=a.latency_ms
            )
            for a in attempts
        ],
    )
    if charge is not None and charge.micros > 0:
        request.bucket = bucket_to_proto(charge.bucket)
        request.charge_micros = charge.micros
    task = asyncio.create_task(_send(peers, request))
    _reports.add(task)
    task.add_done_callback(_reports.discard)
