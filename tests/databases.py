"""A database of its own on the session's PostgreSQL, for a test whose rows or
migrations must not meet another test's (or the in-process system's relays)."""

from __future__ import annotations

import uuid

import asyncpg


async def new_database(database_url: str, prefix: str) -> str:
    """Create an empty database named `<prefix>_<random>`; its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return database_url.rsplit("/", 1)[0] + f"/{name}"
