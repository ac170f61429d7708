"""RoutingService through gRPC against the real database and the demo catalog."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.routing import handlers
from services.routing.domain import commands, keys
from services.routing.domain.catalog import RouteKind
from services.routing.storage.unit_of_work import UnitOfWork
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.routing.v1 import routing_pb2

CHAT = routing_pb2.ENDPOINT_CHAT_COMPLETIONS
EMBEDDINGS = routing_pb2.ENDPOINT_EMBEDDINGS


async def refusal(call: object) -> DomainError:
    with pytest.raises(DomainError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def test_resolve_answers_the_whole_before_list_of_the_official_route(routing) -> None:
    account, project = await routing.open_account()
    key = await routing.new_key(account)

    answer = await routing.resolve(key, "demo-chat", CHAT)

    assert (answer.principal.account_id, answer.principal.project_id) == (account, project)
    assert answer.principal.key_id.startswith("key_")
    assert set(answer.principal.scopes) == {1, 2, 3, 4}
    route = answer.route
    assert route.model == "demo-chat"
    assert route.kind == common_pb2.ROUTE_KIND_OFFICIAL
    assert route.bucket == common_pb2.BUCKET_CREDIT
    assert route.upstream_model == "mock-gpt-official"
    assert route.prices.input_per_million_micros == 2_500_000
    assert route.prices.output_per_million_micros == 10_000_000
    assert [c.channel_id for c in route.channels] == ["mock-primary", "mock-backup"]
    assert all(c.base_url.endswith("/v1") and c.total_timeout_ms > 0 for c in route.channels)
    assert route.retry.max_attempts == 2 and "502" in route.retry.retry_on
    assert route.charge_policy == routing_pb2.CHARGE_POLICY_NONE
    assert (answer.context_length, answer.max_output_tokens) == (8192, 1024)
    assert re.fullmatch(r"v[0-9]+", answer.catalog_version)
    assert answer.selected_model == "demo-chat"
    assert list(answer.fallback_routes) == []


async def test_resolve_with_routed_suffix_is_paid_from_the_routed_balance(routing) -> None:
    answer = await routing.resolve(await routing.new_key(), "demo-chat@routed", CHAT)

    assert answer.route.kind == common_pb2.ROUTE_KIND_ROUTED
    assert answer.route.bucket == common_pb2.BUCKET_ROUTED
    assert answer.route.upstream_model == "mock-gpt-routed"
    assert answer.route.prices.input_per_million_micros == 1_000_000
    assert [c.channel_id for c in answer.route.channels] == ["mock-backup", "mock-primary"]
    assert answer.selected_model == "demo-chat@routed"


async def test_resolve_refuses_mistyped_and_unknown_keys_alike(routing) -> None:
    key = await routing.new_key()
    typo = key[:10] + ("a" if key[10] != "a" else "b") + key[11:]
    unknown = keys.generate_key().secret

    for presented in (typo, unknown, "", "sk-not-ours"):
        error = await refusal(routing.resolve(presented, "demo-chat"))
        assert error.reason is Reason.UNKNOWN_API_KEY
        assert "not recognised" in error.message


async def test_resolve_refuses_revoked_and_expired_keys(routing, routing_engine) -> None:
    revoked, expired = await routing.new_key(), await routing.new_key()
    async with routing_engine.begin() as conn:
        await conn.execute(
            text("UPDATE routing.api_keys SET revoked_at = now() WHERE digest = :d"),
            {"d": keys.digest_of(revoked)},
        )
        await conn.execute(
            text(
                "UPDATE routing.api_keys SET expires_at = now() - interval '1 s' WHERE digest = :d"
            ),
            {"d": keys.digest_of(expired)},
        )

    for presented in (revoked, expired):
        error = await refusal(routing.resolve(presented, "demo-chat"))
        assert error.reason is Reason.UNKNOWN_API_KEY


async def test_resolve_refuses_a_key_without_the_inference_scope(routing) -> None:
    key = await routing.new_key(scopes=[routing_pb2.SCOPE_WALLET_READ])

    error = await refusal(routing.resolve(key, "demo-chat"))

    assert error.reason is Reason.SCOPE_MISSING
    assert error.metadata == {"scope": "inference"}


async def test_resolve_of_an_unknown_model_names_it_and_lists_the_available_ones(routing) -> None:
    error = await refusal(routing.resolve(await routing.new_key(), "gpt-17"))

    assert error.reason is Reason.MODEL_NOT_FOUND
    assert "'gpt-17'" in error.message
    assert "demo-chat" in error.message and "demo-embed" in error.message


async def test_resolve_of_an_unknown_route_suffix_is_invalid(routing) -> None:
    error = await refusal(routing.resolve(await routing.new_key(), "demo-chat@cheapest"))

    assert error.reason is Reason.INVALID_ARGUMENT
    assert "demo-chat@official" in error.message


async def test_resolve_of_an_embeddings_model_for_chat_is_invalid(routing) -> None:
    key = await routing.new_key()

    error = await refusal(routing.resolve(key, "demo-embed", CHAT))
    embed = await routing.resolve(key, "demo-embed", EMBEDDINGS)

    assert error.reason is Reason.INVALID_ARGUMENT
    assert "/v1/embeddings" in error.message
    assert embed.route.upstream_model == "mock-embed"


async def test_resolve_refuses_a_model_or_route_kind_the_key_does_not_allow(
    routing, routing_uow: Callable[[], UnitOfWork]
) -> None:
    account, _ = await routing.open_account()
    embed_only = await handlers.create_api_key(
        commands.CreateApiKey(account_id=account, allowed_models=("demo-embed*",)), routing_uow()
    )
    official_only = await handlers.create_api_key(
        commands.CreateApiKey(account_id=account, allowed_route_kinds=(RouteKind.OFFICIAL,)),
        routing_uow(),
    )

    model_refused = await refusal(routing.resolve(embed_only.secret, "demo-chat"))
    kind_refused = await refusal(routing.resolve(official_only.secret, "demo-chat@routed"))

    assert model_refused.reason is Reason.MODEL_NOT_ALLOWED
    assert kind_refused.reason is Reason.MODEL_NOT_ALLOWED
    allowed = await routing.resolve(official_only.secret, "demo-chat")
    assert allowed.route.kind == common_pb2.ROUTE_KIND_OFFICIAL


async def test_fallback_routes_are_offered_only_to_keys_that_allow_them(
    routing, routing_uow: Callable[[], UnitOfWork]
) -> None:
    account, _ = await routing.open_account()
    may_fall_back = await handlers.create_api_key(
        commands.CreateApiKey(account_id=account, fallback_allowed=True), routing_uow()
    )
    plain = await routing.new_key(account)

    with_fallback = await routing.resolve(may_fall_back.secret, "demo-chat")
    without = await routing.resolve(plain, "demo-chat")

    assert [r.kind for r in with_fallback.fallback_routes] == [common_pb2.ROUTE_KIND_ROUTED]
    assert with_fallback.fallback_routes[0].bucket == common_pb2.BUCKET_ROUTED
    assert list(without.fallback_routes) == []


async def test_authenticate_answers_the_principal_or_refuses_a_missing_scope(routing) -> None:
    account, project = await routing.open_account()
    key = await routing.new_key(account, scopes=[routing_pb2.SCOPE_INFERENCE])

    ok = await routing.call(
        "Authenticate",
        routing_pb2.AuthenticateRequest(api_key=key, scope=routing_pb2.SCOPE_INFERENCE),
    )
    error = await refusal(
        routing.call(
            "Authenticate",
            routing_pb2.AuthenticateRequest(api_key=key, scope=routing_pb2.SCOPE_TOPUP),
        )
    )

    assert (ok.principal.account_id, ok.principal.project_id) == (account, project)
    assert list(ok.principal.scopes) == [routing_pb2.SCOPE_INFERENCE]
    assert error.reason is Reason.SCOPE_MISSING


async def test_a_created_key_works_and_only_its_digest_is_stored(
    routing_operator, routing, routing_engine: AsyncEngine
) -> None:
    account, project = await routing_operator.open_account()
    created = await routing_operator.call(
        "CreateApiKey", routing_pb2.CreateApiKeyRequest(account_id=account, name="ci")
    )

    assert keys.is_well_formed(created.api_key)
    assert created.prefix == created.api_key[:8]
    assert (await routing.resolve(created.api_key, "demo-chat")).principal.key_id == created.key_id
    async with routing_engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT * FROM routing.api_keys WHERE key_id = :k"), {"k": created.key_id}
            )
        ).one()
    stored = row._asdict()
    assert stored["digest"] == hashlib.sha256(created.api_key.encode()).hexdigest()
    assert stored["project_id"] == project
    assert sorted(stored["scopes"]) == ["inference", "keys", "topup", "wallet_read"]
    assert stored["last_used_at"] is not None
    body = created.api_key[len("tf_") :]
    assert not any(body in str(value) for value in stored.values())


async def test_open_account_twice_keeps_one_default_project(routing_operator) -> None:
    account = f"acct-{uuid.uuid4()}"
    request = routing_pb2.OpenAccountRequest(account_id=account, display_name="Twice")

    first = await routing_operator.call("OpenAccount", request)
    again = await routing_operator.call("OpenAccount", request)

    assert first.project_id == again.project_id
    assert first.account_id == account


async def test_create_api_key_for_an_unknown_account_is_refused(routing_operator) -> None:
    error = await refusal(
        routing_operator.call(
            "CreateApiKey", routing_pb2.CreateApiKeyRequest(account_id=f"nobody-{uuid.uuid4()}")
        )
    )

    assert error.reason is Reason.ACCOUNT_NOT_FOUND


async def test_create_api_key_with_a_past_expiry_is_refused(routing_operator) -> None:
    account, _ = await routing_operator.open_account()
    request = routing_pb2.CreateApiKeyRequest(account_id=account)
    request.expires_at.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))

    error = await refusal(routing_operator.call("CreateApiKey", request))

    assert error.reason is Reason.INVALID_ARGUMENT


async def test_list_models_answers_every_route_of_the_demo_catalog(routing_operator) -> None:
    answer = await routing_operator.call("ListModels", routing_pb2.ListModelsRequest())

    by_id = {m.id: m for m in answer.models}
    assert set(by_id) == {"demo-chat", "demo-claude", "demo-embed"}
    assert [r.bucket for r in by_id["demo-chat"].routes] == [
        common_pb2.BUCKET_CREDIT,
        common_pb2.BUCKET_ROUTED,
    ]
    assert list(by_id["demo-embed"].endpoints) == [EMBEDDINGS]
    assert re.fullmatch(r"v[0-9]+", answer.catalog_version)


async def test_resolve_is_closed_to_the_operator_credential(routing, routing_operator) -> None:
    key = await routing.new_key()

    error = await refusal(routing_operator.resolve(key, "demo-chat"))

    assert error.reason is Reason.PERMISSION_DENIED
