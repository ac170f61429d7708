"""Replicas that start together on an empty database migrate one at a time."""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg

from tests.databases import new_database


async def test_concurrent_migrations_of_a_fresh_database_all_succeed(database_url: str) -> None:
    url = await new_database(database_url, "mig")
    # Four "replicas": separate processes, as pods would be.
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "apps.cli",
            "migrate",
            "usage",
            env={**os.environ, "TOKENFORGE_DATABASE_URL": url},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        for _ in range(6)
    ]
    outputs = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, outputs
    conn = await asyncpg.connect(url)
    try:
        version = await conn.fetchval('SELECT version_num FROM "usage".alembic_version')
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'usage'"
        )
    finally:
        await conn.close()
    assert version is not None
    assert tables >= 2
