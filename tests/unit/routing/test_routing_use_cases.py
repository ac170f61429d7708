"""Routing use cases against an in-memory repository: no network, no database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.routing import handlers
from services.routing.domain.access import Account, ApiKey, Project, Scope
from services.routing.domain.catalog import Catalog, Endpoint
from services.routing.storage.catalog_file import DEMO_CATALOG, read_catalog
from services.routing.storage.repository import AccessRepository
from services.routing.storage.unit_of_work import UnitOfWork
from tokenforge.errors import DomainError, Reason

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


class FakeUnitOfWork(UnitOfWork):
    def __init__(self, repo: FakeAccessRepository, clock: list[datetime]) -> None:
        super().__init__(lambda: clock[0])
        self.access = repo
        self.committed = 0

    async def commit(self) -> None:
        self.committed += 1

    async def rollback(self) -> None:
        pass


class World:
    def __init__(self) -> None:
        self.repo = FakeAccessRepository()
        self.clock = [START]

    def uow(self) -> FakeUnitOfWork:
        return FakeUnitOfWork(self.repo, self.clock)


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return read_catalog(DEMO_CATALOG, {})


async def test_opening_an_account_twice_keeps_its_first_default_project(world: World) -> None:
    first = await handlers.open_account(handlers.OpenAccount("acct-1", "One"), world.uow())
    again = await handlers.open_account(handlers.OpenAccount("acct-1", "One"), world.uow())

    assert first.created and not again.created
    assert first.project_id == again.project_id
    assert len(world.repo.projects) == 1


async def test_a_key_created_without_scopes_gets_all_four(world: World) -> None:
    await handlers.open_account(handlers.OpenAccount("acct-1"), world.uow())

    created = await handlers.create_api_key(handlers.CreateApiKey("acct-1"), world.uow())

    stored = next(iter(world.repo.keys.values()))
    assert stored.scopes == frozenset(Scope)
    assert stored.key_id == created.key_id
    assert created.secret not in (stored.digest, stored.prefix)


async def test_a_key_for_another_accounts_project_is_refused(world: World) -> None:
    other = await handlers.open_account(handlers.OpenAccount("acct-2"), world.uow())
    await handlers.open_account(handlers.OpenAccount("acct-1"), world.uow())

    with pytest.raises(DomainError) as caught:
        await handlers.create_api_key(
            handlers.CreateApiKey("acct-1", project_id=other.project_id), world.uow()
        )

    assert caught.value.reason is Reason.NOT_FOUND
    assert world.repo.keys == {}


async def test_a_mistyped_key_is_refused_without_a_lookup(world: World, catalog: Catalog) -> None:
    await handlers.open_account(handlers.OpenAccount("acct-1"), world.uow())
    created = await handlers.create_api_key(handlers.CreateApiKey("acct-1"), world.uow())
    typo = created.secret[:-1] + ("0" if created.secret[-1] != "0" else "1")

    with pytest.raises(DomainError) as caught:
        await handlers.resolve(handlers.ResolveRoute(typo, "demo-chat"), world.uow(), catalog)

    assert caught.value.reason is Reason.UNKNOWN_API_KEY
    assert world.repo.lookups == 0


async def test_last_used_is_written_at_most_once_a_minute(world: World, catalog: Catalog) -> None:
    await handlers.open_account(handlers.OpenAccount("acct-1"), world.uow())
    created = await handlers.create_api_key(handlers.CreateApiKey("acct-1"), world.uow())
    command = handlers.ResolveRoute(created.secret, "demo-chat", Endpoint.CHAT)

    for seconds in (0, 10, 59, 61):
        world.clock[0] = START + timedelta(seconds=seconds)
        await handlers.resolve(command, world.uow(), catalog)

    assert [when for _, when in world.repo.touches] == [START, START + timedelta(seconds=61)]


async def test_authenticate_answers_the_principal_of_an_active_key(world: World) -> None:
    opened = await handlers.open_account(handlers.OpenAccount("acct-1"), world.uow())
    created = await handlers.create_api_key(
        handlers.CreateApiKey("acct-1", scopes=(Scope.WALLET_READ,)), world.uow()
    )

    principal = await handlers.authenticate(
        handlers.Authenticate(created.secret, Scope.WALLET_READ), world.uow()
    )

    assert (principal.account_id, principal.project_id) == ("acct-1", opened.project_id)
    with pytest.raises(DomainError) as caught:
        await handlers.authenticate(handlers.Authenticate(created.secret, Scope.KEYS), world.uow())
    assert caught.value.reason is Reason.SCOPE_MISSING


async def test_an_expired_key_stops_working_when_its_time_comes(
    world: World, catalog: Catalog
) -> None:
    await handlers.open_account(handlers.OpenAccount("acct-1"), world.uow())
    created = await handlers.create_api_key(
        handlers.CreateApiKey("acct-1", expires_at=START + timedelta(hours=1)), world.uow()
    )
    command = handlers.ResolveRoute(created.secret, "demo-chat")

    assert (await handlers.resolve(command, world.uow(), catalog)).route.model == "demo-chat"
    world.clock[0] = START + timedelta(hours=1)
    with pytest.raises(DomainError) as caught:
        await handlers.resolve(command, world.uow(), catalog)
    assert caught.value.reason is Reason.UNKNOWN_API_KEY
