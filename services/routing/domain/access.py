"""Access: accounts' projects and API keys, and the choice of a route for a request.

`require_usable` is the whole check of a key on every authenticated route (active,
scoped, called from an allowed address). `choose_route` is the whole "before"
decision of a request, given a key that has already been checked: which model, which
route (and so which bucket pays), and which other routes the key allows falling back
to. `powers_for_new_key` and `require_within` are the one rule for keys managed by a
key: a key creates, rotates or revokes only keys within its own powers.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field, replace
from datetime import datetime
from fnmatch import fnmatchcase

from tokenforge.errors import DomainError, Reason
from tokenforge.money import format_amount

from .catalog import Catalog, Endpoint, Model, Route, RouteKind
from .limits import KeyLimits, SpendCap, require_ip_allowed


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

    @property
    def ends_at(self) -> datetime | None:
        """When the key stops working: its expiry, or a revocation still to come (the
        grace period of a rotated key), whichever is first."""
        ends = [t for t in (self.expires_at, self.revoked_at) if t is not None]
        return min(ends) if ends else None


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


def require_usable(key: ApiKey, scope: Scope | None, client_ip: str) -> None:
    """Everything a route checks of an active key, the same on every route (Resolve
    and Authenticate): the scope the route needs, and the caller's address against
    the key's IP allow-list (an unknown address is refused when there is a list)."""
    if scope is not None:
        require_scope(key, scope)
    require_ip_allowed(key.limits, client_ip)


# -- keys managed by a key ---------------------------------------------------------

_GLOB = frozenset("*?[")


@dataclass(frozen=True)
class KeyPowers:
    """What a key may do. On a request for a new key, an empty tuple, None or zero
    means "not given": the key gets what its creator has (everything for an operator)."""

    scopes: frozenset[Scope] = frozenset()
    allowed_models: tuple[str, ...] = ()
    allowed_route_kinds: tuple[RouteKind, ...] = ()
    route_preference: tuple[RouteKind, ...] = ()
    fallback_allowed: bool = False
    expires_at: datetime | None = None
    limits: KeyLimits = field(default_factory=KeyLimits)

    @classmethod
    def of(cls, key: ApiKey) -> KeyPowers:
        return cls(
            scopes=key.scopes,
            allowed_models=key.allowed_models,
            allowed_route_kinds=key.allowed_route_kinds,
            route_preference=key.route_preference,
            fallback_allowed=key.fallback_allowed,
            expires_at=key.ends_at,
            limits=key.limits,
        )


EVERYTHING = KeyPowers(
    scopes=frozenset(ALL_SCOPES),
    allowed_models=("*",),
    allowed_route_kinds=ALL_ROUTE_KINDS,
    route_preference=ALL_ROUTE_KINDS,
)


def powers_for_new_key(asked: KeyPowers, creator: ApiKey | None) -> KeyPowers:
    """The powers of a new key: what was asked, and for what was not given, the
    creator's own (an operator, `creator` None, gives everything not asked for). A key
    creates only keys within its own powers (`require_within`)."""
    base = EVERYTHING if creator is None else KeyPowers.of(creator)
    powers = KeyPowers(
        scopes=asked.scopes or base.scopes,
        allowed_models=asked.allowed_models or base.allowed_models,
        allowed_route_kinds=asked.allowed_route_kinds or base.allowed_route_kinds,
        route_preference=asked.route_preference or base.route_preference,
        fallback_allowed=asked.fallback_allowed,
        expires_at=asked.expires_at or base.expires_at,
        limits=_inherit_limits(asked.limits, base.limits),
    )
    if creator is not None:
        require_within(creator, powers, "create")
    return powers


def _inherit_limits(asked: KeyLimits, base: KeyLimits) -> KeyLimits:
    """Each limit not given (zero, empty) is the base's; a spend cap per bucket too."""
    caps = {c.bucket: c for c in asked.spend_caps}
    for cap in base.spend_caps:
        mine = caps.get(cap.bucket, SpendCap(cap.bucket))
        caps[cap.bucket] = replace(
            mine,
            daily_micros=mine.daily_micros or cap.daily_micros,
            total_micros=mine.total_micros or cap.total_micros,
        )
    return KeyLimits(
        ip_allowlist=asked.ip_allowlist or base.ip_allowlist,
        requests_per_minute=asked.requests_per_minute or base.requests_per_minute,
        tokens_per_minute=asked.tokens_per_minute or base.tokens_per_minute,
        max_in_flight=asked.max_in_flight or base.max_in_flight,
        spend_caps=tuple(caps.values()),
    )


def require_within(actor: ApiKey, powers: KeyPowers, action: str) -> None:
    """A key may `action` (create, rotate, revoke) only a key within its own powers:
    scopes, models and route kinds a subset of its own, fallback only if it has it,
    every limit and spend cap set and no higher, every address range inside one of
    its own, an end no later. Refused (403) naming everything that exceeds."""
    mine = KeyPowers.of(actor)
    exceeds: dict[str, str] = {}
    if extra := sorted(s.value for s in powers.scopes - mine.scopes):
        exceeds["scopes"] = f"scopes {', '.join(extra)} (the key has {_words(mine.scopes)})"
    wider = [p for p in powers.allowed_models if not _pattern_within(p, mine.allowed_models)]
    if wider:
        exceeds["allowed_models"] = (
            f"models {', '.join(wider)} (the key allows {', '.join(mine.allowed_models)})"
        )
    if kinds := [k.value for k in powers.allowed_route_kinds if k not in mine.allowed_route_kinds]:
        exceeds["allowed_route_kinds"] = (
            f"{' and '.join(kinds)} routes (the key allows "
            f"{', '.join(k.value for k in mine.allowed_route_kinds) or 'none'})"
        )
    if powers.fallback_allowed and not mine.fallback_allowed:
        exceeds["fallback_allowed"] = "falling back to another route (the key may not)"
    if mine.expires_at is not None and (
        powers.expires_at is None or powers.expires_at > mine.expires_at
    ):
        exceeds["expires_at"] = f"an end after the key's own ({mine.expires_at.isoformat()})"
    exceeds.update(_limits_beyond(powers.limits, mine.limits))
    if exceeds:
        instead = (
            "Ask for no more than the key has (a setting left out is the key's own)"
            if action == "create"
            else "Use a key with at least those powers"
        )
        raise DomainError(
            Reason.PERMISSION_DENIED,
            f"This API key may {action} only keys within its own powers, and this one "
            f"would have more: {'; '.join(exceeds.values())}. {instead}, or have an "
            "operator do it (tokenforge keys).",
            {"param": next(iter(exceeds)), "exceeds": ",".join(exceeds)},
        )


def _words(scopes: frozenset[Scope]) -> str:
    return ", ".join(sorted(s.value for s in scopes)) or "none"


def _pattern_within(pattern: str, patterns: tuple[str, ...]) -> bool:
    """Does every model id `pattern` matches match one of `patterns`? Answered
    safely: yes for the same pattern, a plain id one of them matches, or a pattern
    starting with the fixed prefix of a `prefix*` one; otherwise no."""
    for other in patterns:
        if pattern == other:
            return True
        if not _GLOB & set(pattern) and fnmatchcase(pattern, other):
            return True
        prefix = other[:-1]
        if other.endswith("*") and not _GLOB & set(prefix) and pattern.startswith(prefix):
            return True
    return False


def _limits_beyond(asked: KeyLimits, mine: KeyLimits) -> dict[str, str]:
    exceeds: dict[str, str] = {}
    wider = [e for e in asked.ip_allowlist if not _network_within(e, mine.ip_allowlist)]
    if mine.ip_allowlist and (wider or not asked.ip_allowlist):
        exceeds["ip_allowlist"] = (
            f"addresses {', '.join(wider) or 'anywhere'} "
            f"(the key allows {', '.join(mine.ip_allowlist)})"
        )
    for name in ("requests_per_minute", "tokens_per_minute", "max_in_flight"):
        limit, asked_for = getattr(mine, name), getattr(asked, name)
        if limit and not 0 < asked_for <= limit:
            exceeds[name] = f"{name} {asked_for or 'unlimited'} (the key has {limit})"
    for cap in mine.spend_caps:
        theirs = asked.cap(cap.bucket) or SpendCap(cap.bucket)
        for kind in ("daily_micros", "total_micros"):
            limit, asked_for = getattr(cap, kind), getattr(theirs, kind)
            if limit and not 0 < asked_for <= limit:
                asked_words = format_amount(asked_for, cap.bucket) if asked_for else "none"
                exceeds["spend_caps"] = (
                    f"a {kind.removesuffix('_micros')} spend cap on the {cap.bucket.label} of "
                    f"{asked_words} (the key has {format_amount(limit, cap.bucket)})"
                )
    return exceeds


def _network_within(entry: str, allowed: tuple[str, ...]) -> bool:
    network = ipaddress.ip_network(entry, strict=False)
    for other in allowed:
        mine = ipaddress.ip_network(other, strict=False)
        if network.version == mine.version and network.subnet_of(mine):  # type: ignore[arg-type]
            return True
    return False


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
