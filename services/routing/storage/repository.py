"""Where accounts, projects and API keys are kept: an abstract repository and its
PostgreSQL implementation (Core statements; the key lookup is on the request path)."""

from __future__ import annotations

import abc
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.routing.domain.access import Account, ApiKey, Project, Scope
from services.routing.domain.catalog import RouteKind
from services.routing.storage.tables import accounts, api_keys, projects


class AccessRepository(abc.ABC):
    @abc.abstractmethod
    async def add_account(self, account: Account) -> bool:
        """Add the account unless it exists; True when it was added."""

    @abc.abstractmethod
    async def get_account(self, account_id: str) -> Account | None: ...

    @abc.abstractmethod
    async def add_default_project(self, project: Project) -> Project:
        """Add the account's default project unless it has one; answer the one it has."""

    @abc.abstractmethod
    async def get_project(self, project_id: str) -> Project | None: ...

    @abc.abstractmethod
    async def default_project(self, account_id: str) -> Project | None: ...

    @abc.abstractmethod
    async def add_key(self, key: ApiKey) -> None: ...

    @abc.abstractmethod
    async def key_by_digest(self, digest: str) -> ApiKey | None: ...

    @abc.abstractmethod
    async def touch_key(self, key_id: str, when: datetime) -> None:
        """Record that the key was used at `when`."""


def _project(row: Any) -> Project:
    return Project(row.project_id, row.account_id, row.name, row.is_default)


def _key(row: Any) -> ApiKey:
    return ApiKey(
        key_id=row.key_id,
        account_id=row.account_id,
        project_id=row.project_id,
        name=row.name,
        prefix=row.prefix,
        digest=row.digest,
        created_at=row.created_at,
        scopes=frozenset(Scope(s) for s in row.scopes),
        allowed_models=tuple(row.allowed_models),
        allowed_route_kinds=tuple(RouteKind(k) for k in row.allowed_route_kinds),
        route_preference=tuple(RouteKind(k) for k in row.route_preference),
        fallback_allowed=row.fallback_allowed,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


class SqlAlchemyAccessRepository(AccessRepository):
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add_account(self, account: Account) -> bool:
        result = await self._session.execute(
            insert(accounts)
            .values(account_id=account.account_id, display_name=account.display_name)
            .on_conflict_do_nothing(index_elements=[accounts.c.account_id])
            .returning(accounts.c.account_id)
        )
        return result.first() is not None

    async def get_account(self, account_id: str) -> Account | None:
        row = (
            await self._session.execute(
                select(accounts.c.account_id, accounts.c.display_name).where(
                    accounts.c.account_id == account_id
                )
            )
        ).first()
        return Account(row.account_id, row.display_name) if row is not None else None

    async def add_default_project(self, project: Project) -> Project:
        await self._session.execute(
            insert(projects)
            .values(
                project_id=project.project_id,
                account_id=project.account_id,
                name=project.name,
                is_default=True,
            )
            .on_conflict_do_nothing(
                index_elements=[projects.c.account_id], index_where=projects.c.is_default
            )
        )
        found = await self.default_project(project.account_id)
        assert found is not None
        return found

    async def get_project(self, project_id: str) -> Project | None:
        row = (
            await self._session.execute(select(projects).where(projects.c.project_id == project_id))
        ).first()
        return _project(row) if row is not None else None

    async def default_project(self, account_id: str) -> Project | None:
        row = (
            await self._session.execute(
                select(projects).where(projects.c.account_id == account_id, projects.c.is_default)
            )
        ).first()
        return _project(row) if row is not None else None

    async def add_key(self, key: ApiKey) -> None:
        await self._session.execute(
            insert(api_keys).values(
                key_id=key.key_id,
                account_id=key.account_id,
                project_id=key.project_id,
                name=key.name,
                prefix=key.prefix,
                digest=key.digest,
                scopes=sorted(s.value for s in key.scopes),
                allowed_models=list(key.allowed_models),
                allowed_route_kinds=[k.value for k in key.allowed_route_kinds],
                route_preference=[k.value for k in key.route_preference],
                fallback_allowed=key.fallback_allowed,
                created_at=key.created_at,
                expires_at=key.expires_at,
            )
        )

    async def key_by_digest(self, digest: str) -> ApiKey | None:
        row = (
            await self._session.execute(select(api_keys).where(api_keys.c.digest == digest))
        ).first()
        return _key(row) if row is not None else None

    async def touch_key(self, key_id: str, when: datetime) -> None:
        await self._session.execute(
            update(api_keys).where(api_keys.c.key_id == key_id).values(last_used_at=when)
        )
