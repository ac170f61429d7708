"""Where accounts, projects, API keys, the catalog's versions and the limit counters
are kept: abstract repositories and their PostgreSQL implementations (Core
statements; the key lookup and the counters are on the request path)."""

from __future__ import annotations

import abc
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.routing.domain.access import Account, ApiKey, Project, Scope
from services.routing.domain.catalog import RouteKind
from services.routing.domain.limits import TOTAL, KeyLimits, SpendCap
from services.routing.storage.tables import (
    accounts,
    api_keys,
    catalog_versions,
    in_flight_leases,
    key_spend,
    outcome_reports,
    projects,
    rate_windows,
)
from tokenforge.money import Bucket


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

    @abc.abstractmethod
    async def get_key(self, key_id: str) -> ApiKey | None: ...

    @abc.abstractmethod
    async def list_keys(self, account_id: str) -> list[ApiKey]: ...

    @abc.abstractmethod
    async def revoke_key(self, key_id: str, when: datetime) -> None:
        """Revoke at `when` (may be in the future); an earlier revocation stays."""


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
        limits=KeyLimits(
            ip_allowlist=tuple(row.ip_allowlist),
            requests_per_minute=row.requests_per_minute,
            tokens_per_minute=row.tokens_per_minute,
            max_in_flight=row.max_in_flight,
            spend_caps=tuple(
                SpendCap(Bucket(c["bucket"]), int(c["daily_micros"]), int(c["total_micros"]))
                for c in row.spend_caps
            ),
        ),
        rotated_from=row.rotated_from,
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
                revoked_at=key.revoked_at,
                ip_allowlist=list(key.limits.ip_allowlist),
                requests_per_minute=key.limits.requests_per_minute,
                tokens_per_minute=key.limits.tokens_per_minute,
                max_in_flight=key.limits.max_in_flight,
                spend_caps=[
                    {
                        "bucket": c.bucket.value,
                        "daily_micros": c.daily_micros,
                        "total_micros": c.total_micros,
                    }
                    for c in key.limits.spend_caps
                ],
                rotated_from=key.rotated_from,
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

    async def get_key(self, key_id: str) -> ApiKey | None:
        row = (
            await self._session.execute(select(api_keys).where(api_keys.c.key_id == key_id))
        ).first()
        return _key(row) if row is not None else None

    async def list_keys(self, account_id: str) -> list[ApiKey]:
        rows = await self._session.execute(
            select(api_keys)
            .where(api_keys.c.account_id == account_id)
            .order_by(api_keys.c.created_at, api_keys.c.key_id)
        )
        return [_key(row) for row in rows]

    async def revoke_key(self, key_id: str, when: datetime) -> None:
        await self._session.execute(
            update(api_keys)
            .where(api_keys.c.key_id == key_id)
            .values(revoked_at=func.least(func.coalesce(api_keys.c.revoked_at, when), when))
        )


class LimitsRepository(abc.ABC):
    """The counters of key limits (see domain/limits.py for the rules)."""

    @abc.abstractmethod
    async def add_to_window(self, key_id: str, metric: str, window: datetime, n: int) -> int:
        """Add n to the key's window and answer the new total (atomic)."""

    @abc.abstractmethod
    async def live_leases(self, key_id: str, now: datetime) -> int:
        """Serialise on the key (until commit) and count its unexpired leases."""

    @abc.abstractmethod
    async def add_lease(self, lease_id: str, key_id: str, expires_at: datetime) -> None: ...

    @abc.abstractmethod
    async def end_leases(self, lease_ids: Collection[str]) -> None: ...

    @abc.abstractmethod
    async def spent(self, key_id: str, bucket: Bucket, day: str) -> tuple[int, int]:
        """(spent on `day`, spent in total) in micro-units of the bucket."""

    @abc.abstractmethod
    async def add_spends(self, day: str, spends: Mapping[tuple[str, Bucket], int]) -> None:
        """Add each (key, bucket)'s micros to its `day` and to its total."""

    @abc.abstractmethod
    async def first_reports(self, request_ids: Collection[str]) -> set[str]:
        """The request ids whose outcome is reported for the first time (remembered
        from now on: a later report of them answers nothing)."""

    @abc.abstractmethod
    async def sweep(self, before: datetime) -> None:
        """Forget windows, leases and report ids older than `before`."""


# Fixed SQL text for the statements of every outcome report: SQLAlchemy compiles an
# `insert(...).on_conflict_...()` again on every call (it never enters the compiled
# cache), and a multi-row VALUES has a new shape for every batch size. These are
# compiled once and stay prepared on each connection; arrays carry the rows.
_ADD_SPENDS = text(
    f"""
    INSERT INTO {key_spend.fullname} (key_id, bucket, period, micros)
    SELECT key_id, bucket, period, micros
    FROM unnest(
        CAST(:key_ids AS text[]), CAST(:buckets AS text[]),
        CAST(:periods AS text[]), CAST(:micros AS bigint[])
    ) AS row_(key_id, bucket, period, micros)
    ORDER BY key_id, bucket, period
    ON CONFLICT (key_id, bucket, period)
    DO UPDATE SET micros = {key_spend.name}.micros + EXCLUDED.micros
    """  # noqa: S608 - table names from our own metadata, values bound
)
_FIRST_REPORTS = text(
    f"""
    INSERT INTO {outcome_reports.fullname} (request_id)
    SELECT request_id FROM unnest(CAST(:request_ids AS text[])) AS row_(request_id)
    ORDER BY request_id
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id
    """  # noqa: S608 - table names from our own metadata, values bound
)


class SqlAlchemyLimitsRepository(LimitsRepository):
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add_to_window(self, key_id: str, metric: str, window: datetime, n: int) -> int:
        statement = insert(rate_windows).values(
            key_id=key_id, metric=metric, window_start=window, used=n
        )
        upsert = statement.on_conflict_do_update(
            constraint=rate_windows.primary_key,
            set_={"used": rate_windows.c.used + statement.excluded.used},
        ).returning(rate_windows.c.used)
        return int((await self._session.execute(upsert)).scalar_one())

    async def live_leases(self, key_id: str, now: datetime) -> int:
        await self._session.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": "lease:" + key_id}
        )
        count = await self._session.execute(
            select(func.count())
            .select_from(in_flight_leases)
            .where(in_flight_leases.c.key_id == key_id, in_flight_leases.c.expires_at > now)
        )
        return int(count.scalar_one())

    async def add_lease(self, lease_id: str, key_id: str, expires_at: datetime) -> None:
        await self._session.execute(
            insert(in_flight_leases).values(lease_id=lease_id, key_id=key_id, expires_at=expires_at)
        )

    async def end_leases(self, lease_ids: Collection[str]) -> None:
        if not lease_ids:
            return
        await self._session.execute(
            delete(in_flight_leases).where(in_flight_leases.c.lease_id.in_(sorted(set(lease_ids))))
        )

    async def spent(self, key_id: str, bucket: Bucket, day: str) -> tuple[int, int]:
        rows = await self._session.execute(
            select(key_spend.c.period, key_spend.c.micros).where(
                key_spend.c.key_id == key_id,
                key_spend.c.bucket == bucket.value,
                key_spend.c.period.in_([day, TOTAL]),
            )
        )
        found = {row.period: int(row.micros) for row in rows}
        return found.get(day, 0), found.get(TOTAL, 0)

    async def add_spends(self, day: str, spends: Mapping[tuple[str, Bucket], int]) -> None:
        # One statement; rows in a fixed order, so that concurrent transactions lock
        # the same rows in the same order (no deadlock).
        rows = sorted(
            (key_id, bucket.value, period, micros)
            for (key_id, bucket), micros in spends.items()
            for period in (day, TOTAL)
        )
        if not rows:
            return
        await self._session.execute(
            _ADD_SPENDS,
            {
                "key_ids": [r[0] for r in rows],
                "buckets": [r[1] for r in rows],
                "periods": [r[2] for r in rows],
                "micros": [r[3] for r in rows],
            },
        )

    async def first_reports(self, request_ids: Collection[str]) -> set[str]:
        if not request_ids:
            return set()
        result = await self._session.execute(
            _FIRST_REPORTS, {"request_ids": sorted(set(request_ids))}
        )
        return {row.request_id for row in result}

    async def sweep(self, before: datetime) -> None:
        await self._session.execute(
            delete(rate_windows).where(rate_windows.c.window_start < before)
        )
        await self._session.execute(
            delete(in_flight_leases).where(in_flight_leases.c.expires_at < before)
        )
        await self._session.execute(
            delete(outcome_reports).where(outcome_reports.c.reported_at < before)
        )


@dataclass(frozen=True)
class StoredCatalog:
    version_id: int
    content: str
    content_sha256: str
    created_by: str
    created_at: datetime

    @property
    def version(self) -> str:
        return f"v{self.version_id}"


FILE_AUTHOR_PREFIX = "file:"


class CatalogRepository(abc.ABC):
    @abc.abstractmethod
    async def latest(self) -> StoredCatalog | None: ...

    @abc.abstractmethod
    async def latest_id(self) -> int: ...

    @abc.abstractmethod
    async def latest_from_file(self) -> StoredCatalog | None:
        """The newest version that a routing start took from its catalog file."""

    @abc.abstractmethod
    async def add(self, content: str, sha256: str, author: str) -> StoredCatalog: ...

    @abc.abstractmethod
    async def history(self, limit: int) -> list[StoredCatalog]: ...

    @abc.abstractmethod
    async def lock(self) -> None:
        """Serialise catalog changes until commit."""


def _stored(row: Any) -> StoredCatalog:
    return StoredCatalog(
        int(row.version_id), row.content, row.content_sha256, row.created_by, row.created_at
    )


class SqlAlchemyCatalogRepository(CatalogRepository):
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def latest(self) -> StoredCatalog | None:
        row = (
            await self._session.execute(
                select(catalog_versions).order_by(catalog_versions.c.version_id.desc()).limit(1)
            )
        ).first()
        return _stored(row) if row is not None else None

    async def latest_id(self) -> int:
        found = await self._session.execute(select(func.max(catalog_versions.c.version_id)))
        return int(found.scalar_one() or 0)

    async def latest_from_file(self) -> StoredCatalog | None:
        row = (
            await self._session.execute(
                select(catalog_versions)
                .where(catalog_versions.c.created_by.startswith(FILE_AUTHOR_PREFIX))
                .order_by(catalog_versions.c.version_id.desc())
                .limit(1)
            )
        ).first()
        return _stored(row) if row is not None else None

    async def add(self, content: str, sha256: str, author: str) -> StoredCatalog:
        row = (
            await self._session.execute(
                insert(catalog_versions)
                .values(content=content, content_sha256=sha256, created_by=author)
                .returning(*catalog_versions.c)
            )
        ).one()
        return _stored(row)

    async def history(self, limit: int) -> list[StoredCatalog]:
        rows = await self._session.execute(
            select(catalog_versions).order_by(catalog_versions.c.version_id.desc()).limit(limit)
        )
        return [_stored(row) for row in rows]

    async def lock(self) -> None:
        await self._session.execute(text("SELECT pg_advisory_xact_lock(hashtext('catalog'))"))
