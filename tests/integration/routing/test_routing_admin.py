"""Routing against the real database: the versioned catalog (refused whole, replicas
converge), key management (revoke, rotate, another account's keys), and limits
counted in PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from services.routing import app
from services.routing.storage.catalog_file import DEMO_CATALOG
from tests.integration.routing.conftest import ADMIN, INTERNAL, Routing
from tokenforge.config import Settings
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.routing.v1 import routing_pb2
from tokenforge.runtime.grpc_client import Peer
from tokenforge.runtime.service import RunningService

EXTRA_MODEL = """
  - id: admin-test-model
    display_name: Admin test
    context_length: 4096
    max_output_tokens: 256
    endpoints: [chat]
    routes:
      - kind: routed
        bucket: routed
        upstream_model: mock-gpt-routed
        prices: {input: 1000000, output: 4000000}
        channels: [mock-backup]
"""


@pytest.fixture
async def second_replica(database_url: str) -> AsyncIterator[Routing]:
    running: RunningService = await app.start(
        Settings(database_url=database_url, internal_token=INTERNAL, admin_token=ADMIN), port=0
    )
    peer = Peer("routing", running.address, INTERNAL)
    yield Routing(peer)
    await peer.close()
    await running.stop(grace=0.1)


async def _eventually(check: object, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            await check()  # type: ignore[operator]
            return
        except (AssertionError, DomainError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_a_catalog_with_an_error_is_refused_whole_and_the_running_one_stays(
    routing_operator: Routing,
) -> None:
    before = await routing_operator.call("GetCatalog", routing_pb2.GetCatalogRequest())
    broken = DEMO_CATALOG.read_text() + EXTRA_MODEL.replace(
        "max_output_tokens: 256", "max_output_tokens: lots"
    )

    with pytest.raises(DomainError) as caught:
        await routing_operator.call(
            "PutCatalog", routing_pb2.PutCatalogRequest(yaml=broken, author="test")
        )

    assert caught.value.reason is Reason.INVALID_ARGUMENT
    metadata = caught.value.metadata or {}
    assert metadata["field"] == "models[3].max_output_tokens"
    assert int(metadata["line"]) == broken.splitlines().index("    max_output_tokens: lots") + 1
    after = await routing_operator.call("GetCatalog", routing_pb2.GetCatalogRequest())
    assert after.version.version == before.version.version and after.yaml == before.yaml
    models = await routing_operator.call("ListModels", routing_pb2.ListModelsRequest())
    assert "admin-test-model" not in [m.id for m in models.models]


async def test_a_new_catalog_version_is_named_by_resolve_and_reaches_every_replica(
    routing: Routing, routing_operator: Routing, second_replica: Routing
) -> None:
    running = await routing_operator.call("GetCatalog", routing_pb2.GetCatalogRequest())
    key = await routing.new_key()
    try:
        put = await routing_operator.call(
            "PutCatalog",
            routing_pb2.PutCatalogRequest(yaml=running.yaml + EXTRA_MODEL, author="alice"),
        )
        assert put.changed and put.version.created_by == "alice"

        here = await routing.resolve(key, "admin-test-model")
        assert here.catalog_version == put.version.version

        async def converged() -> None:
            there = await second_replica.resolve(key, "admin-test-model")
            assert there.catalog_version == put.version.version

        await _eventually(converged, timeout_s=4.0)
        history = await routing_operator.call(
            "ListCatalogVersions", routing_pb2.ListCatalogVersionsRequest(limit=5)
        )
        assert history.versions[0].version == put.version.version
        again = await routing_operator.call(
            "PutCatalog",
            routing_pb2.PutCatalogRequest(yaml=running.yaml + EXTRA_MODEL, author="bob"),
        )
        assert not again.changed and again.version.version == put.version.version
    finally:
        await routing_operator.call(
            "PutCatalog", routing_pb2.PutCatalogRequest(yaml=running.yaml, author="restore")
        )


async def test_catalog_admin_is_for_operators_only(routing: Routing) -> None:
    with pytest.raises(DomainError) as caught:
        await routing.call("GetCatalog", routing_pb2.GetCatalogRequest())
    assert caught.value.reason in (Reason.PERMISSION_DENIED, Reason.UNAUTHENTICATED)


async def test_a_revoked_key_stops_at_once_here_and_within_two_seconds_on_another_replica(
    routing: Routing, second_replica: Routing
) -> None:
    account, _ = await routing.open_account()
    key = await routing.new_key(account)
    resolved = await routing.resolve(key, "demo-chat")
    await second_replica.resolve(key, "demo-chat")  # now cached there too

    await routing.call(
        "RevokeApiKey",
        routing_pb2.RevokeApiKeyRequest(account_id=account, key_id=resolved.principal.key_id),
    )

    with pytest.raises(DomainError) as here:
        await routing.resolve(key, "demo-chat")
    assert here.value.reason is Reason.UNKNOWN_API_KEY
    started = asyncio.get_running_loop().time()

    async def refused_there() -> None:
        try:
            await second_replica.resolve(key, "demo-chat")
        except DomainError as error:
            assert error.reason is Reason.UNKNOWN_API_KEY
            return
        raise AssertionError("the revoked key still resolves on the other replica")

    await _eventually(refused_there, timeout_s=3.0)
    assert asyncio.get_running_loop().time() - started <= 2.5


async def test_a_key_of_account_a_never_acts_on_account_b(routing: Routing) -> None:
    account_a, _ = await routing.open_account()
    account_b, project_b = await routing.open_account()
    key_b = await routing.new_key(account_b)
    key_b_id = (await routing.resolve(key_b, "demo-chat")).principal.key_id

    with pytest.raises(DomainError) as on_project:
        await routing.call(
            "CreateApiKey",
            routing_pb2.CreateApiKeyRequest(account_id=account_a, project_id=project_b),
        )
    assert on_project.value.reason is Reason.NOT_FOUND
    for method, request in (
        ("RevokeApiKey", routing_pb2.RevokeApiKeyRequest(account_id=account_a, key_id=key_b_id)),
        ("RotateApiKey", routing_pb2.RotateApiKeyRequest(account_id=account_a, key_id=key_b_id)),
    ):
        with pytest.raises(DomainError) as caught:
            await routing.call(method, request)
        assert caught.value.reason is Reason.NOT_FOUND
    listed = await routing.call("ListApiKeys", routing_pb2.ListApiKeysRequest(account_id=account_a))
    assert key_b_id not in [k.key_id for k in listed.keys]
    assert (await routing.resolve(key_b, "demo-chat")).principal.account_id == account_b


async def test_rotate_answers_a_new_secret_with_the_same_settings_and_lists_show_no_secret(
    routing: Routing,
) -> None:
    account, _ = await routing.open_account()
    created = await routing.call(
        "CreateApiKey",
        routing_pb2.CreateApiKeyRequest(
            account_id=account,
            name="ci",
            settings=routing_pb2.KeySettings(requests_per_minute=50, allowed_models=["demo-*"]),
        ),
    )

    rotated = await routing.call(
        "RotateApiKey", routing_pb2.RotateApiKeyRequest(account_id=account, key_id=created.key_id)
    )

    assert rotated.key.settings.requests_per_minute == 50
    assert list(rotated.key.settings.allowed_models) == ["demo-*"]
    with pytest.raises(DomainError):
        await routing.resolve(created.api_key, "demo-chat")
    assert (await routing.resolve(rotated.api_key, "demo-chat")).principal.key_id == (
        rotated.key.key_id
    )
    listed = await routing.call("ListApiKeys", routing_pb2.ListApiKeysRequest(account_id=account))
    text = str(listed)
    assert created.api_key not in text and rotated.api_key not in text
    assert {k.key_id for k in listed.keys} == {created.key_id, rotated.key.key_id}


async def test_requests_per_minute_are_counted_in_the_database_across_replicas(
    routing: Routing, second_replica: Routing
) -> None:
    account, _ = await routing.open_account()
    created = await routing.call(
        "CreateApiKey",
        routing_pb2.CreateApiKeyRequest(
            account_id=account, settings=routing_pb2.KeySettings(requests_per_minute=4)
        ),
    )
    replicas = [routing, second_replica] * 5
    # The limit counts per minute of the clock: start where all ten land in one minute.
    second = datetime.now(UTC).second
    if second >= 50:
        await asyncio.sleep(61 - second)

    results = await asyncio.gather(
        *(r.resolve(created.api_key, "demo-chat") for r in replicas), return_exceptions=True
    )

    refused = [r for r in results if isinstance(r, DomainError)]
    assert len(results) - len(refused) == 4
    assert all(r.reason is Reason.RATE_LIMITED for r in refused)
    assert all(int((r.metadata or {})["retry_after_s"]) >= 1 for r in refused)


async def test_reported_attempts_show_in_health_and_open_the_breaker(
    routing: Routing, second_replica: Routing
) -> None:
    # Breakers live in each replica's memory: the throwaway replica keeps the shared
    # one's channels healthy for the other tests.
    replica = second_replica
    key = await routing.new_key()
    resolved = await replica.resolve(key, "demo-chat")
    channel = "mock-primary"
    await replica.call(
        "ReportOutcome",
        routing_pb2.ReportOutcomeRequest(
            request_id="r-health",
            key_id=resolved.principal.key_id,
            attempts=[
                routing_pb2.AttemptReport(channel_id=channel, outcome="http_503", latency_ms=9)
            ]
            * 5,
        ),
    )

    health = await replica.call("GetHealth", routing_pb2.GetHealthRequest())
    view = next(c for c in health.channels if c.channel_id == channel)
    assert view.state == "open" and view.last_failure == "http_503"
    assert view.error_rate_ppm == 1_000_000 and view.latency_p95_ms == 9
    after = await replica.resolve(key, "demo-chat@official")
    assert [c.channel_id for c in after.route.channels] == ["mock-backup"]
    models = await replica.call("ListModels", routing_pb2.ListModelsRequest())
    chat = next(m for m in models.models if m.id == "demo-chat")
    assert {h.channel_id: h.state for h in chat.routes[0].health}[channel] == "open"
    # The shared replica heard nothing: its breaker is closed.
    shared = await routing.call("GetHealth", routing_pb2.GetHealthRequest())
    assert next(c for c in shared.channels if c.channel_id == channel).state == "closed"
