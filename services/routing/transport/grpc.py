"""The RoutingService gRPC servicer: translate wire types, call the use case."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from services.routing import handlers
from services.routing.domain.access import Principal, Scope
from services.routing.domain.catalog import Catalog, ChargePolicy, Endpoint, Model, Route
from services.routing.storage.unit_of_work import UnitOfWork
from tokenforge.errors import DomainError, Reason
from tokenforge.routing.v1 import routing_pb2, routing_pb2_grpc
from tokenforge.wire import bucket_to_proto, from_timestamp, price_to_proto, route_kind_to_proto

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


def route_to_wire(route: Route) -> routing_pb2.Route:
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
            )
            for c in route.channels
        ],
        retry=routing_pb2.RetryPolicy(
            max_attempts=route.retry.max_attempts, retry_on=list(route.retry.retry_on)
        ),
        charge_policy=CHARGE_POLICIES_TO_WIRE[route.charge_policy],
    )


def model_to_wire(model: Model) -> routing_pb2.Model:
    return routing_pb2.Model(
        id=model.id,
        display_name=model.display_name,
        context_length=model.context_length,
        max_output_tokens=model.max_output_tokens,
        routes=[route_to_wire(r) for r in model.routes],
        endpoints=[ENDPOINTS_TO_WIRE[e] for e in model.endpoints],
    )


def _scope(wire: int) -> Scope:
    scope = SCOPES_FROM_WIRE.get(wire)
    if scope is None:
        raise DomainError(Reason.INVALID_ARGUMENT, f"Unknown scope {wire}.")
    return scope


class RoutingServicer(routing_pb2_grpc.RoutingServiceServicer):  # type: ignore[misc]
    def __init__(
        self, uow_factory: Callable[[], UnitOfWork], catalog: Callable[[], Catalog]
    ) -> None:
        self._uow = uow_factory
        self._catalog = catalog

    async def Resolve(  # noqa: N802
        self, request: routing_pb2.ResolveRequest, context: grpc.aio.ServicerContext
    ) -> routing_pb2.ResolveResponse:
        endpoint = ENDPOINTS_FROM_WIRE.get(request.endpoint)
        command = handlers.ResolveRoute(request.api_key, request.model, endpoint)
        resolution = await handlers.resolve(command, self._uow(), self._catalog())
        return routing_pb2.ResolveResponse(
            principal=principal_to_wire(resolution.principal),
            route=route_to_wire(resolution.route),
            fallback_routes=[route_to_wire(r) for r in resolution.fallback_routes],
            context_length=resolution.model.context_length,
            max_output_tokens=resolution.model.max_output_tokens,
            catalog_version=resolution.catalog_version,
            selected_model=resolution.selected_model,
        )

    async def Authenticate(  # noqa: N802
        self, request: routing_pb2.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> routing_pb2.AuthenticateResponse:
        scope = None if request.scope == routing_pb2.SCOPE_UNSPECIFIED else _scope(request.scope)
        principal = await handlers.authenticate(
            handlers.Authenticate(request.api_key, scope), self._uow()
        )
        return routing_pb2.AuthenticateResponse(principal=principal_to_wire(principal))

    async def ListModels(  # noqa: N802
        self, request: routing_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> routing_pb2.ListModelsResponse:
        catalog = self._catalog()
        return routing_pb2.ListModelsResponse(
            models=[model_to_wire(m) for m in catalog.models], catalog_version=catalog.version
        )

    async def OpenAccount(  # noqa: N802
        self, request: routing_pb2.OpenAccountRequest, context: grpc.aio.ServicerContext
    ) -> routing_pb2.OpenAccountResponse:
        opened = await handlers.open_account(
            handlers.OpenAccount(request.account_id, request.display_name), self._uow()
        )
        return routing_pb2.OpenAccountResponse(
            account_id=opened.account_id, project_id=opened.project_id
        )

    async def CreateApiKey(  # noqa: N802
        self, request: routing_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> routing_pb2.CreateApiKeyResponse:
        expires_at = from_timestamp(request.expires_at)
        command = handlers.CreateApiKey(
            account_id=request.account_id,
            project_id=request.project_id,
            name=request.name,
            scopes=tuple(_scope(s) for s in request.scopes),
            expires_at=expires_at,
        )
        created = await handlers.create_api_key(command, self._uow())
        return routing_pb2.CreateApiKeyResponse(
            key_id=created.key_id, api_key=created.secret, prefix=created.prefix
        )
