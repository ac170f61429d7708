"""Routing use cases against an in-memory repository: no network, no database."""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.routing import handlers
from services.routing.domain import commands
from services.routing.domain.access import Account, ApiKey, Project, Scope
from services.routing.domain.catalog import Catalog, Endpoint, RouteKind, parse_catalog
from services.routing.domain.health import HealthBoard
from services.routing.domain.keys import digest_of
from services.routing.domain.limits import TOTAL, KeyLimits, SpendCap, spend_day
from services.routing.storage.catalog_file import DEMO_CATALOG, read_catalog
from services.routing.storage.key_cache import KeyCache
from services.routing.storage.repository import AccessRepository, LimitsRepository
from services.routing.storage.unit_of_work import UnitOfWork
from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FakeAccessRepository(AccessRepository):
    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.projects: dict[str, Project] = {}
        self.keys: dict[str, ApiKey] = {}
        self.lookups = 0
        self.touches: list[tuple[str, datetime]] = []

    async def add_account(self, account: Account) -> bool:
        if account.account_id in self.accounts:
            return False
        self.accounts[account.account_id] = account
        return True

    async def get_account(self, account_id: str) -> Account | None:
        return self.accounts.get(account_id)

    async def add_default_project(self, project: Project) -> Project:
        existing = await self.default_project(project.account_id)
        if existing is not None:
            return existing
        self.projects[project.project_id] = project
        return project

    async def get_project(self, project_id: str) -> Project | None:
        return self.projects.get(project_id)

    async def default_project(self, account_id: str) -> Project | None:
        return next(
            (p for p in self.projects.values() if p.account_id == account_id and p.is_default),
            None,
        )

    async def add_key(self, key: ApiKey) -> None:
        self.keys[key.digest] = key

    async def key_by_digest(self, digest: str) -> ApiKey | None:
        self.lookups += 1
        return self.keys.get(digest)

    async def touch_key(self, key_id: str, when: datetime) -> None:
        self.touches.append((key_id, when))
        for digest, key in self.keys.items():
            if key.key_id == key_id:
                self.keys[digest] = replace(key, last_used_at=when)

    async def get_key(self, key_id: str) -> ApiKey | None:
        return next((k for k in self.keys.values() if k.key_id == key_id), None)

    async def list_keys(self, account_id: str) -> list[ApiKey]:
        return [k for k in self.keys.values() if k.account_id == account_id]

    async def revoke_key(self, key_id: str, when: datetime) -> None:
        for digest, key in self.keys.items():
            if key.key_id == key_id:
                at = when if key.revoked_at is None else min(key.revoked_at, when)
                self.keys[digest] = replace(key, revoked_at=at)


class FakeLimitsRepository(LimitsRepository):
    """Counters in dicts; a transaction's changes apply only on commit (like the
    database, where a refused request rolls its increments back)."""

    def __init__(self) -> None:
        self.windows: dict[tuple[str, str, datetime], int] = {}
        self.leases: dict[str, tuple[str, datetime]] = {}
        self.spend: dict[tuple[str, Bucket, str], int] = {}
        self.reports: set[str] = set()

    async def add_to_window(self, key_id: str, metric: str, window: datetime, n: int) -> int:
        slot = (key_id, metric, window)
        self.windows[slot] = self.windows.get(slot, 0) + n
        return self.windows[slot]

    async def live_leases(self, key_id: str, now: datetime) -> int:
        return sum(1 for k, until in self.leases.values() if k == key_id and until > now)

    async def add_lease(self, lease_id: str, key_id: str, expires_at: datetime) -> None:
        self.leases[lease_id] = (key_id, expires_at)

    async def end_leases(self, lease_ids: Collection[str]) -> None:
        for lease_id in lease_ids:
            self.leases.pop(lease_id, None)

    async def spent(self, key_id: str, bucket: Bucket, day: str) -> tuple[int, int]:
        return self.spend.get((key_id, bucket, day), 0), self.spend.get((key_id, bucket, TOTAL), 0)

    async def add_spends(self, day: str, spends: Mapping[tuple[str, Bucket], int]) -> None:
        for (key_id, bucket), micros in spends.items():
            for period in (day, TOTAL):
                self.spend[(key_id, bucket, period)] = (
                    self.spend.get((key_id, bucket, period), 0) + micros
                )

    async def first_reports(self, request_ids: Collection[str]) -> set[str]:
        first = set(request_ids) - self.reports
        self.reports |= first
        return first

    async def sweep(self, before: datetime) -> None:
        self.windows = {k: v for k, v in self.windows.items() if k[2] >= before}


class FakeUnitOfWork(UnitOfWork):
    def __init__(
        self, repo: FakeAccessRepository, limits: FakeLimitsRepository, clock: list[datetime]
    ) -> None:
        super().__init__(lambda: clock[0])
        self.access = repo
        self._committed_limits = limits
        self.committed = 0

    async def __aenter__(self) -> FakeUnitOfWork:
        self.limits = copy.deepcopy(self._committed_limits)
        return self

    async def commit(self) -> None:
        self.committed += 1
        self._committed_limits.__dict__.update(self.limits.__dict__)

    async def rollback(self) -> None:
        pass


class World:
    def __init__(self) -> None:
        self.repo = FakeAccessRepository()
        self.limits = FakeLimitsRepository()
        self.clock = [START]

    def uow(self) -> FakeUnitOfWork:
        return FakeUnitOfWork(self.repo, self.limits, self.clock)


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return read_catalog(DEMO_CATALOG, {})


async def test_opening_an_account_twice_keeps_its_first_default_project(world: World) -> None:
    first = await handlers.open_account(commands.OpenAccount("acct-1", "One"), world.uow())
    again = await handlers.open_account(commands.OpenAccount("acct-1", "One"), world.uow())

    assert first.created and not again.created
    assert first.project_id == again.project_id
    assert len(world.repo.projects) == 1


async def test_a_key_created_without_scopes_gets_all_four(world: World) -> None:
    await handlers.open_account(commands.OpenAccount("acct-1"), world.uow())

    created = await handlers.create_api_key(commands.CreateApiKey("acct-1"), world.uow())

    stored = next(iter(world.repo.keys.values()))
    assert stored.scopes == frozenset(Scope)
    assert stored.key_id == created.key_id
    assert created.secret not in (stored.digest, stored.prefix)


async def test_a_key_for_another_accounts_project_is_refused(world: World) -> None:
    other = await handlers.open_account(commands.OpenAccount("acct-2"), world.uow())
    await handlers.open_account(commands.OpenAccount("acct-1"), world.uow())

    with pytest.raises(DomainError) as caught:
        await handlers.create_api_key(
            commands.CreateApiKey("acct-1", project_id=other.project_id), world.uow()
        )

    assert caught.value.reason is Reason.NOT_FOUND
    assert world.repo.keys == {}


async def test_a_mistyped_key_is_refused_without_a_lookup(world: World, catalog: Catalog) -> None:
    await handlers.open_account(commands.OpenAccount("acct-1"), world.uow())
    created = await handlers.create_api_key(commands.CreateApiKey("acct-1"), world.uow())
    typo = created.secret[:-1] + ("0" if created.secret[-1] != "0" else "1")

    with pytest.raises(DomainError) as caught:
        await handlers.resolve(commands.ResolveRoute(typo, "demo-chat"), world.uow(), catalog)

    assert caught.value.reason is Reason.UNKNOWN_API_KEY
    assert world.repo.lookups == 0


async def test_last_used_is_written_at_most_once_a_minute(world: World, catalog: Catalog) -> None:
    await handlers.open_account(commands.OpenAccount("acct-1"), world.uow())
    created = await handlers.create_api_key(commands.CreateApiKey("acct-1"), world.uow())
    command = commands.ResolveRoute(created.secret, "demo-chat", Endpoint.CHAT)

    for seconds in (0, 10, 59, 61):
        world.clock[0] = START + timedelta(seconds=seconds)
        await handlers.resolve(command, world.uow(), catalog)

    assert [when for _, when in world.repo.touches] == [START, START + timedelta(seconds=61)]


async def test_authenticate_answers_the_principal_of_an_active_key(world: World) -> None:
    opened = await handlers.open_account(commands.OpenAccount("acct-1"), world.uow())
    created = await handlers.create_api_key(
        commands.CreateApiKey("acct-1", scopes=(Scope.WALLET_READ,)), world.uow()
    )

    principal = await handlers.authenticate(
        commands.Authenticate(created.secret, Scope.WALLET_READ), world.uow()
    )

    assert (principal.account_id, principal.project_id) == ("acct-1", opened.project_id)
    with pytest.raises(DomainError) as caught:
        await handlers.authenticate(commands.Authenticate(created.secret, Scope.KEYS), world.uow())
    assert caught.value.reason is Reason.SCOPE_MISSING


async def test_an_expired_key_stops_working_when_its_time_comes(
    world: World, catalog: Catalog
) -> None:
    await handlers.open_account(commands.OpenAccount("acct-1"), world.uow())
    created = await handlers.create_api_key(
        commands.CreateApiKey("acct-1", expires_at=START + timedelta(hours=1)), world.uow()
    )
    command = commands.ResolveRoute(created.secret, "demo-chat")

    assert (await handlers.resolve(command, world.uow(), catalog)).route.model == "demo-chat"
    world.clock[0] = START + timedelta(hours=1)
    with pytest.raises(DomainError) as caught:
        await handlers.resolve(command, world.uow(), catalog)
    assert caught.value.reason is Reason.UNKNOWN_API_KEY


# -- limits, keys management ----------------------------------------------


async def _key(world: World, account: str = "acct-1", **settings: object) -> str:
    await handlers.open_account(commands.OpenAccount(account), world.uow())
    created = await handlers.create_api_key(
        commands.CreateApiKey(account, **settings),  # type: ignore[arg-type]
        world.uow(),
    )
    return created.secret


async def test_requests_over_the_minute_limit_are_refused_and_refusals_consume_nothing(
    world: World, catalog: Catalog
) -> None:
    secret = await _key(world, limits=KeyLimits(requests_per_minute=2))
    command = commands.ResolveRoute(secret, "demo-chat", Endpoint.CHAT)
    await handlers.resolve(command, world.uow(), catalog)
    await handlers.resolve(command, world.uow(), catalog)

    for _ in range(3):
        with pytest.raises(DomainError) as caught:
            await handlers.resolve(command, world.uow(), catalog)
        assert caught.value.reason is Reason.RATE_LIMITED
        assert caught.value.metadata is not None and caught.value.metadata["retry_after_s"]
    assert list(world.limits.windows.values()) == [2]

    world.clock[0] = START + timedelta(minutes=1)
    await handlers.resolve(command, world.uow(), catalog)


async def test_tokens_per_minute_count_the_prompt_estimate_plus_the_output_cap(
    world: World, catalog: Catalog
) -> None:
    secret = await _key(world, limits=KeyLimits(tokens_per_minute=1000))
    command = commands.ResolveRoute(
        secret, "demo-chat", Endpoint.CHAT, prompt_tokens=300, output_cap=200
    )
    await handlers.resolve(command, world.uow(), catalog)
    await handlers.resolve(command, world.uow(), catalog)

    with pytest.raises(DomainError) as caught:
        await handlers.resolve(command, world.uow(), catalog)
    assert caught.value.reason is Reason.RATE_LIMITED
    assert caught.value.metadata is not None and caught.value.metadata["limit_kind"] == "tokens"


async def test_in_flight_leases_cap_requests_until_the_gateway_reports_their_end(
    world: World, catalog: Catalog
) -> None:
    secret = await _key(world, limits=KeyLimits(max_in_flight=1))
    command = commands.ResolveRoute(secret, "demo-chat", Endpoint.CHAT)
    first = await handlers.resolve(command, world.uow(), catalog)
    assert first.lease_id

    with pytest.raises(DomainError) as caught:
        await handlers.resolve(command, world.uow(), catalog)
    assert caught.value.reason is Reason.RATE_LIMITED

    await handlers.report_outcome(
        commands.ReportOutcome("req-1", first.principal.key_id, first.lease_id), world.uow()
    )
    assert (await handlers.resolve(command, world.uow(), catalog)).lease_id


async def test_a_lease_of_a_crashed_gateway_expires_by_its_ttl(
    world: World, catalog: Catalog
) -> None:
    secret = await _key(world, limits=KeyLimits(max_in_flight=1))
    command = commands.ResolveRoute(secret, "demo-chat", Endpoint.CHAT)
    first = await handlers.resolve(command, world.uow(), catalog)

    world.clock[0] = START + handlers.lease_ttl(first.route) + timedelta(seconds=1)
    assert (await handlers.resolve(command, world.uow(), catalog)).lease_id


async def test_spend_cap_refuses_after_reported_charges_reach_it_and_counts_a_report_once(
    world: World, catalog: Catalog
) -> None:
    cap = SpendCap(Bucket.CREDIT, daily_micros=1_000)
    secret = await _key(
        world, limits=KeyLimits(spend_caps=(cap,)), route_preference=(RouteKind.OFFICIAL,)
    )
    command = commands.ResolveRoute(secret, "demo-chat", Endpoint.CHAT)
    resolved = await handlers.resolve(command, world.uow(), catalog)
    report = commands.ReportOutcome(
        "req-1", resolved.principal.key_id, bucket=Bucket.CREDIT, charge_micros=600
    )
    await handlers.report_outcome(report, world.uow())
    await handlers.report_outcome(report, world.uow())  # a retried report
    await handlers.resolve(command, world.uow(), catalog)

    await handlers.report_outcome(replace(report, request_id="req-2"), world.uow())
    with pytest.raises(DomainError) as caught:
        await handlers.resolve(command, world.uow(), catalog)
    assert caught.value.reason is Reason.SPEND_CAP_REACHED
    # The routed bucket has no cap: pinning it still works.
    pinned = replace(command, model="demo-chat@routed")
    assert (await handlers.resolve(pinned, world.uow(), catalog)).route.bucket is Bucket.ROUTED
    # A new UTC day resets a daily cap.
    world.clock[0] = START + timedelta(days=1)
    await handlers.resolve(command, world.uow(), catalog)


async def test_a_key_used_from_an_address_off_its_allow_list_is_denied(
    world: World, catalog: Catalog
) -> None:
    secret = await _key(world, limits=KeyLimits(ip_allowlist=("10.0.0.0/8",)))
    await handlers.resolve(
        commands.ResolveRoute(secret, "demo-chat", client_ip="10.1.2.3"), world.uow(), catalog
    )
    with pytest.raises(DomainError) as caught:
        await handlers.resolve(
            commands.ResolveRoute(secret, "demo-chat", client_ip="192.0.2.1"),
            world.uow(),
            catalog,
        )
    assert caught.value.reason is Reason.PERMISSION_DENIED


async def test_a_revoked_key_stops_at_once_on_this_replica_and_within_the_cache_ttl_elsewhere(
    world: World, catalog: Catalog
) -> None:
    secret = await _key(world)
    here, elsewhere_clock = KeyCache(), [0.0]
    elsewhere = KeyCache(ttl_s=2.0, clock=lambda: elsewhere_clock[0])
    command = commands.ResolveRoute(secret, "demo-chat")
    key_id = (await handlers.resolve(command, world.uow(), catalog, here)).principal.key_id
    await handlers.resolve(command, world.uow(), catalog, elsewhere)

    await handlers.revoke_api_key(commands.RevokeApiKey("acct-1", key_id), world.uow(), here)

    with pytest.raises(DomainError):
        await handlers.resolve(command, world.uow(), catalog, here)
    elsewhere_clock[0] = 1.9  # still cached on the other replica, inside the bound
    await handlers.resolve(command, world.uow(), catalog, elsewhere)
    elsewhere_clock[0] = 2.0
    with pytest.raises(DomainError) as caught:
        await handlers.resolve(command, world.uow(), catalog, elsewhere)
    assert caught.value.reason is Reason.UNKNOWN_API_KEY


async def test_rotation_keeps_the_settings_and_the_old_key_works_until_the_grace_ends(
    world: World, catalog: Catalog
) -> None:
    old_secret = await _key(world, limits=KeyLimits(requests_per_minute=7), name="ci")
    old = next(iter(world.repo.keys.values()))

    rotated = await handlers.rotate_api_key(
        commands.RotateApiKey("acct-1", old.key_id, timedelta(seconds=30)), world.uow()
    )

    assert rotated.key.limits.requests_per_minute == 7 and rotated.key.name == "ci"
    assert rotated.key.rotated_from == old.key_id and rotated.secret != old_secret
    await handlers.resolve(commands.ResolveRoute(old_secret, "demo-chat"), world.uow(), catalog)
    await handlers.resolve(commands.ResolveRoute(rotated.secret, "demo-chat"), world.uow(), catalog)
    world.clock[0] = START + timedelta(seconds=30)
    with pytest.raises(DomainError):
        await handlers.resolve(commands.ResolveRoute(old_secret, "demo-chat"), world.uow(), catalog)


async def test_an_account_cannot_list_revoke_or_rotate_another_accounts_keys(
    world: World,
) -> None:
    await _key(world, "acct-b")
    victim = next(iter(world.repo.keys.values()))
    await _key(world, "acct-a")

    listed = await handlers.list_api_keys(commands.ListApiKeys("acct-a"), world.uow())
    assert victim.key_id not in [k.key_id for k in listed]
    for action in (
        handlers.revoke_api_key(commands.RevokeApiKey("acct-a", victim.key_id), world.uow()),
        handlers.rotate_api_key(commands.RotateApiKey("acct-a", victim.key_id), world.uow()),
    ):
        with pytest.raises(DomainError) as caught:
            await action
        assert caught.value.reason is Reason.NOT_FOUND
    assert (await world.repo.get_key(victim.key_id)).revoked_at is None  # type: ignore[union-attr]


async def test_authenticate_checks_the_ip_allow_list_as_resolve_does(world: World) -> None:
    secret = await _key(world, limits=KeyLimits(ip_allowlist=("10.11.12.0/24",)))

    principal = await handlers.authenticate(
        commands.Authenticate(secret, Scope.WALLET_READ, "10.11.12.40"), world.uow()
    )

    assert principal.account_id == "acct-1"
    for ip in ("127.0.0.1", ""):
        with pytest.raises(DomainError) as caught:
            await handlers.authenticate(
                commands.Authenticate(secret, Scope.WALLET_READ, ip), world.uow()
            )
        assert caught.value.reason is Reason.PERMISSION_DENIED


def _stored(world: World, secret: str) -> ApiKey:
    return world.repo.keys[digest_of(secret)]


async def test_a_key_creates_only_keys_within_its_powers_and_nothing_is_stored_otherwise(
    world: World,
) -> None:
    parent = _stored(
        world,
        await _key(
            world,
            scopes=(Scope.INFERENCE, Scope.KEYS),
            allowed_models=("demo-embed",),
            allowed_route_kinds=(RouteKind.ROUTED,),
        ),
    )
    before = dict(world.repo.keys)

    with pytest.raises(DomainError) as caught:
        await handlers.create_api_key(
            commands.CreateApiKey(
                "acct-1",
                scopes=tuple(Scope),
                allowed_models=("*",),
                allowed_route_kinds=(RouteKind.OFFICIAL, RouteKind.ROUTED),
                acting_key_id=parent.key_id,
            ),
            world.uow(),
        )

    assert caught.value.reason is Reason.PERMISSION_DENIED
    assert world.repo.keys == before
    child = await handlers.create_api_key(
        commands.CreateApiKey("acct-1", name="child", acting_key_id=parent.key_id), world.uow()
    )
    stored = _stored(world, child.secret)
    assert stored.scopes == parent.scopes
    assert stored.allowed_models == ("demo-embed",)
    assert stored.allowed_route_kinds == (RouteKind.ROUTED,)


async def test_a_key_of_another_account_or_a_revoked_one_creates_nothing(world: World) -> None:
    other = _stored(world, await _key(world, "acct-2"))
    revoked = _stored(world, await _key(world, "acct-1"))
    await handlers.revoke_api_key(commands.RevokeApiKey("acct-1", revoked.key_id), world.uow())
    before = dict(world.repo.keys)

    for actor in (other.key_id, revoked.key_id, "key_missing"):
        with pytest.raises(DomainError) as caught:
            await handlers.create_api_key(
                commands.CreateApiKey("acct-1", acting_key_id=actor), world.uow()
            )
        assert caught.value.reason is Reason.UNKNOWN_API_KEY
    assert world.repo.keys == before


async def test_a_restricted_key_can_neither_rotate_nor_revoke_a_broader_one(
    world: World,
) -> None:
    owner = _stored(world, await _key(world))
    restricted = _stored(world, await _key(world, scopes=(Scope.KEYS,)))

    for action in (
        handlers.rotate_api_key(
            commands.RotateApiKey("acct-1", owner.key_id, acting_key_id=restricted.key_id),
            world.uow(),
        ),
        handlers.revoke_api_key(
            commands.RevokeApiKey("acct-1", owner.key_id, restricted.key_id), world.uow()
        ),
    ):
        with pytest.raises(DomainError) as caught:
            await action
        assert caught.value.reason is Reason.PERMISSION_DENIED
    assert len(world.repo.keys) == 2
    assert (await world.repo.get_key(owner.key_id)).revoked_at is None  # type: ignore[union-attr]
    rotated = await handlers.rotate_api_key(
        commands.RotateApiKey("acct-1", restricted.key_id, acting_key_id=owner.key_id),
        world.uow(),
    )
    assert rotated.key.scopes == frozenset({Scope.KEYS})


async def test_a_preview_counts_no_limit(world: World, catalog: Catalog) -> None:
    secret = await _key(world, limits=KeyLimits(requests_per_minute=1, max_in_flight=1))
    preview = commands.ResolveRoute(secret, "demo-chat", preview=True)
    for _ in range(3):
        assert (await handlers.resolve(preview, world.uow(), catalog)).lease_id == ""
    assert world.limits.windows == {} and world.limits.leases == {}


# -- outcome reports in batches ---------------------------------------------


def _report(
    request_id: str, key_id: str, micros: int, lease_id: str = ""
) -> commands.ReportOutcome:
    return commands.ReportOutcome(
        request_id, key_id, lease_id, bucket=Bucket.CREDIT, charge_micros=micros
    )


def _spent(world: World, key_id: str) -> int:
    return world.limits.spend.get((key_id, Bucket.CREDIT, TOTAL), 0)


async def test_a_batch_counts_each_request_id_once_within_it_across_batches_and_alone(
    world: World,
) -> None:
    answers = await handlers.report_outcomes(
        commands.ReportOutcomes(
            [
                _report("req-1", "key-a", 100),
                _report("req-1", "key-a", 100),
                _report("req-2", "key-a", 10),
            ]
        ),
        world.uow,
    )
    assert answers == [None, None, None]
    assert _spent(world, "key-a") == 110

    await handlers.report_outcomes(
        commands.ReportOutcomes([_report("req-2", "key-a", 10), _report("req-3", "key-b", 7)]),
        world.uow,
    )
    await handlers.report_outcome(_report("req-3", "key-b", 7), world.uow())

    assert (_spent(world, "key-a"), _spent(world, "key-b")) == (110, 7)
    day = spend_day(START)
    assert world.limits.spend[("key-a", Bucket.CREDIT, day)] == 110


async def test_a_batch_ends_every_lease_and_answers_an_unreadable_report_with_its_refusal(
    world: World, catalog: Catalog
) -> None:
    secret = await _key(world, limits=KeyLimits(max_in_flight=2))
    command = commands.ResolveRoute(secret, "demo-chat", Endpoint.CHAT)
    first = await handlers.resolve(command, world.uow(), catalog)
    second = await handlers.resolve(command, world.uow(), catalog)
    with pytest.raises(DomainError):
        await handlers.resolve(command, world.uow(), catalog)
    unreadable = DomainError(Reason.INVALID_ARGUMENT, "bucket must be `credit` or `routed`.")

    answers = await handlers.report_outcomes(
        commands.ReportOutcomes(
            [
                commands.ReportOutcome("req-1", first.principal.key_id, first.lease_id),
                unreadable,
                commands.ReportOutcome("req-2", second.principal.key_id, second.lease_id),
            ]
        ),
        world.uow,
    )

    assert answers == [None, unreadable, None]
    assert world.limits.leases == {}
    assert (await handlers.resolve(command, world.uow(), catalog)).lease_id


async def test_a_batch_of_more_than_256_reports_is_refused_whole(world: World) -> None:
    reports = [_report(f"req-{i}", "key-a", 1) for i in range(257)]

    with pytest.raises(DomainError) as caught:
        await handlers.report_outcomes(commands.ReportOutcomes(reports), world.uow)

    assert caught.value.reason is Reason.INVALID_ARGUMENT
    assert world.limits.spend == {} and world.limits.reports == set()


async def test_health_learns_every_attempt_of_every_report_in_a_batch(world: World) -> None:
    health = HealthBoard()
    attempts = (
        commands.AttemptOutcome("ch-1", "ok", 10),
        commands.AttemptOutcome("ch-2", "timeout", 9),
    )

    await handlers.report_outcomes(
        commands.ReportOutcomes([commands.ReportOutcome("req-1", "key-a", attempts=attempts)] * 2),
        world.uow,
        health,
    )

    assert health.view("ch-1").attempts_in_window == 2
    assert health.view("ch-2").attempts_in_window == 2


class FailingForKeyLimits(FakeLimitsRepository):
    """Refuses to add spend for one key (a row the database would refuse)."""

    async def add_spends(self, day: str, spends: Mapping[tuple[str, Bucket], int]) -> None:
        if any(key_id == "key-bad" for key_id, _ in spends):
            raise RuntimeError("the database refused the row")
        await super().add_spends(day, spends)


async def test_when_the_batch_transaction_fails_only_the_faulty_report_fails(world: World) -> None:
    world.limits = FailingForKeyLimits()

    answers = await handlers.report_outcomes(
        commands.ReportOutcomes(
            [
                _report("req-1", "key-a", 5),
                _report("req-2", "key-bad", 5),
                _report("req-3", "key-c", 5),
            ]
        ),
        world.uow,
    )

    assert answers[0] is None and answers[2] is None
    assert isinstance(answers[1], DomainError) and answers[1].reason is Reason.INTERNAL
    assert (_spent(world, "key-a"), _spent(world, "key-bad"), _spent(world, "key-c")) == (5, 0, 5)
    # The faulty report's id is not remembered: it counts when it is sent again and works.
    assert world.limits.reports == {"req-1", "req-3"}


# -- reusable resolutions ---------------------------------------------------


REUSE_MS = 1000


async def _reuse_of(
    world: World,
    catalog: Catalog,
    secret: str,
    *,
    cache: KeyCache | None = None,
    health: HealthBoard | None = None,
    limit_ms: int = REUSE_MS,
    **command: object,
) -> int:
    resolve = commands.ResolveRoute(
        secret,
        str(command.pop("model", "demo-chat")),
        command.pop("endpoint", Endpoint.CHAT),  # type: ignore[arg-type]
        **command,  # type: ignore[arg-type]
    )
    resolution = await handlers.resolve(resolve, world.uow(), catalog, cache, health, limit_ms)
    return resolution.reuse_for_ms


async def test_a_key_that_counts_nothing_may_reuse_its_resolution_up_to_the_setting(
    world: World, catalog: Catalog
) -> None:
    secret = await _key(world, limits=KeyLimits(ip_allowlist=("10.0.0.0/8",)))

    assert await _reuse_of(world, catalog, secret, client_ip="10.0.0.1") == REUSE_MS
    assert await _reuse_of(world, catalog, secret, client_ip="10.0.0.1", limit_ms=300) == 300
    assert await _reuse_of(world, catalog, secret, client_ip="10.0.0.1", limit_ms=0) == 0


@pytest.mark.parametrize(
    "limits",
    [
        KeyLimits(requests_per_minute=100),
        KeyLimits(tokens_per_minute=100_000),
        KeyLimits(max_in_flight=10),
        KeyLimits(spend_caps=(SpendCap(Bucket.ROUTED, daily_micros=1_000),)),
        KeyLimits(spend_caps=(SpendCap(Bucket.CREDIT, total_micros=1_000),)),
    ],
    ids=["requests", "tokens", "in_flight", "daily_spend", "total_spend"],
)
async def test_a_key_with_any_counted_limit_never_reuses_a_resolution(
    world: World, catalog: Catalog, limits: KeyLimits
) -> None:
    secret = await _key(world, limits=limits)

    assert await _reuse_of(world, catalog, secret) == 0


async def test_a_preview_or_a_request_without_endpoint_never_reuses(
    world: World, catalog: Catalog
) -> None:
    secret = await _key(world)

    assert await _reuse_of(world, catalog, secret, preview=True) == 0
    assert await _reuse_of(world, catalog, secret, endpoint=None) == 0


async def test_reuse_never_outlives_the_replicas_cache_entry_of_the_key(
    world: World, catalog: Catalog
) -> None:
    secret = await _key(world)
    clock = [0.0]
    cache = KeyCache(ttl_s=2.0, clock=lambda: clock[0])

    assert await _reuse_of(world, catalog, secret, cache=cache, limit_ms=5_000) == 2_000
    clock[0] = 1.5
    assert await _reuse_of(world, catalog, secret, cache=cache) == 500
    clock[0] = 2.0  # stale: read again, fresh for the whole bound
    assert await _reuse_of(world, catalog, secret, cache=cache) == REUSE_MS


async def test_reuse_never_outlives_the_keys_expiry_or_its_revocation_after_rotation(
    world: World, catalog: Catalog
) -> None:
    expiring = await _key(world, expires_at=START + timedelta(milliseconds=300))
    assert await _reuse_of(world, catalog, expiring) == 300

    rotated = await _key(world, "acct-2")
    old = next(k for k in world.repo.keys.values() if k.account_id == "acct-2")
    await handlers.rotate_api_key(
        commands.RotateApiKey("acct-2", old.key_id, timedelta(milliseconds=400)), world.uow()
    )
    assert await _reuse_of(world, catalog, rotated) == 400


async def test_no_reuse_while_a_channel_of_the_route_is_not_healthy(
    world: World, catalog: Catalog
) -> None:
    secret = await _key(world, fallback_allowed=True)
    clock = [0.0]
    health = HealthBoard(clock=lambda: clock[0])
    assert await _reuse_of(world, catalog, secret, health=health) == REUSE_MS

    # mock-backup serves the routed fallback (and backs up the official route).
    for _ in range(health.policy.failure_threshold):
        health.record("mock-backup", "timeout", 100)
    assert await _reuse_of(world, catalog, secret, health=health) == 0
    clock[0] = health.policy.cool_down_s  # half-open: each resolution may hand out the probe
    assert await _reuse_of(world, catalog, secret, health=health) == 0
    health.record("mock-backup", "ok", 50)
    assert await _reuse_of(world, catalog, secret, health=health) == REUSE_MS


SHARED_LOAD = """\
channels:
  - {id: a, base_url: "http://127.0.0.1:9999/v1", weight: 3}
  - {id: b, base_url: "http://127.0.0.1:9999/v1"}
models:
  - id: m1
    context_length: 4096
    max_output_tokens: 512
    endpoints: [chat]
    routes:
      - kind: official
        bucket: credit
        upstream_model: real-m1
        prices: {input: 1000, output: 2000}
        channels: [[a, b]]
"""


async def test_no_reuse_when_channels_share_load_by_weight(world: World) -> None:
    shared = parse_catalog(SHARED_LOAD.encode(), "test.yaml", {})
    secret = await _key(world)

    assert await _reuse_of(world, shared, secret, model="m1") == 0


async def test_the_worst_case_of_an_embeddings_request_counts_no_output(
    world: World, catalog: Catalog
) -> None:
    secret = await _key(world)
    command = commands.ResolveRoute(
        secret, "demo-embed", Endpoint.EMBEDDINGS, prompt_tokens=1_000_000, output_cap=500
    )

    resolution = await handlers.resolve(command, world.uow(), catalog)

    assert resolution.worst_case_micros == 100_000  # the input price of 1M tokens alone
