"""The user API for API keys: create, list, revoke, rotate.

The caller's key needs the `keys` scope, and only ever sees its own account's keys:
the account comes from the caller's key, never from the request, and routing
answers NOT_FOUND for another account's key id. The caller's key is named to routing
(`acting_key_id`) on create, revoke and rotate: a key manages only keys within its
own powers, and a setting left out of a new key is the caller's own
(services/routing/domain/access.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.gateway.adapters.peers import Peers
from services.gateway.domain.validation import MAX_ID_CHARS
from services.gateway.transport.http.answers import KEY, NEW_KEY, ROTATED_KEY, answer, listing
from services.gateway.transport.http.common import Deps, json_body, json_response
from services.gateway.transport.http.schemas import (
    KeyCreateRequest,
    KeyRotateRequest,
    body_of,
    optional_body_of,
)
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.routing.v1 import routing_pb2
from tokenforge.wire import (
    bucket_from_name,
    bucket_from_proto,
    bucket_to_proto,
    iso,
    route_kind_from_proto,
    route_kind_to_proto,
    timestamp,
)

SCOPE_NAMES = {
    "inference": routing_pb2.SCOPE_INFERENCE,
    "wallet_read": routing_pb2.SCOPE_WALLET_READ,
    "topup": routing_pb2.SCOPE_TOPUP,
    "keys": routing_pb2.SCOPE_KEYS,
}
SCOPE_WORDS = {wire: name for name, wire in SCOPE_NAMES.items()}


def _invalid(param: str, message: str) -> DomainError:
    return DomainError(Reason.INVALID_ARGUMENT, message, {"param": param})


# A list setting (models, scopes, IPs) has at most this many entries of at most
# MAX_ID_CHARS each.
MAX_LIST_ITEMS = 256


def _strings(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name) or []
    if (
        not isinstance(value, list)
        or len(value) > MAX_LIST_ITEMS
        or not all(isinstance(v, str) and len(v) <= MAX_ID_CHARS for v in value)
    ):
        raise _invalid(
            name,
            f"`{name}` must be a list of at most {MAX_LIST_ITEMS} strings of at most "
            f"{MAX_ID_CHARS} characters.",
        )
    return list(value)


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name) or ""
    if not isinstance(value, str) or len(value) > MAX_ID_CHARS:
        raise _invalid(name, f"`{name}` must be a string of at most {MAX_ID_CHARS} characters.")
    return value


INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def _count(body: dict[str, Any], name: str, maximum: int = INT32_MAX) -> int:
    value = body.get(name) or 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise _invalid(name, f"`{name}` must be a whole number up to {maximum}, 0 for no limit.")
    return value


def _kinds(body: dict[str, Any], name: str) -> list[Any]:
    kinds = _strings(body, name)
    for kind in kinds:
        if kind not in ("official", "routed"):
            raise _invalid(name, f"`{name}` takes route kinds: official, routed (not {kind!r}).")
    return [route_kind_to_proto(k) for k in kinds]


def settings_from_json(body: dict[str, Any]) -> routing_pb2.KeySettings:
    """KeySettings from a JSON body; caps are micro-units of their bucket."""
    caps = body.get("spend_caps") or []
    if not isinstance(caps, list):
        raise _invalid("spend_caps", "`spend_caps` must be a list of {bucket, daily_micros, ...}.")
    spend_caps = []
    for cap in caps:
        if not isinstance(cap, dict) or not isinstance(cap.get("bucket"), str):
            raise _invalid("spend_caps", "Each spend cap needs a `bucket`: credit or routed.")
        spend_caps.append(
            routing_pb2.SpendCap(
                bucket=bucket_to_proto(bucket_from_name(cap["bucket"])),
                daily_micros=_count(cap, "daily_micros", INT64_MAX),
                total_micros=_count(cap, "total_micros", INT64_MAX),
            )
        )
    return routing_pb2.KeySettings(
        allowed_models=_strings(body, "allowed_models"),
        allowed_route_kinds=_kinds(body, "allowed_route_kinds"),
        route_preference=_kinds(body, "route_preference"),
        fallback_allowed=bool(body.get("fallback_allowed", False)),
        ip_allowlist=_strings(body, "ip_allowlist"),
        requests_per_minute=_count(body, "requests_per_minute"),
        tokens_per_minute=_count(body, "tokens_per_minute", INT64_MAX),
        max_in_flight=_count(body, "max_in_flight"),
        spend_caps=spend_caps,
    )


def key_json(key: routing_pb2.ApiKeyInfo) -> dict[str, Any]:
    """A key as users read it: never the secret, only its first characters."""
    s = key.settings
    return {
        "id": key.key_id,
        "object": "api_key",
        "name": key.name,
        "prefix": key.prefix,
        "project_id": key.project_id,
        "scopes": [SCOPE_WORDS.get(x, "unknown") for x in key.scopes],
        "allowed_models": list(s.allowed_models),
        "allowed_route_kinds": [route_kind_from_proto(k) for k in s.allowed_route_kinds],
        "route_preference": [route_kind_from_proto(k) for k in s.route_preference],
        "fallback_allowed": s.fallback_allowed,
        "ip_allowlist": list(s.ip_allowlist),
        "limits": {
            "requests_per_minute": s.requests_per_minute or None,
            "tokens_per_minute": s.tokens_per_minute or None,
            "max_in_flight": s.max_in_flight or None,
        },
        "spend_caps": [
            {
                "bucket": bucket_from_proto(c.bucket).value,
                "daily_micros": c.daily_micros or None,
                "total_micros": c.total_micros or None,
            }
            for c in s.spend_caps
        ],
        "created_at": iso(key.created_at),
        "expires_at": iso(key.expires_at),
        "revoked_at": iso(key.revoked_at),
        "last_used_at": iso(key.last_used_at),
    }


def _expires_at(body: dict[str, Any]) -> Any:
    value = body.get("expires_at")
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        if when.tzinfo is None:
            raise ValueError("no time zone")
        return timestamp(when)
    except (ValueError, OverflowError):
        raise _invalid("expires_at", "`expires_at` must be an ISO 8601 time with a zone.") from None


def router(deps: Deps) -> APIRouter:
    r = APIRouter()
    peers: Peers = deps.peers

    async def caller(request: Request) -> routing_pb2.Principal:
        return await deps.principal(request, routing_pb2.SCOPE_KEYS)

    @r.post(
        "/v1/keys",
        tags=["keys"],
        status_code=201,
        openapi_extra=body_of(KeyCreateRequest),
        responses=answer(NEW_KEY, 201),
    )
    async def create_key(request: Request) -> Response:
        """A new key in the caller's account, within the caller's key's powers (a
        setting left out is the caller's own); its secret is in this answer only."""
        who = await caller(request)
        account_id = who.account_id
        body = await json_body(request)
        scopes = _strings(body, "scopes")
        unknown = [s for s in scopes if s not in SCOPE_NAMES]
        if unknown:
            raise _invalid(
                "scopes", f"Unknown scope {unknown[0]!r}; one of: {', '.join(SCOPE_NAMES)}."
            )
        created = await peers.routing_client.create_api_key(
            routing_pb2.CreateApiKeyRequest(
                account_id=account_id,
                project_id=_text(body, "project_id"),
                name=_text(body, "name"),
                scopes=[SCOPE_NAMES[s] for s in scopes],
                expires_at=_expires_at(body),
                settings=settings_from_json(body),
                acting_key_id=who.key_id,
            ),
            request_id=request.state.request_id,
        )
        listed = await _list(peers, account_id, request.state.request_id)
        info = next((k for k in listed if k.key_id == created.key_id), None)
        answer = key_json(info) if info is not None else {"id": created.key_id}
        return json_response({**answer, "key": created.api_key}, 201)

    @r.get("/v1/keys", tags=["keys"], responses=answer(listing(KEY, cursor=False)))
    async def list_keys(request: Request) -> Response:
        """The caller's account's keys (prefix, scopes, limits, last use; no secrets)."""
        account_id = (await caller(request)).account_id
        keys = await _list(peers, account_id, request.state.request_id)
        return json_response({"object": "list", "data": [key_json(k) for k in keys]})

    @r.post("/v1/keys/{key_id}/revoke", tags=["keys"], responses=answer(KEY))
    async def revoke_key(key_id: str, request: Request) -> Response:
        """Stop a key (one within the caller's key's powers): at once here, within 2 s
        everywhere."""
        who = await caller(request)
        # No reused answer outlives the revocation (the client forgets the key).
        revoked = await peers.routing_client.revoke_api_key(
            who.account_id, key_id, acting_key_id=who.key_id, request_id=request.state.request_id
        )
        return json_response(key_json(revoked))

    @r.post(
        "/v1/keys/{key_id}/rotate",
        tags=["keys"],
        openapi_extra=optional_body_of(KeyRotateRequest),
        responses=answer(ROTATED_KEY),
    )
    async def rotate_key(key_id: str, request: Request) -> Response:
        """A new secret with the same settings (of a key within the caller's key's
        powers); the old one stops after `grace_seconds`."""
        who = await caller(request)
        raw = await request.body()
        body = await json_body(request) if raw.strip() else {}
        answer = await peers.routing_client.rotate_api_key(
            who.account_id,
            key_id,
            grace_seconds=_count(body, "grace_seconds"),
            acting_key_id=who.key_id,
            request_id=request.state.request_id,
        )
        return json_response(
            {**key_json(answer.key), "key": answer.api_key, "revoked_key_id": answer.revoked_key_id}
        )

    return r


async def _list(peers: Peers, account_id: str, request_id: str) -> list[routing_pb2.ApiKeyInfo]:
    return await peers.routing_client.list_api_keys(account_id, request_id=request_id)
