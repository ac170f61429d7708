"""Preview: the "before" list of a request (route, bucket, prices, worst case, what is
available) without holding anything or calling upstream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.gateway.adapters.peers import Peers
from services.gateway.domain.planning import Plan, request_shape
from services.gateway.domain.validation import validate_request
from services.gateway.flow.admit import CHAT, EMBEDDINGS, plan_for, require_model, resolve
from tokenforge.generated.routing.v1 import routing_pb2
from tokenforge.money import Money, Price
from tokenforge.wire import bucket_from_proto, price_from_proto


@dataclass
class Preview:
    resolved: routing_pb2.ResolveResponse
    plan: Plan
    price: Price
    available: Money


async def preview(
    peers: Peers, api_key: str, body: dict[str, Any], request_id: str, client_ip: str = ""
) -> Preview:
    validate_request(body)
    model = require_model(body)
    endpoint = EMBEDDINGS if "input" in body else CHAT
    resolved = await resolve(
        peers,
        api_key,
        model,
        client_ip,
        request_id,
        endpoint,
        request_shape(body),
        preview=True,
    )
    bucket = bucket_from_proto(resolved.route.bucket)
    price = price_from_proto(bucket, resolved.route.prices)
    plan = plan_for(body, endpoint, resolved, price)
    balance = await peers.wallet_client.balance(resolved.principal.account_id, bucket)
    return Preview(resolved, plan, price, Money(balance.available_micros, bucket))
