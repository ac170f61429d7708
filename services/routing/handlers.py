"""Routing use cases: plain async functions of (command, unit of work).

Resolve reads the key from the in-memory key cache (storage/key_cache.py), picks
the route (domain/access.py), orders its channels by health (domain/health.py),
and, only for a key with limits, checks and counts them in one transaction
(domain/limits.py). ReportOutcome feeds health, spend and the in-flight leases;
ReportOutcomes takes many reports with their database work in one transaction.

A resolution says how long the caller may reuse it (`reuse_for_ms`) when reusing
cannot change an outcome; see `_reuse_for_ms` for the rule and the bound.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from services.routing.domain import keys
from services.routing.domain.access import (
    Account,
    ApiKey,
    KeyPowers,
    Principal,
    Project,
    Resolution,
    Scope,
    choose_route,
    powers_for_new_key,
    request_tokens,
    require_active,
    require_usable,
    require_within,
    unknown_key,
    worst_case_micros,
)
from services.routing.domain.catalog import Catalog, Route
from services.routing.domain.commands import (
    Authenticate,
    CreateApiKey,
    ListApiKeys,
    OpenAccount,
    ReportOutcome,
    ReportOutcomes,
    ResolveRoute,
    RevokeApiKey,
    RotateApiKey,
)
from services.routing.domain.health import HealthBoard
from services.routing.domain.limits import (
    REQUESTS,
    TOKENS,
    check_in_flight,
    check_rate,
    check_spend,
    check_tokens_fit,
    spend_day,
    window_start,
)
from services.routing.storage.key_cache import DEFAULT_TTL_S, KeyCache
from services.routing.storage.unit_of_work import UnitOfWork
from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket
from tokenforge.runtime.batch_items import check_batch_size, item_outcome

# last_used_at is written at most this often per key, so the request path stays a read.
LAST_USED_RESOLUTION = timedelta(minutes=1)
DEFAULT_PROJECT_NAME = "Default project"
# A lease outlives the route's timeouts by this much; a crashed gateway's slot
# comes back after it.
LEASE_MARGIN = timedelta(seconds=60)
# Counters older than this are swept.
COUNTER_RETENTION = timedelta(minutes=10)
# The most reports one ReportOutcomes call takes.

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RotatedApiKey:
    key: ApiKey
    secret: str
    revoked_key_id: str


@dataclass(frozen=True)
class OpenedAccount:
    account_id: str
    project_id: str
    created: bool


@dataclass(frozen=True)
class CreatedApiKey:
    key_id: str
    project_id: str
    prefix: str
    # The key itself: answered once, never stored.
    secret: str


async def _active_key(
    api_key: str, uow: UnitOfWork, cache: KeyCache | None = None
) -> tuple[ApiKey, float]:
    """The key, and for how many seconds more this replica may go on trusting what it
    knows of it (its cache entry's freshness; the whole bound when read just now)."""
    # A typo fails the checksum here, without a database lookup.
    if not keys.is_well_formed(api_key):
        raise unknown_key()
    digest = keys.digest_of(api_key)
    found, key = cache.get(digest) if cache is not None else (False, None)
    fresh_for = DEFAULT_TTL_S
    if found:
        assert cache is not None
        fresh_for = cache.fresh_for(digest)
    else:
        async with uow:
            key = await uow.access.key_by_digest(digest)
        if cache is not None:
            cache.put(digest, key)
            fresh_for = cache.ttl_s
    key = require_active(key, uow.now())
    if not keys.digest_matches(api_key, key.digest):
        raise unknown_key()
    now = uow.now()
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        async with uow:
            await uow.access.touch_key(key.key_id, now)
            await uow.commit()
        key = replace(key, last_used_at=now)
        if cache is not None:
            cache.update(digest, key)
    return key, fresh_for


async def resolve(
    command: ResolveRoute,
    uow: UnitOfWork,
    catalog: Catalog,
    cache: KeyCache | None = None,
    health: HealthBoard | None = None,
    reuse_limit_ms: int = 0,
) -> Resolution:
    """`reuse_limit_ms` (TOKENFORGE_RESOLVE_REUSE_MS) caps `reuse_for_ms`; 0: no reuse."""
    key, fresh_for = await _active_key(command.api_key, uow, cache)
    require_usable(key, Scope.INFERENCE, command.client_ip)
    resolution = choose_route(catalog, key, command.model, command.endpoint)
    tokens = request_tokens(
        resolution.model, command.endpoint, command.prompt_tokens, command.output_cap
    )
    worst = worst_case_micros(
        resolution.route,
        resolution.model,
        command.prompt_tokens,
        command.output_cap,
        command.endpoint,
    )
    lease_id = ""
    if key.limits.counts_requests:
        resolution, lease_id = await _count(command, uow, key, resolution, tokens)
    reuse = _reuse_for_ms(command, key, resolution, fresh_for, uow.now(), reuse_limit_ms, health)
    route = resolution.route
    fallbacks = resolution.fallback_routes
    if health is not None:
        route = _healthy_order(route, health)
        fallbacks = tuple(_healthy_order(r, health) for r in fallbacks)
    return replace(
        resolution,
        route=route,
        fallback_routes=fallbacks,
        lease_id=lease_id,
        worst_case_micros=worst,
        reuse_for_ms=reuse,
    )


def _reuse_for_ms(
    command: ResolveRoute,
    key: ApiKey,
    resolution: Resolution,
    fresh_for_s: float,
    now: datetime,
    limit_ms: int,
    health: HealthBoard | None,
) -> int:
    """How long the caller may answer the same (key, model, endpoint, client ip) from
    this resolution (its routes as in the catalog, before ordering by health): 0
    unless reusing cannot change an outcome.

    It cannot when the key counts nothing per request (no rate, in-flight or spend
    limit: no counter, no lease, no cap to check), the request is no preview and
    names its endpoint (the caller recomputes the worst case by the endpoint's
    rule), and the channels are settled: every breaker closed (nothing skipped, no
    probe handed out) and no channel sharing load by weight with another (a random
    choice made per request). The bound: the setting, the time this replica's cache
    entry of the key stays fresh (so a revocation elsewhere reaches the caller
    within the 2 s every replica promises), the key's expiry and revocation times.
    """
    if limit_ms <= 0 or command.preview or command.endpoint is None:
        return 0
    if key.limits.counts_requests:
        return 0
    routes = (resolution.route, *resolution.fallback_routes)
    if any(len(set(r.groups)) != len(r.groups) for r in routes):
        return 0
    if health is not None and not health.all_closed(c.id for r in routes for c in r.channels):
        return 0
    bound_ms = min(float(limit_ms), fresh_for_s * 1000)
    for deadline in (key.expires_at, key.revoked_at):
        if deadline is not None:
            bound_ms = min(bound_ms, (deadline - now).total_seconds() * 1000)
    return max(0, int(bound_ms))


def _healthy_order(route: Route, health: HealthBoard) -> Route:
    return replace(route, channels=tuple(health.order(route.channels, route.groups)))


def lease_ttl(route: Route) -> timedelta:
    total_ms = sum(c.total_timeout_ms for c in route.channels)
    return timedelta(milliseconds=total_ms) + LEASE_MARGIN


async def _count(
    command: ResolveRoute, uow: UnitOfWork, key: ApiKey, resolution: Resolution, tokens: int
) -> tuple[Resolution, str]:
    """Check and count the key's limits in one transaction; a refusal rolls it back,
    so a refused request consumes nothing."""
    limits = key.limits
    check_tokens_fit(limits.tokens_per_minute, tokens)
    lease_id = ""
    async with uow:
        now = uow.now()
        day = spend_day(now)
        # Spend caps: the chosen route must be under its bucket's caps; fallback
        # routes over theirs are dropped.
        check_spend(
            limits.cap(resolution.route.bucket),
            *await uow.limits.spent(key.key_id, resolution.route.bucket, day),
        )
        fallbacks: list[Route] = []
        for other in resolution.fallback_routes:
            try:
                check_spend(
                    limits.cap(other.bucket), *await uow.limits.spent(key.key_id, other.bucket, day)
                )
                fallbacks.append(other)
            except DomainError:
                continue
        if command.preview:
            return replace(resolution, fallback_routes=tuple(fallbacks)), ""
        window = window_start(now)
        if limits.requests_per_minute:
            used = await uow.limits.add_to_window(key.key_id, REQUESTS, window, 1)
            check_rate(limits.requests_per_minute, used, REQUESTS, now)
        if limits.tokens_per_minute:
            used = await uow.limits.add_to_window(key.key_id, TOKENS, window, tokens)
            check_rate(limits.tokens_per_minute, used, TOKENS, now)
        if limits.max_in_flight:
            check_in_flight(limits.max_in_flight, await uow.limits.live_leases(key.key_id, now))
            lease_id = _new_id("lease")
            await uow.limits.add_lease(lease_id, key.key_id, now + lease_ttl(resolution.route))
        await uow.commit()
    return replace(resolution, fallback_routes=tuple(fallbacks)), lease_id


async def report_outcome(
    command: ReportOutcome, uow: UnitOfWork, health: HealthBoard | None = None
) -> None:
    """Health learns every attempt; spend is counted once per request id; the lease ends."""
    _learn_health(command, health)
    await _count_outcomes([command], uow)


async def report_outcomes(
    command: ReportOutcomes,
    uow_factory: Callable[[], UnitOfWork],
    health: HealthBoard | None = None,
) -> list[DomainError | None]:
    """`report_outcome` for each report, answered in order (None, or its refusal).

    The database work of the whole batch (leases ended, request ids remembered,
    spend added) is one transaction: a request id counts once whether it comes
    twice in the batch, in two batches or alone. Should that transaction fail, each
    report goes through its own, concurrently, as alone: only a faulty one fails.
    """
    check_batch_size(len(command.reports), "outcome reports")
    outcomes: list[DomainError | None] = [
        r if isinstance(r, DomainError) else None for r in command.reports
    ]
    reports = [(i, r) for i, r in enumerate(command.reports) if isinstance(r, ReportOutcome)]
    for _, report in reports:
        _learn_health(report, health)
    try:
        await _count_outcomes([r for _, r in reports], uow_factory())
        return outcomes
    except Exception:  # noqa: BLE001 - each goes alone: only a faulty one fails
        log.warning("counting %s outcome reports together failed", len(reports), exc_info=True)

    async def alone(index: int, report: ReportOutcome) -> None:
        async def count() -> None:
            await _count_outcomes([report], uow_factory())

        failed = await item_outcome(count(), f"The outcome report of {report.request_id}")
        if isinstance(failed, DomainError):
            outcomes[index] = failed

    await asyncio.gather(*(alone(i, r) for i, r in reports))
    return outcomes


def _learn_health(command: ReportOutcome, health: HealthBoard | None) -> None:
    if health is not None:
        for attempt in command.attempts:
            health.record(attempt.channel_id, attempt.outcome, attempt.latency_ms)


async def _count_outcomes(reports: Sequence[ReportOutcome], uow: UnitOfWork) -> None:
    """End the reports' leases and add each charged request's spend once, in one
    transaction (none when nothing is to count)."""
    lease_ids = [r.lease_id for r in reports if r.lease_id]
    charged = [r for r in reports if r.charge_micros > 0 and r.bucket is not None and r.key_id]
    if not lease_ids and not charged:
        return
    async with uow:
        if lease_ids:
            await uow.limits.end_leases(lease_ids)
        if charged:
            first = await uow.limits.first_reports({r.request_id for r in charged})
            spends: dict[tuple[str, Bucket], int] = {}
            for report in charged:
                if report.request_id not in first or report.bucket is None:
                    continue
                # Counted once: the same request id later in the batch adds nothing.
                first.discard(report.request_id)
                slot = (report.key_id, report.bucket)
                spends[slot] = spends.get(slot, 0) + report.charge_micros
            if spends:
                await uow.limits.add_spends(spend_day(uow.now()), spends)
        await uow.commit()


async def sweep_counters(uow: UnitOfWork) -> None:
    async with uow:
        await uow.limits.sweep(uow.now() - COUNTER_RETENTION)
        await uow.commit()


async def authenticate(
    command: Authenticate, uow: UnitOfWork, cache: KeyCache | None = None
) -> Principal:
    """The same checks of the key as Resolve: active, scoped, from an allowed address."""
    key, _ = await _active_key(command.api_key, uow, cache)
    require_usable(key, command.scope, command.client_ip)
    return Principal.of(key)


async def open_account(command: OpenAccount, uow: UnitOfWork) -> OpenedAccount:
    """Create the account and its default project; opening it again changes nothing."""
    account_id = command.account_id.strip()
    if not account_id:
        raise DomainError(Reason.INVALID_ARGUMENT, "account_id is required to open an account.")
    async with uow:
        created = await uow.access.add_account(Account(account_id, command.display_name))
        project = await uow.access.add_default_project(
            Project(_new_id("prj"), account_id, DEFAULT_PROJECT_NAME, True)
        )
        await uow.commit()
    return OpenedAccount(account_id, project.project_id, created)


async def create_api_key(command: CreateApiKey, uow: UnitOfWork) -> CreatedApiKey:
    if not command.account_id:
        raise DomainError(Reason.INVALID_ARGUMENT, "account_id is required to create an API key.")
    async with uow:
        now = uow.now()
        if command.expires_at is not None and command.expires_at <= now:
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                "expires_at is in the past; give a future time or none for a key that "
                "does not expire.",
            )
        if await uow.access.get_account(command.account_id) is None:
            raise DomainError(
                Reason.ACCOUNT_NOT_FOUND,
                f"No account {command.account_id!r}. Open the account first "
                "(tokenforge accounts open).",
                {"account_id": command.account_id},
            )
        actor = await _acting_key(uow, command.account_id, command.acting_key_id)
        asked = KeyPowers(
            scopes=frozenset(command.scopes),
            allowed_models=command.allowed_models,
            allowed_route_kinds=command.allowed_route_kinds,
            route_preference=command.route_preference,
            fallback_allowed=command.fallback_allowed,
            expires_at=command.expires_at,
            limits=command.limits,
        )
        powers = powers_for_new_key(asked, actor)
        if command.project_id:
            project = await uow.access.get_project(command.project_id)
            if project is None or project.account_id != command.account_id:
                raise DomainError(
                    Reason.NOT_FOUND,
                    f"No project {command.project_id!r} in this account; leave it empty to "
                    "use the default project.",
                    {"project_id": command.project_id},
                )
        else:
            project = await uow.access.default_project(command.account_id)
            if project is None:
                project = await uow.access.add_default_project(
                    Project(_new_id("prj"), command.account_id, DEFAULT_PROJECT_NAME, True)
                )
        new_key = keys.generate_key()
        key = ApiKey(
            key_id=_new_id("key"),
            account_id=command.account_id,
            project_id=project.project_id,
            name=command.name,
            prefix=new_key.prefix,
            digest=new_key.digest,
            created_at=now,
            scopes=powers.scopes,
            allowed_models=powers.allowed_models,
            allowed_route_kinds=powers.allowed_route_kinds,
            route_preference=powers.route_preference,
            fallback_allowed=powers.fallback_allowed,
            expires_at=powers.expires_at,
            limits=powers.limits,
        )
        await uow.access.add_key(key)
        await uow.commit()
    return CreatedApiKey(key.key_id, project.project_id, key.prefix, new_key.secret)


async def list_api_keys(command: ListApiKeys, uow: UnitOfWork) -> list[ApiKey]:
    async with uow:
        return await uow.access.list_keys(command.account_id)


async def _own_key(uow: UnitOfWork, account_id: str, key_id: str) -> ApiKey:
    """Another account's key reads as missing: nothing to learn about it."""
    key = await uow.access.get_key(key_id)
    if key is None or not account_id or key.account_id != account_id:
        raise DomainError(
            Reason.NOT_FOUND,
            f"No API key {key_id!r} in this account. List your keys with GET /v1/keys.",
            {"key_id": key_id},
        )
    return key


async def _acting_key(uow: UnitOfWork, account_id: str, acting_key_id: str) -> ApiKey | None:
    """The key that asks (None for an operator); it must be active and of the account."""
    if not acting_key_id:
        return None
    key = await uow.access.get_key(acting_key_id)
    if key is None or key.account_id != account_id:
        raise unknown_key()
    return require_active(key, uow.now())


async def _managed_key(
    uow: UnitOfWork, account_id: str, key_id: str, acting_key_id: str, action: str
) -> ApiKey:
    """The account's key `key_id`, which the acting key (if any) may `action`."""
    key = await _own_key(uow, account_id, key_id)
    actor = await _acting_key(uow, account_id, acting_key_id)
    if actor is not None:
        require_within(actor, KeyPowers.of(key), action)
    return key


async def revoke_api_key(
    command: RevokeApiKey, uow: UnitOfWork, cache: KeyCache | None = None
) -> ApiKey:
    async with uow:
        await _managed_key(uow, command.account_id, command.key_id, command.acting_key_id, "revoke")
        await uow.access.revoke_key(command.key_id, uow.now())
        key = await _own_key(uow, command.account_id, command.key_id)
        await uow.commit()
    if cache is not None:
        cache.forget(command.key_id)
    return key


async def rotate_api_key(
    command: RotateApiKey, uow: UnitOfWork, cache: KeyCache | None = None
) -> RotatedApiKey:
    """A new secret with the same settings; the old key is revoked after the grace."""
    if command.grace < timedelta(0):
        raise DomainError(Reason.INVALID_ARGUMENT, "The grace period cannot be negative.")
    async with uow:
        old = await _managed_key(
            uow, command.account_id, command.key_id, command.acting_key_id, "rotate"
        )
        now = uow.now()
        if not old.is_active(now):
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                f"The API key {old.key_id!r} is revoked or expired; create a new key instead.",
                {"key_id": old.key_id},
            )
        new_key = keys.generate_key()
        rotated = replace(
            old,
            key_id=_new_id("key"),
            prefix=new_key.prefix,
            digest=new_key.digest,
            created_at=now,
            revoked_at=None,
            last_used_at=None,
            rotated_from=old.key_id,
        )
        await uow.access.add_key(rotated)
        await uow.access.revoke_key(old.key_id, now + command.grace)
        await uow.commit()
    if cache is not None:
        cache.forget(old.key_id)
    return RotatedApiKey(rotated, new_key.secret, old.key_id)


def _new_id(kind: str) -> str:
    return f"{kind}_{uuid.uuid4().hex}"
