"""What the gateway tells routing after a request: how it ended (every channel attempt
for channel health, the charge for spend caps, the end of the in-flight lease). The
request's shape before it is resolved is `domain.planning.request_shape`.

The report is fire-and-forget off the request path (a background task of the
RoutingClient, batched with other requests' reports under load, so the client never
waits for it), but never lost silently: a failed report is logged with the request
id. A lost report costs little: the lease expires by its TTL and
the breaker learns from the next request.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.gateway.adapters.peers import Peers
from services.gateway.adapters.upstream import Attempt
from tokenforge.generated.routing.v1 import routing_pb2
from tokenforge.money import Money
from tokenforge.wire import bucket_to_proto


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
    # A reusable answer: routing saw nothing this report could change (see the client).
    peers.routing_client.report_outcome(request, settled=resolved.reuse_for_ms > 0)
