"""One PostgreSQL role per service, owning its own schema and nothing else.

`provision()` runs with the database owner's (or a superuser's) URL, before the
migrations: it creates or updates the role `tokenforge_<service>` (LOGIN, no other
attribute) with the password of the service's URL, makes it the owner of the schema
`<service>` and of everything already in it (a schema migrated by the owner before
roles existed), and revokes what PostgreSQL grants every role by default that it
does not need (CREATE on `public`). Another service's schema is owned by that
service's role and granted to nobody, so a service that reads it gets "permission
denied for schema ...". Every service then migrates and serves as its own role: the
Alembic version table lives in the service's schema, which the role owns.

Idempotent (run it on every start: `tokenforge dev` does, the Kubernetes Job
`tokenforge-db-roles` does on every apply); a change of password takes effect at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncpg

ROLE_PREFIX = "tokenforge_"
# Serialises provisioning runs (two Jobs, or dev and a test, on one database).
LOCK = "tokenforge:db-roles"


def role_for(service: str) -> str:
    return f"{ROLE_PREFIX}{service}"


@dataclass(frozen=True)
class ServiceRole:
    """A service's login role and the schema it owns."""

    service: str
    schema: str
    role: str
    password: str

    def __repr__(self) -> str:  # never print the password
        return f"ServiceRole({self.service!r}, schema={self.schema!r}, role={self.role!r})"


def with_user(url: str, user: str, password: str) -> str:
    """`url` (postgresql://owner@host:port/db?...) with another user and password."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def credentials_of(url: str) -> tuple[str, str]:
    """(user, password) of a PostgreSQL URL; empty strings when absent."""
    parts = urlsplit(url)
    return unquote(parts.username or ""), unquote(parts.password or "")


def role_from_url(service: str, schema: str, url: str) -> ServiceRole:
    """The role a service's own URL (TOKENFORGE_<SERVICE>_DATABASE_URL) logs in as."""
    user, password = credentials_of(url)
    if not user or not password:
        raise ValueError(
            f"the database URL of {service} names no user and password: give "
            f"postgresql://{role_for(service)}:<password>@host:port/db"
        )
    return ServiceRole(service, schema, user, password)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def provision(admin_url: str, roles: Iterable[ServiceRole]) -> None:
    """Create or update each role and give it its schema (see the module's docstring)."""
    wanted = list(roles)
    conn = await asyncpg.connect(admin_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", LOCK)
            for role in wanted:
                await _provision_one(conn, role, [r.schema for r in wanted if r is not role])
    finally:
        await conn.close()


async def _provision_one(conn: asyncpg.Connection, role: ServiceRole, others: list[str]) -> None:
    name, schema = _ident(role.role), _ident(role.schema)
    password = await conn.fetchval("SELECT quote_literal($1::text)", role.password)
    attributes = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role.role)
    verb = "ALTER" if exists else "CREATE"
    await conn.execute(f"{verb} ROLE {name} WITH {attributes} PASSWORD {password}")
    database = _ident(await conn.fetchval("SELECT current_database()"))
    await conn.execute(f"GRANT CONNECT ON DATABASE {database} TO {name}")
    # Unqualified names resolve in the service's schema, never in public.
    await conn.execute(f"ALTER ROLE {name} IN DATABASE {database} SET search_path = {schema}")
    if await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", role.schema):
        await conn.execute(f"ALTER SCHEMA {schema} OWNER TO {name}")
    else:
        await conn.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {name}")
    await _hand_over_contents(conn, role)
    await conn.execute(f"REVOKE ALL ON SCHEMA {schema} FROM PUBLIC")
    if await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = 'public'"):
        await conn.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {name}")
    for other in others:
        if await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", other):
            await conn.execute(f"REVOKE ALL ON SCHEMA {_ident(other)} FROM {name}")
            await conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {_ident(other)} FROM {name}")


async def _hand_over_contents(conn: asyncpg.Connection, role: ServiceRole) -> None:
    """Tables, views, free sequences, types and functions in the schema that another
    role created (the migrations of a release before roles, run as the owner) become
    the role's: it must own them to migrate them. A table's indexes, triggers and owned
    sequences follow the table."""
    rows = await conn.fetch(
        """
        SELECT c.relname, c.relkind
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1
           AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
           AND pg_get_userbyid(c.relowner) <> $2
           AND NOT (c.relkind = 'S' AND EXISTS (
                 SELECT 1 FROM pg_depend d
                  WHERE d.objid = c.oid AND d.classid = 'pg_class'::regclass
                    AND d.deptype IN ('a', 'i')))
         ORDER BY c.relkind = 'S', c.relname
        """,
        role.schema,
        role.role,
    )
    kinds = {"v": "VIEW", "m": "MATERIALIZED VIEW", "f": "FOREIGN TABLE", "S": "SEQUENCE"}
    for row in rows:
        kind = kinds.get(row["relkind"], "TABLE")
        target = f"{_ident(role.schema)}.{_ident(row['relname'])}"
        await conn.execute(f"ALTER {kind} {target} OWNER TO {_ident(role.role)}")
    types = await conn.fetch(
        """
        SELECT t.typname
          FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE n.nspname = $1 AND t.typtype IN ('e', 'd')
           AND pg_get_userbyid(t.typowner) <> $2
        """,
        role.schema,
        role.role,
    )
    for row in types:
        target = f"{_ident(role.schema)}.{_ident(row['typname'])}"
        await conn.execute(f"ALTER TYPE {target} OWNER TO {_ident(role.role)}")
    routines = await conn.fetch(
        """
        SELECT p.oid::regprocedure::text AS signature, p.prokind
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = $1 AND pg_get_userbyid(p.proowner) <> $2
        """,
        role.schema,
        role.role,
    )
    for row in routines:
        kind = "PROCEDURE" if row["prokind"] == "p" else "FUNCTION"
        await conn.execute(f"ALTER {kind} {row['signature']} OWNER TO {_ident(role.role)}")
