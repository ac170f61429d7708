"""Routing use cases: plain async functions of (command, unit of work)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.routing.domain import keys
from services.routing.domain.access import (
    ALL_ROUTE_KINDS,
    ALL_SCOPES,
    Account,
    ApiKey,
    Principal,
    Project,
    Resolution,
    Scope,
    choose_route,
    require_active,
    require_scope,
    unknown_key,
)
from services.routing.domain.catalog import Catalog, Endpoint, RouteKind
from services.routing.storage.unit_of_work import UnitOfWork
from tokenforge.errors import DomainError, Reason

# last_used_at is written at most this often per key, so the request path stays a read.
LAST_USED_RESOLUTION = timedelta(minutes=1)
DEFAULT_PROJECT_NAME = "Default project"


@dataclass(frozen=True)
class ResolveRoute:
    api_key: str
    model: str
    endpoint: Endpoint | None = None


@dataclass(frozen=True)
class Authenticate:
    api_key: str
    scope: Scope | None = None


@dataclass(frozen=True)
class OpenAccount:
    account_id: str
    display_name: str = ""


@dataclass(frozen=True)
class OpenedAccount:
    account_id: str
    project_id: str
    created: bool


@dataclass(frozen=True)
class CreateApiKey:
    account_id: str
    project_id: str = ""
    name: str = ""
    scopes: tuple[Scope, ...] = ()
    expires_at: datetime | None = None
    allowed_models: tuple[str, ...] = ("*",)
    allowed_route_kinds: tuple[RouteKind, ...] = ALL_ROUTE_KINDS
    route_preference: tuple[RouteKind, ...] = ALL_ROUTE_KINDS
    fallback_allowed: bool = False


@dataclass(frozen=True)
class CreatedApiKey:
    key_id: str
    project_id: str
    prefix: str
    # The key itself: answered once, never stored.
    secret: str


async def _active_key(api_key: str, uow: UnitOfWork) -> ApiKey:
    # A typo fails the checksum here, without a database lookup.
    if not keys.is_well_formed(api_key):
        raise unknown_key()
    digest = keys.digest_of(api_key)
    key = require_active(await uow.access.key_by_digest(digest), uow.now())
    if not keys.digest_matches(api_key, key.digest):
        raise unknown_key()
    now = uow.now()
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        await uow.access.touch_key(key.key_id, now)
        await uow.commit()
    return key


async def resolve(command: ResolveRoute, uow: UnitOfWork, catalog: Catalog) -> Resolution:
    async with uow:
        key = await _active_key(command.api_key, uow)
    require_scope(key, Scope.INFERENCE)
    return choose_route(catalog, key, command.model, command.endpoint)


async def authenticate(command: Authenticate, uow: UnitOfWork) -> Principal:
    async with uow:
        key = await _active_key(command.api_key, uow)
    if command.scope is not None:
        require_scope(key, command.scope)
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
    if not command.allowed_models or not command.route_preference:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "An API key needs at least one allowed model pattern and one route preference.",
        )
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
            scopes=frozenset(command.scopes or ALL_SCOPES),
            allowed_models=command.allowed_models,
            allowed_route_kinds=command.allowed_route_kinds,
            route_preference=command.route_preference,
            fallback_allowed=command.fallback_allowed,
            expires_at=command.expires_at,
        )
        await uow.access.add_key(key)
        await uow.commit()
    return CreatedApiKey(key.key_id, project.project_id, key.prefix, new_key.secret)


def _new_id(kind: str) -> str:
    return f"{kind}_{uuid.uuid4().hex}"
