"""The async SQLAlchemy engine and each service's Alembic migrations.

Each service owns one PostgreSQL schema and its own Alembic history (version
table inside that schema), so `tokenforge migrate` upgrades them one by one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from sqlalchemy import MetaData, pool, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.util import greenlet_spawn


def async_url(url: str) -> str:
    """Accept postgres:// and postgresql:// URLs; use the asyncpg driver."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {url!r} (set TOKENFORGE_DATABASE_URL)")


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    instrumentor = SQLAlchemyInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        # Patches engine creation once per process: every engine made after is traced.
        instrumentor.instrument(enable_commenter=False)
    # No pre-ping: it costs a round trip to PostgreSQL on every checkout (8% of the
    # wallet's CPU under load, see docs/PERFORMANCE.md). A connection that died is
    # invalidated on its first error instead, and recycled before servers' idle limits.
    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,
        pool_recycle=1800,
    )


# What a lost or refused database connection raises (a restart, a failover, the server
# going away): the statement's outcome is unknown or it never ran; the caller may try
# again. asyncpg's own `InterfaceError` only when it says the connection is closed.
_UNREACHABLE = (
    ConnectionError,  # refused, reset, lost mid-operation (the OS's and asyncpg's)
    asyncpg.PostgresConnectionError,  # 08xxx: the connection does not exist, failed
    asyncpg.exceptions.OperatorInterventionError,  # 57xxx: shutting down, starting up
)


def database_unreachable(error: BaseException) -> bool:
    """Whether `error` (or what caused it: SQLAlchemy wraps the driver's) says the
    database could not be reached or went away mid-statement, rather than refused the
    statement. Such a failure is answered "unavailable, try again", never as a bug."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _UNREACHABLE):
            return True
        if isinstance(current, asyncpg.InterfaceError) and "closed" in str(current):
            return True
        if getattr(current, "connection_invalidated", False):  # SQLAlchemy's DBAPIError
            return True
        current = current.__cause__ or current.__context__
    return False


async def give_back(
    pooled: Any, exc: BaseException | None, sound: tuple[type[BaseException], ...] = ()
) -> None:
    """A borrowed pooled connection back to the pool when the database answered (no
    error, an error PostgreSQL raised, or one of `sound`); dropped otherwise (a lost
    connection, a statement cancelled midway): never lent again in an unknown state.

    Through SQLAlchemy's greenlet bridge: the pool closes an overflow connection it
    cannot keep, or a dropped one, with the driver's (awaited) close, which outside
    the bridge fails with MissingGreenlet and leaks the connection."""
    healthy = exc is None or isinstance(exc, (asyncpg.PostgresError, *sound))
    await return_to_pool(pooled, healthy=healthy)


async def return_to_pool(pooled: Any, *, healthy: bool) -> None:
    """`pooled` back to the pool if `healthy`, else dropped (see `give_back`)."""
    await greenlet_spawn(pooled.close if healthy else pooled.invalidate)


@asynccontextmanager
async def borrowed_driver(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection's asyncpg driver, in autocommit, for statements that stand
    alone on a hot path: no BEGIN and COMMIT round trips and none of SQLAlchemy's
    execution machinery (docs/PERFORMANCE.md)."""
    pooled = await engine.raw_connection()
    try:
        yield pooled.driver_connection
    except BaseException as exc:
        await give_back(pooled, exc)
        raise
    await give_back(pooled, None)


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    return async_sessionmaker(engine, expire_on_commit=False)


def ensure_schema_sql(schema: str) -> str:
    """Create `schema` unless it exists. Not `CREATE SCHEMA IF NOT EXISTS`: PostgreSQL
    checks the right to create schemas in the database first, which a service's own
    role (owner of its schema, tokenforge.runtime.db_roles) does not have."""
    literal = schema.replace("'", "''")
    ident = schema.replace('"', '""')
    return (
        f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = '{literal}') "
        f'THEN CREATE SCHEMA "{ident}"; END IF; END $$'
    )


def alembic_config(migrations_dir: Path, url: str, schema: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.set_main_option("sqlalchemy.url", async_url(url))
    cfg.attributes["schema"] = schema
    return cfg


def upgrade(migrations_dir: Path, url: str, schema: str, revision: str = "head") -> None:
    """Apply a service's migrations (synchronous; runs its own event loop)."""
    command.upgrade(alembic_config(migrations_dir, url, schema), revision)


def run_env(metadata: MetaData) -> None:
    """The body of every service's migrations/env.py (online, async, schema-scoped)."""
    from alembic import context

    cfg = context.config
    schema: str = cfg.attributes["schema"]
    url = cfg.get_main_option("sqlalchemy.url")
    assert url is not None

    def do_run(connection):  # type: ignore[no-untyped-def]
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table_schema=schema,
            include_schemas=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def run_async() -> None:
        engine = create_async_engine(url, poolclass=pool.NullPool)
        async with engine.connect() as conn:
            # Replicas starting together migrate one at a time: the others wait here,
            # then find the schema at head and do nothing.
            await conn.execute(
                text("SELECT pg_advisory_lock(hashtext(:name))"), {"name": f"migrate:{schema}"}
            )
            await conn.commit()
            try:
                await conn.execute(text(ensure_schema_sql(schema)))
                await conn.commit()
                await conn.run_sync(do_run)
            finally:
                await conn.execute(
                    text("SELECT pg_advisory_unlock(hashtext(:name))"),
                    {"name": f"migrate:{schema}"},
                )
                await conn.commit()
        await engine.dispose()

    asyncio.run(run_async())
