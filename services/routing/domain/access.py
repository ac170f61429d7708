"""Access: accounts' projects and API keys, and the choice of a route for a request.

`choose_route` is the whole "before" decision of a request, given a key that has
already been authenticated: which model, which route (and so which bucket pays),
and which other routes the key allows falling back to.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase

from tokenforge.errors import DomainError, Reason

from .catalog import Catalog, Endpoint, Model, Route, RouteKind
from .limits import KeyLimits


class Scope(enum.StrEnum):
    INFERENCE = "inference"
    WALLET_READ = "wallet_read"
    TOPUP = "topup"
    KEYS = "keys"


ALL_SCOPES: tuple[Scope, ...] = tuple(Scope)
ALL_ROUTE_KINDS: tuple[RouteKind, ...] = (RouteKind.OFFICIAL, RouteKind.ROUTED)

SCOPE_WORDS: dict[Scope, str] = {
    Scope.INFERENCE: "model requests",
    Scope.WALLET_READ: "reading the wallet",
    Scope.TOPUP: "top-ups",
    Scope.KEYS: "managing API keys",
}

ENDPOINT_PATHS: dict[Endpoint, str] = {
    Endpoint.CHAT: "/v1/chat/completions",
    Endpoint.EMBEDDINGS: "/v1/embeddings",
}


@dataclass(frozen=True)
class Account:
    account_id: str
    display_name: str


@dataclass(frozen=True)
class Project:
    project_id: str
    account_id: str
    name: str
    is_default: bool


@dataclass(frozen=True)
class ApiKey:
    """What is stored of a key: never the key itself, only its digest."""

    key_id: str
    account_id: str
    project_id: str
    name: str
    prefix: str
    digest: str
    created_at: datetime
    scopes: frozenset[Scope] = frozenset(ALL_SCOPES)
    # fnmatch patterns over model ids ("demo-*").
    allowed_models: tuple[str, ...] = ("*",)
    allowed_route_kinds: tuple[RouteKind, ...] = ALL_ROUTE_KINDS
    route_preference: tuple[RouteKind, ...] = ALL_ROUTE_KINDS
    # May a request move to another route (another bucket or price) when its route fails?
    fallback_allowed: bool = False
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    limits: KeyLimits = field(default_factory=KeyLimits)
    # The key this one replaced by rotation, if any.
    rotated_from: str = ""

    def is_active(self, now: datetime) -> bool:
        # A revocation may lie in the future: the grace period of a rotated key.
        if self.revoked_at is not None and now >= self.revoked_at:
            return False
        return self.expires_at is None or now < self.expires_at

    def allows_model(self, model_id: str) -> bool:
        return any(fnmatchcase(model_id, pattern) for pattern in self.allowed_models)


@dataclass(frozen=True)
class Principal:
    account_id: str
    project_id: str
    key_id: str
    scopes: frozenset[Scope] = field(default_factory=frozenset)

    @classmethod
    def of(cls, key: ApiKey) -> Principal:
        return cls(key.account_id, key.project_id, key.key_id, key.scopes)


@dataclass(frozen=True)
class Resolution:
    """The "before" list of one request."""

    principal: Principal
    model: Model
    route: Route
    fallback_routes: tuple[Route, ...]
    selected_model: str
    catalog_version: str
    lease_id: str = ""
    worst_case_micros: int = 0
    # How long the caller may answer the same request from this resolution (0: never).
    reuse_for_ms: int = 0


def request_tokens(model: Model, endpoint: Endpoint | None, prompt: int, output_cap: int) -> int:
    """The request's worst-case tokens: prompt estimate plus output cap (the model's
    max output when the client set none; embeddings generate none)."""
    if endpoint is Endpoint.EMBEDDINGS or Endpoint.CHAT not in model.endpoints:
        return max(prompt, 0)
    cap = output_cap if 0 < output_cap <= model.max_output_tokens else model.max_output_tokens
    return max(prompt, 0) + cap


def worst_case_micros(
    route: Route, model: Model, prompt: int, output_cap: int, endpoint: Endpoint | None = None
) -> int:
    """What the request may cost at most on this route, in micro-units of its bucket
    (no output tokens on the embeddings endpoint)."""
    cap = request_tokens(model, endpoint, 0, output_cap)
    return route.price.worst_case(max(prompt, 0), cap).micros


def unknown_key() -> DomainError:
    return DomainError(
        Reason.UNKNOWN_API_KEY,
        "This API key is not recognised. Check it or create a new key in the console.",
    )


def require_active(key: ApiKey | None, now: datetime) -> ApiKey:
    """An unknown, revoked or expired key all read the same: nothing to learn from it."""
    if key is None or not key.is_active(now):
        raise unknown_key()
    return key


def require_scope(key: ApiKey, scope: Scope) -> None:
    if scope not in key.scopes:
        raise DomainError(
            Reason.SCOPE_MISSING,
            f"This API key may not be used for {SCOPE_WORDS[scope]}. "
            f"Create a key with the {scope.value!r} scope in the console.",
            {"scope": scope.value},
        )


def split_selected_model(selected: str) -> tuple[str, RouteKind | None]:
    """`demo-chat@routed` -> ("demo-chat", ROUTED); no suffix -> (model, None)."""
    model_id, at, suffix = selected.partition("@")
    if not at:
        return selected, None
    try:
        return model_id, RouteKind(suffix)
    except ValueError:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            f"Unknown route kind {suffix!r} in {selected!r}: write {model_id}@official or "
            f"{model_id}@routed, or just {model_id} to let the API key's preference choose.",
            {"model": selected},
        ) from None


def choose_route(
    catalog: Catalog, key: ApiKey, selected_model: str, endpoint: Endpoint | None
) -> Resolution:
    """Pick the route for a request (the key must already be active and scoped).

    An explicit `@official` / `@routed` pins the route and so the bucket: no fallback
    to another route. Otherwise the key's preference orders the model's routes, and
    the others are fallbacks only when the key allows moving to another route.
    """
    model_id, pinned = split_selected_model(selected_model)
    model = catalog.model(model_id)
    if model is None:
        available = ", ".join(catalog.model_ids)
        raise DomainError(
            Reason.MODEL_NOT_FOUND,
            f"The model {model_id!r} does not exist. Available models: {available}.",
            {"model": selected_model, "available": ",".join(catalog.model_ids)},
        )
    if endpoint is not None and endpoint not in model.endpoints:
        served = " or ".join(ENDPOINT_PATHS[e] for e in model.endpoints)
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            f"The model {model_id!r} is not served at {ENDPOINT_PATHS[endpoint]}; "
            f"call {served} with it.",
            {"model": selected_model, "endpoint": endpoint.value},
        )
    if not key.allows_model(model_id):
        raise DomainError(
            Reason.MODEL_NOT_ALLOWED,
            f"This API key may not use the model {model_id!r}. Use a model the key allows "
            f"({', '.join(key.allowed_models)}) or create a key that allows it in the console.",
            {"model": selected_model},
        )
    principal = Principal.of(key)
    if pinned is not None:
        route = model.route(pinned)
        if route is None:
            options = ", ".join(f"{model_id}@{r.kind.value}" for r in model.routes)
            raise DomainError(
                Reason.MODEL_NOT_FOUND,
                f"The model {model_id!r} has no {pinned.value} route. Use one of: {options}.",
                {"model": selected_model},
            )
        if pinned not in key.allowed_route_kinds:
            raise _kind_not_allowed(key, model_id, selected_model)
        return Resolution(principal, model, route, (), selected_model, catalog.version)
    ranked = _ranked_routes(model, key)
    if not ranked:
        raise _kind_not_allowed(key, model_id, selected_model)
    fallbacks = tuple(ranked[1:]) if key.fallback_allowed else ()
    return Resolution(principal, model, ranked[0], fallbacks, selected_model, catalog.version)


def _ranked_routes(model: Model, key: ApiKey) -> list[Route]:
    """The model's routes the key allows, in the key's order of preference."""
    allowed = [r for r in model.routes if r.kind in key.allowed_route_kinds]
    order = {kind: rank for rank, kind in enumerate(key.route_preference)}
    return sorted(allowed, key=lambda r: order.get(r.kind, len(order)))


def _kind_not_allowed(key: ApiKey, model_id: str, selected: str) -> DomainError:
    kinds = ", ".join(k.value for k in key.allowed_route_kinds) or "none"
    return DomainError(
        Reason.MODEL_NOT_ALLOWED,
        f"This API key may not use this route of {model_id!r} (it allows {kinds} routes). "
        "Pick an allowed route kind or create a key that allows it in the console.",
        {"model": selected},
    )
