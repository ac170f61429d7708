"""One database role per service (tokenforge.runtime.db_roles), on a fresh database of
the test PostgreSQL: each role migrates and uses its own schema and is refused
another service's schema with "permission denied"."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.databases import new_database
from tokenforge.runtime.db_roles import ServiceRole, provision, role_for, with_user
from tokenforge.runtime.service import load


@pytest.fixture
async def fresh_database(database_url: str) -> AsyncIterator[str]:
    """A database of its own; dropped afterwards, with the roles the test made."""
    url = await new_database(database_url, "roles")
    name = url.rsplit("/", 1)[1]
    MADE.clear()
    yield url
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        for made in MADE:
            await admin.execute(f'DROP ROLE IF EXISTS "{made}"')
    finally:
        await admin.close()


MADE: list[str] = []


def role(service: str) -> ServiceRole:
    # A per-test suffix: roles are cluster-wide, the test PostgreSQL is shared.
    suffix = uuid.uuid4().hex[:6]
    made = ServiceRole(
        service, load(service).SCHEMA, f"{role_for(service)}_{suffix}", "pw-" + suffix
    )
    MADE.append(made.role)
    return made


async def test_each_service_role_uses_its_own_schema_and_is_refused_the_others(
    fresh_database: str,
) -> None:
    wallet, routing = role("wallet"), role("routing")
    await provision(fresh_database, [wallet, routing])
    wallet_url = with_user(fresh_database, wallet.role, wallet.password)
    routing_url = with_user(fresh_database, routing.role, routing.password)
    # Each role migrates its own schema: the Alembic version table is in it, its own.
    await asyncio.to_thread(load("wallet").migrate, wallet_url)
    await asyncio.to_thread(load("routing").migrate, routing_url)

    as_wallet = await asyncpg.connect(wallet_url)
    try:
        assert await as_wallet.fetchval("SELECT current_user") == wallet.role
        assert await as_wallet.fetchval('SELECT count(*) FROM "wallet".alembic_version') == 1
        await as_wallet.execute('CREATE TABLE "wallet".role_probe (x int)')
        await as_wallet.execute('INSERT INTO "wallet".role_probe VALUES (1)')
        assert await as_wallet.fetchval('SELECT x FROM "wallet".role_probe') == 1
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await as_wallet.fetch('SELECT * FROM "routing".api_keys')
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await as_wallet.execute('CREATE TABLE "routing".sneaky (x int)')
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await as_wallet.execute("CREATE TABLE public.sneaky (x int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await as_wallet.execute("CREATE SCHEMA sneaky")
        attributes = await as_wallet.fetchrow(
            "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = $1",
            wallet.role,
        )
        assert tuple(attributes) == (False, False, False)
    finally:
        await as_wallet.close()

    as_routing = await asyncpg.connect(routing_url)
    try:
        assert await as_routing.fetchval('SELECT count(*) FROM "routing".api_keys') == 0
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await as_routing.fetch('SELECT * FROM "wallet".role_probe')
    finally:
        await as_routing.close()


async def test_a_schema_the_owner_migrated_before_roles_is_handed_to_the_service_role(
    fresh_database: str,
) -> None:
    """An existing install (a `make run` state dir, a cluster) migrated as the owner:
    provisioning gives the role every table and function, and the next release migrates
    as it. The wallet's: tables, sequences, its ledger's trigger functions."""
    await asyncio.to_thread(load("wallet").migrate, fresh_database)
    wallet = role("wallet")
    await provision(fresh_database, [wallet])
    await provision(fresh_database, [wallet])  # idempotent: every start runs it
    url = with_user(fresh_database, wallet.role, wallet.password)
    await asyncio.to_thread(load("wallet").migrate, url)
    conn = await asyncpg.connect(url)
    try:
        owners = await conn.fetch(
            """
            SELECT DISTINCT pg_get_userbyid(c.relowner) AS owner FROM pg_class c
              JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'wallet'
            UNION
            SELECT DISTINCT pg_get_userbyid(p.proowner) FROM pg_proc p
              JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'wallet'
            """
        )
        assert [r["owner"] for r in owners] == [wallet.role]
        assert await conn.fetchval('SELECT count(*) FROM "wallet".alembic_version') == 1
        await conn.execute('CREATE TABLE "wallet".role_probe (x int)')
        await conn.execute('ALTER TABLE "wallet".role_probe ADD COLUMN y int')
        await conn.execute(
            'CREATE OR REPLACE FUNCTION "wallet".refuse_ledger_change() RETURNS trigger '
            "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'append-only'; END $$"
        )
    finally:
        await conn.close()


async def test_the_db_roles_command_reads_each_service_url(fresh_database: str) -> None:
    """`tokenforge db-roles`, as the Kubernetes Job runs it: the owner's URL, and the
    user and password of each TOKENFORGE_<SERVICE>_DATABASE_URL."""
    payments = role("payments")
    env = {
        **os.environ,
        "TOKENFORGE_DATABASE_URL": fresh_database,
        "TOKENFORGE_PAYMENTS_DATABASE_URL": with_user(
            fresh_database, payments.role, payments.password
        ),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "apps.cli",
        "db-roles",
        "payments",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    assert f"{payments.role} owns schema payments" in out.decode()
    assert payments.password not in out.decode()
    migrate = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "apps.cli",
        "migrate",
        "payments",
        env={**env, "TOKENFORGE_DATABASE_URL": ""},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await migrate.communicate()
    assert migrate.returncode == 0, out.decode()
    conn = await asyncpg.connect(fresh_database)
    try:
        owner = await conn.fetchval(
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'payments' "
            "AND tablename = 'alembic_version'"
        )
    finally:
        await conn.close()
    assert owner == payments.role

    missing = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "apps.cli",
        "db-roles",
        "usage",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await missing.communicate()
    assert missing.returncode == 2
    assert "TOKENFORGE_USAGE_DATABASE_URL" in out.decode()
