"""The RoutingService gRPC servicer: translate wire types, call the use case."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from services.routing import handlers
from services.routing.domain import commands
from services.routing.domain.access import ApiKey, Principal, Scope
from services.routing.domain.catalog import (
    Catalog,
    ChargePolicy,
    Endpoint,
    Model,
    Route,
    RouteKind,
)
from services.routing.domain.health import HealthBoard, HealthView
from services.routing.domain.limits import KeyLimits, SpendCap
from services.routing.storage.catalog_store import CatalogStore
from services.routing.storage.key_cache import KeyCache
from services.routing.storage.repository import StoredCatalog
from services.routing.storage.unit_of_work import UnitOfWork
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.routing.v1 import routing_pb2, routing_pb2_grpc
from tokenforge.runtime.batch_items import check_batch_size, without_nul_items
from tokenforge.wire import (
    bucket_from_proto,
    bucket_to_proto,
    from_timestamp,
    item_error_to_proto,
    price_to_proto,
    route_kind_from_proto,
    route_kind_to_proto,
    timestamp,
)

SCOPES_TO_WIRE: dict[Scope, routing_pb2.Scope] = {
    Scope.INFERENCE: routing_pb2.SCOPE_INFERENCE,
    Scope.WALLET_READ: routing_pb2.SCOPE_WALLET_READ,
    Scope.TOPUP: routing_pb2.SCOPE_TOPUP,
    Scope.KEYS: routing_pb2.SCOPE_KEYS,
}
SCOPES_FROM_WIRE: dict[int, Scope] = {wire: scope for scope, wire in SCOPES_TO_WIRE.items()}

ENDPOINTS_TO_WIRE: dict[Endpoint, routing_pb2.Endpoint] = {
    Endpoint.CHAT: routing_pb2.ENDPOINT_CHAT_COMPLETIONS,
    Endpoint.EMBEDDINGS: routing_pb2.ENDPOINT_EMBEDDINGS,
}
ENDPOINTS_FROM_WIRE: dict[int, Endpoint] = {
    wire: endpoint for endpoint, wire in ENDPOINTS_TO_WIRE.items()
}

CHARGE_POLICIES_TO_WIRE: dict[ChargePolicy, routing_pb2.ChargePolicy] = {
    ChargePolicy.NONE: routing_pb2.CHARGE_POLICY_NONE,
    ChargePolicy.PROMPT_ONLY: routing_pb2.CHARGE_POLICY_PROMPT_ONLY,
    ChargePolicy.AS_REPORTED: routing_pb2.CHARGE_POLICY_AS_REPORTED,
}


def principal_to_wire(principal: Principal) -> routing_pb2.Principal:
    return routing_pb2.Principal(
        account_id=principal.account_id,
        project_id=principal.project_id,
        key_id=principal.key_id,
        scopes=sorted(SCOPES_TO_WIRE[s] for s in principal.scopes),
    )


def health_to_wire(view: HealthView, clock_now: float) -> routing_pb2.ChannelHealth:
    wire = routing_pb2.ChannelHealth(
        channel_id=view.channel_id,
        state=view.state.value,
        error_rate_ppm=view.error_rate_ppm,
        latency_p50_ms=view.latency_p50_ms,
        latency_p95_ms=view.latency_p95_ms,
        last_failure=view.last_failure,
        attempts_in_window=view.attempts_in_window,
    )
    if view.last_failure_at is not None:
        # The board's clock is monotonic: place the failure on the wall clock.
        ago = timedelta(seconds=max(clock_now - view.last_failure_at, 0.0))
        wire.last_failure_at.CopyFrom(timestamp(datetime.now(UTC) - ago))
    return wire


def route_health(route: Route, health: HealthBoard) -> list[routing_pb2.ChannelHealth]:
    now = health.clock()
    return [health_to_wire(health.view(c.id), now) for c in route.channels]


def route_to_wire(route: Route, health: HealthBoard | None = None) -> routing_pb2.Route:
    return routing_pb2.Route(
        model=route.model,
        kind=route_kind_to_proto(route.kind),
        bucket=bucket_to_proto(route.bucket),
        upstream_model=route.upstream_model,
        prices=price_to_proto(route.price),
        channels=[
            routing_pb2.Channel(
                channel_id=c.id,
                base_url=c.base_url,
                secret_name=c.secret_name,
                connect_timeout_ms=c.connect_timeout_ms,
                first_byte_timeout_ms=c.first_byte_timeout_ms,
                total_timeout_ms=c.total_timeout_ms,
                protocol=c.protocol.value,
                auth=c.auth.value,
                headers=dict(c.headers),
            )
            for c in route.channels
        ],
        retry=routing_pb2.RetryPolicy(
            max_attempts=route.retry.max_attempts, retry_on=list(route.retry.retry_on)
        ),
        charge_policy=CHARGE_POLICIES_TO_WIRE[route.charge_policy],
        health=route_health(route, health) if health is not None else [],
    )


def model_to_wire(model: Model, health: HealthBoard | None = None) -> routing_pb2.Model:
    return routing_pb2.Model(
        id=model.id,
        display_name=model.display_name,
        context_length=model.context_length,
        max_output_tokens=model.max_output_tokens,
        routes=[route_to_wire(r, health) for r in model.routes],
        endpoints=[ENDPOINTS_TO_WIRE[e] for e in model.endpoints],
    )


def _scope(wire: int) -> Scope:
    scope = SCOPES_FROM_WIRE.get(wire)
    if scope is None:
        raise DomainError(Reason.INVALID_ARGUMENT, f"Unknown scope {wire}.")
    return scope


def _kinds(wire: Any) -> tuple[RouteKind, ...]:
    return tuple(RouteKind(route_kind_from_proto(k)) for k in wire)


def limits_from_wire(settings: routing_pb2.KeySettings) -> KeyLimits:
    return KeyLimits(
        ip_allowlist=tuple(settings.ip_allowlist),
        requests_per_minute=settings.requests_per_minute,
        tokens_per_minute=settings.tokens_per_minute,
        max_in_flight=settings.max_in_flight,
        spend_caps=tuple(
            SpendCap(bucket_from_proto(c.bucket), c.daily_micros, c.total_micros)
            for c in settings.spend_caps
        ),
    )


def settings_to_wire(key: ApiKey) -> routing_pb2.KeySettings:
    limits = key.limits
    return routing_pb2.KeySettings(
        allowed_models=list(key.allowed_models),
        allowed_route_kinds=[route_kind_to_proto(k) for k in key.allowed_route_kinds],
        route_preference=[route_kind_to_proto(k) for k in key.route_preference],
        fallback_allowed=key.fallback_allowed,
        ip_allowlist=list(limits.ip_allowlist),
        requests_per_minute=limits.requests_per_minute,
        tokens_per_minute=limits.tokens_per_minute,
        max_in_flight=limits.max_in_flight,
        spend_caps=[
            routing_pb2.SpendCap(
                bucket=bucket_to_proto(c.bucket),
                daily_micros=c.daily_micros,
                total_micros=c.total_micros,
            )
            for c in limits.spend_caps
        ],
    )


def key_to_wire(key: ApiKey) -> routing_pb2.ApiKeyInfo:
    """Everything about a key but its secret (never stored) and its digest."""
    wire = routing_pb2.ApiKeyInfo(
        key_id=key.key_id,
        account_id=key.account_id,
        project_id=key.project_id,
        name=key.name,
        prefix=key.prefix,
        scopes=sorted(SCOPES_TO_WIRE[s] for s in key.scopes),
        settings=settings_to_wire(key),
    )
    for name in ("created_at", "expires_at", "revoked_at", "last_used_at"):
        value = getattr(key, name)
        if value is not None:
            getattr(wire, name).CopyFrom(timestamp(value))
    return wire


def version_to_wire(stored: StoredCatalog) -> routing_pb2.CatalogVersion:
    wire = routing_pb2.CatalogVersion(
        version=stored.version,
        content_sha256=stored.content_sha256,
        created_by=stored.created_by,
    )
    wire.created_at.CopyFrom(timestamp(stored.created_at))
    return wire


def report_from_wire(request: routing_pb2.ReportOutcomeRequest) -> commands.ReportOutcome:
    return commands.ReportOutcome(
        request_id=request.request_id,
        key_id=request.key_id,
        lease_id=request.lease_id,
        attempts=tuple(
            commands.AttemptOutcome(a.channel_id, a.outcome, a.latency_ms) for a in request.attempts
        ),
        bucket=bucket_from_proto(request.bucket) if request.bucket else None,
        charge_micros=request.charge_micros,
    )


def _read_report(request: routing_pb2.ReportOutcomeRequest) -> commands.ReportOutcome | DomainError:
    try:
        return report_from_wire(request)
    except DomainError as error:
        return error


def _report_outcome(error: DomainError | None) -> routing_pb2.ReportOutcomeOutcome:
    if error is not None:
        return routing_pb2.ReportOutcomeOutcome(error=item_error_to_proto(error))
    return routing_pb2.ReportOutcomeOutcome(answer=routing_pb2.ReportOutcomeResponse())


class RoutingServicer(routing_pb2_grpc.RoutingServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        uow_factory: Callable[[], UnitOfWork],
        catalog: Callable[[], Catalog],
        *,
        store: CatalogStore | None = None,
        cache: KeyCache | None = None,
        health: HealthBoard | None = None,
        resolve_reuse_ms: int = 0,
    ) -> None:
        self._uow = uow_factory
        self._catalog = catalog
        self._store = store
        self._cache = cache or KeyCache()
        self._health = health or HealthBoard()
        self._reuse_ms = resolve_reuse_ms

    def _catalog_store(self) -> CatalogStore:
        if self._store is None:
            raise DomainError(
                Reason.SERVICE_UNAVAILABLE, "This routing runs without a versioned catalog."
            )
        return self._store

    async def Resolve(  # noqa: N802
        self, request: routing_pb2.ResolveRequest, context: grpc.aio.ServicerContext
    ) -> routing_pb2.ResolveResponse:
        endpoint = ENDPOINTS_FROM_WIRE.get(request.endpoint)
        command = commands.ResolveRoute(
            request.api_key,
            request.model,
            endpoint,
            client_ip=request.client_ip,
            prompt_tokens=request.estimated_prompt_tokens,
            output_cap=request.output_tokens_cap,
            preview=request.preview,
        )
        resolution = await handlers.resolve(
            command, self._uow(), self._catalog(), self._cache, self._health, self._reuse_ms
        )
        return routing_pb2.ResolveResponse(
            principal=principal_to_wire(resolution.principal),
            route=route_to_wire(resolution.route),
            fallback_routes=[route_to_wire(r) for r in resolution.fallback_routes],
            context_length=resolution.model.context_length,
            max_output_tokens=resolution.model.max_output_tokens,
            catalog_version=resolution.catalog_version,
            selected_model=resolution.selected_model,
            lease_id=resolution.lease_id,
            worst_case_micros=resolution.worst_case_micros,
            reuse_for_ms=resolution.reuse_for_ms,
        )

    async def Authenticate(  # noqa: N802
        self, request: routing_pb2.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> routing_pb2.AuthenticateResponse:
        scope = None if request.scope == routing_pb2.SCOPE_UNSPECIFIED else _scope(request.scope)
        principal = await handlers.authenticate(
            commands.Authenticate(request.api_key, scope, request.client_ip),
            self._uow(),
            self._cache,
        )
        return routing_pb2.AuthenticateResponse(principal=principal_to_wire(principal))

    async def ListModels(  # noqa: N802
        self, request: routing_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> routing_pb2.ListModelsResponse:
        catalog = self._catalog()
        return routing_pb2.ListModelsResponse(
            models=[model_to_wire(m, self._health) for m in catalog.models],
            catalog_version=catalog.version,
        )

    async def OpenAccount(  # noqa: N802
        self, request: routing_pb2.OpenAccountRequest, context: grpc.aio.ServicerContext
    ) -> routing_pb2.OpenAccountResponse:
        opened = await handlers.open_account(
            commands.OpenAccount(request.account_id, request.display_name), self._uow()
        )
        return routing_pb2.OpenAccountResponse(
            account_id=opened.account_id, project_id=opened.project_id
        )

    async def CreateApiKey(  # noqa: N802
        self, request: routing_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> routing_pb2.CreateApiKeyResponse:
        expires_at = from_timestamp(request.expires_at)
        command = commands.CreateApiKey(
            account_id=request.account_id,
            project_id=request.project_id,
            name=request.name,
            scopes=tuple(_scope(s) for s in request.scopes),
            expires_at=expires_at,
            allowed_models=tuple(request.settings.allowed_models),
            allowed_route_kinds=_kinds(request.settings.allowed_route_kinds),
            route_preference=_kinds(request.settings.route_preference),
            fallback_allowed=request.settings.fallback_allowed,
            limits=limits_from_wire(request.settings),
            acting_key_id=request.acting_key_id,
        )
        created = await handlers.create_api_key(command, self._uow())
        return routing_pb2.CreateApiKeyResponse(
            key_id=created.key_id, api_key=created.secret, prefix=created.prefix
        )

    async def ListApiKeys(  # noqa: N802
        self, request: routing_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> routing_pb2.ListApiKeysResponse:
        found = await handlers.list_api_keys(commands.ListApiKeys(request.account_id), self._uow())
        return routing_pb2.ListApiKeysResponse(keys=[key_to_wire(k) for k in found])

    async def RevokeApiKey(  # noqa: N802
        self, request: routing_pb2.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> routing_pb2.RevokeApiKeyResponse:
        key = await handlers.revoke_api_key(
            commands.RevokeApiKey(request.account_id, request.key_id, request.acting_key_id),
            self._uow(),
            self._cache,
        )
        return routing_pb2.RevokeApiKeyResponse(key=key_to_wire(key))

    async def RotateApiKey(  # noqa: N802
        self, request: routing_pb2.RotateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> routing_pb2.RotateApiKeyResponse:
        rotated = await handlers.rotate_api_key(
            commands.RotateApiKey(
                request.account_id,
                request.key_id,
                timedelta(seconds=request.grace_seconds),
                request.acting_key_id,
            ),
            self._uow(),
            self._cache,
        )
        return routing_pb2.RotateApiKeyResponse(
            key=key_to_wire(rotated.key),
            api_key=rotated.secret,
            revoked_key_id=rotated.revoked_key_id,
        )

    async def ReportOutcome(  # noqa: N802
        self, request: routing_pb2.ReportOutcomeRequest, context: grpc.aio.ServicerContext
    ) -> routing_pb2.ReportOutcomeResponse:
        await handlers.report_outcome(report_from_wire(request), self._uow(), self._health)
        return routing_pb2.ReportOutcomeResponse()

    async def ReportOutcomes(  # noqa: N802
        self, request: routing_pb2.ReportOutcomesRequest, context: grpc.aio.ServicerContext
    ) -> routing_pb2.ReportOutcomesResponse:
        async def report(items: list[Any]) -> list[Any]:
            return await handlers.report_outcomes(
                commands.ReportOutcomes([_read_report(r) for r in items]),
                self._uow,
                self._health,
            )

        check_batch_size(len(request.reports), "outcome reports")
        outcomes = await without_nul_items(request.reports, report)
        return routing_pb2.ReportOutcomesResponse(outcomes=[_report_outcome(o) for o in outcomes])

    async def GetHealth(  # noqa: N802
        self, request: routing_pb2.GetHealthRequest, context: grpc.aio.ServicerContext
    ) -> routing_pb2.GetHealthResponse:
        catalog = self._catalog()
        now = self._health.clock()
        return routing_pb2.GetHealthResponse(
            channels=[health_to_wire(self._health.view(c.id), now) for c in catalog.channels],
            routes=[
                routing_pb2.RouteHealth(
                    model=r.model,
                    kind=route_kind_to_proto(r.kind),
                    channels=route_health(r, self._health),
                )
                for m in catalog.models
                for r in m.routes
            ],
        )

    async def GetCatalog(  # noqa: N802
        self, request: routing_pb2.GetCatalogRequest, context: grpc.aio.ServicerContext
    ) -> routing_pb2.GetCatalogResponse:
        stored = self._catalog_store().stored
        return routing_pb2.GetCatalogResponse(version=version_to_wire(stored), yaml=stored.content)

    async def PutCatalog(  # noqa: N802
        self, request: routing_pb2.PutCatalogRequest, context: grpc.aio.ServicerContext
    ) -> routing_pb2.PutCatalogResponse:
        stored, changed = await self._catalog_store().put(request.yaml, request.author)
        return routing_pb2.PutCatalogResponse(version=version_to_wire(stored), changed=changed)

    async def ListCatalogVersions(  # noqa: N802
        self, request: routing_pb2.ListCatalogVersionsRequest, context: grpc.aio.ServicerContext
    ) -> routing_pb2.ListCatalogVersionsResponse:
        limit = request.limit if 0 < request.limit <= 500 else 50
        history = await self._catalog_store().history(limit)
        return routing_pb2.ListCatalogVersionsResponse(
            versions=[version_to_wire(v) for v in history]
        )
