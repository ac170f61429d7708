"""Choosing a route: suffix pins the kind, otherwise the key's preference; fallback only
when the key allows it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.routing.domain.access import (
    ApiKey,
    Scope,
    choose_route,
    require_active,
    require_scope,
    split_selected_model,
)
from services.routing.domain.catalog import Catalog, Endpoint, RouteKind
from services.routing.storage.catalog_file import DEMO_CATALOG, read_catalog
from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket

NOW = datetime(2026, 3, 1, tzinfo=UTC)
OFFICIAL, ROUTED = RouteKind.OFFICIAL, RouteKind.ROUTED


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return read_catalog(DEMO_CATALOG, {})


def a_key(**changes: Any) -> ApiKey:
    fields: dict[str, Any] = {
        "key_id": "key_1",
        "account_id": "acct",
        "project_id": "prj",
        "name": "",
        "prefix": "tf_abcde",
        "digest": "0" * 64,
        "created_at": NOW,
    }
    fields.update(changes)
    return ApiKey(**fields)


def refusal(
    catalog: Catalog, key: ApiKey, model: str, endpoint: Endpoint | None = None
) -> DomainError:
    with pytest.raises(DomainError) as caught:
        choose_route(catalog, key, model, endpoint)
    return caught.value


@pytest.mark.parametrize(
    ("model", "kind", "bucket"),
    [("demo-chat@official", OFFICIAL, Bucket.CREDIT), ("demo-chat@routed", ROUTED, Bucket.ROUTED)],
)
def test_a_suffix_pins_the_route_kind_and_so_the_bucket(
    catalog: Catalog, model: str, kind: RouteKind, bucket: Bucket
) -> None:
    chosen = choose_route(catalog, a_key(route_preference=(ROUTED, OFFICIAL)), model, Endpoint.CHAT)

    assert (chosen.route.kind, chosen.route.bucket) == (kind, bucket)
    assert chosen.selected_model == model
    assert chosen.model.id == "demo-chat"


def test_a_pinned_kind_has_no_fallback_even_when_the_key_allows_fallback(catalog: Catalog) -> None:
    chosen = choose_route(catalog, a_key(fallback_allowed=True), "demo-chat@official", None)

    assert chosen.fallback_routes == ()


def test_without_a_suffix_the_keys_preference_picks_the_route(catalog: Catalog) -> None:
    default = choose_route(catalog, a_key(), "demo-chat", Endpoint.CHAT)
    routed_first = choose_route(
        catalog, a_key(route_preference=(ROUTED, OFFICIAL)), "demo-chat", None
    )

    assert default.route.kind is OFFICIAL
    assert routed_first.route.kind is ROUTED


def test_other_routes_are_fallbacks_only_when_the_key_allows_it(catalog: Catalog) -> None:
    plain = choose_route(catalog, a_key(), "demo-chat", None)
    allowed = choose_route(catalog, a_key(fallback_allowed=True), "demo-chat", None)

    assert plain.fallback_routes == ()
    assert [r.kind for r in allowed.fallback_routes] == [ROUTED]


def test_fallbacks_never_include_a_route_kind_the_key_may_not_use(catalog: Catalog) -> None:
    chosen = choose_route(
        catalog, a_key(fallback_allowed=True, allowed_route_kinds=(ROUTED,)), "demo-chat", None
    )

    assert chosen.route.kind is ROUTED
    assert chosen.fallback_routes == ()


def test_an_unknown_suffix_is_an_invalid_argument() -> None:
    with pytest.raises(DomainError) as caught:
        split_selected_model("demo-chat@fast")

    assert caught.value.reason is Reason.INVALID_ARGUMENT
    assert split_selected_model("demo-chat") == ("demo-chat", None)


def test_an_unknown_model_is_named_with_the_available_ones(catalog: Catalog) -> None:
    error = refusal(catalog, a_key(), "gpt-9@routed")

    assert error.reason is Reason.MODEL_NOT_FOUND
    assert "'gpt-9'" in error.message and "demo-chat, demo-claude, demo-embed" in error.message


def test_a_kind_the_model_does_not_have_is_not_found(catalog: Catalog) -> None:
    error = refusal(catalog, a_key(), "demo-embed@routed", Endpoint.EMBEDDINGS)

    assert error.reason is Reason.MODEL_NOT_FOUND
    assert "demo-embed@official" in error.message


def test_an_embeddings_model_on_the_chat_endpoint_is_invalid(catalog: Catalog) -> None:
    error = refusal(catalog, a_key(), "demo-embed", Endpoint.CHAT)

    assert error.reason is Reason.INVALID_ARGUMENT
    assert "/v1/embeddings" in error.message


@pytest.mark.parametrize(
    ("changes", "model"),
    [
        ({"allowed_models": ("demo-embed",)}, "demo-chat"),
        ({"allowed_models": ("other-*",)}, "demo-chat@official"),
        ({"allowed_route_kinds": (OFFICIAL,)}, "demo-chat@routed"),
        ({"allowed_route_kinds": ()}, "demo-chat"),
    ],
)
def test_a_model_or_kind_outside_the_keys_allowance_is_not_allowed(
    catalog: Catalog, changes: dict[str, Any], model: str
) -> None:
    assert refusal(catalog, a_key(**changes), model).reason is Reason.MODEL_NOT_ALLOWED


def test_model_patterns_are_fnmatch_patterns(catalog: Catalog) -> None:
    chosen = choose_route(catalog, a_key(allowed_models=("demo-*",)), "demo-chat", None)

    assert chosen.route.model == "demo-chat"


@pytest.mark.parametrize(
    "changes",
    [
        {"revoked_at": NOW - timedelta(days=1)},
        {"expires_at": NOW},
        {"expires_at": NOW - timedelta(seconds=1)},
    ],
)
def test_revoked_or_expired_keys_read_as_unknown(changes: dict[str, Any]) -> None:
    with pytest.raises(DomainError) as caught:
        require_active(a_key(**changes), NOW)

    assert caught.value.reason is Reason.UNKNOWN_API_KEY
    assert require_active(a_key(expires_at=NOW + timedelta(seconds=1)), NOW).key_id == "key_1"


def test_a_key_without_the_scope_is_refused_naming_the_scope() -> None:
    with pytest.raises(DomainError) as caught:
        require_scope(a_key(scopes=frozenset({Scope.WALLET_READ})), Scope.INFERENCE)

    assert caught.value.reason is Reason.SCOPE_MISSING
    assert caught.value.metadata == {"scope": "inference"}
