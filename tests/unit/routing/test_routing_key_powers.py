"""A key manages only keys within its own powers (domain/access.py): what a new key
may have, what it inherits when a setting is left out, and what is refused, naming
each power that exceeds. Plus the one check every route makes of a key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.routing.domain.access import (
    ALL_ROUTE_KINDS,
    ApiKey,
    KeyPowers,
    Scope,
    powers_for_new_key,
    require_usable,
    require_within,
)
from services.routing.domain.catalog import RouteKind
from services.routing.domain.limits import KeyLimits, SpendCap
from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket

NOW = datetime(2026, 3, 1, tzinfo=UTC)
OFFICIAL, ROUTED = RouteKind.OFFICIAL, RouteKind.ROUTED


def a_key(**changes: Any) -> ApiKey:
    fields: dict[str, Any] = {
        "key_id": "key_parent",
        "account_id": "acct",
        "project_id": "prj",
        "name": "",
        "prefix": "tf_abcde",
        "digest": "0" * 64,
        "created_at": NOW,
    }
    fields.update(changes)
    return ApiKey(**fields)


# The key of the issue: inference and keys, the embedding model, routed routes only.
RESTRICTED = a_key(
    scopes=frozenset({Scope.INFERENCE, Scope.KEYS}),
    allowed_models=("demo-embed",),
    allowed_route_kinds=(ROUTED,),
    route_preference=(ROUTED,),
)


def refusal(actor: ApiKey, asked: KeyPowers) -> DomainError:
    with pytest.raises(DomainError) as caught:
        powers_for_new_key(asked, actor)
    return caught.value


def exceeds(error: DomainError) -> set[str]:
    assert error.metadata is not None
    return set(error.metadata["exceeds"].split(","))


# -- inheritance -------------------------------------------------------------------


def test_an_operator_gives_everything_not_asked_for() -> None:
    powers = powers_for_new_key(KeyPowers(), None)

    assert powers.scopes == frozenset(Scope)
    assert powers.allowed_models == ("*",)
    assert powers.allowed_route_kinds == ALL_ROUTE_KINDS
    assert powers.expires_at is None
    assert powers.limits == KeyLimits()


def test_a_key_left_to_defaults_gets_the_creators_restrictions_not_everything() -> None:
    creator = a_key(
        scopes=frozenset({Scope.INFERENCE, Scope.KEYS}),
        allowed_models=("demo-embed",),
        allowed_route_kinds=(ROUTED,),
        route_preference=(ROUTED,),
        expires_at=NOW + timedelta(days=1),
        limits=KeyLimits(
            ip_allowlist=("10.11.12.0/24",),
            requests_per_minute=10,
            tokens_per_minute=1000,
            max_in_flight=2,
            spend_caps=(SpendCap(Bucket.CREDIT, daily_micros=5, total_micros=50),),
        ),
    )

    powers = powers_for_new_key(KeyPowers(), creator)

    assert powers == KeyPowers.of(creator)


def test_a_limit_left_out_is_inherited_and_one_given_is_kept() -> None:
    creator = a_key(
        limits=KeyLimits(
            requests_per_minute=10,
            spend_caps=(SpendCap(Bucket.CREDIT, daily_micros=5_000, total_micros=50_000),),
        )
    )
    asked = KeyPowers(
        limits=KeyLimits(
            requests_per_minute=3,
            spend_caps=(
                SpendCap(Bucket.CREDIT, daily_micros=1_000),
                SpendCap(Bucket.ROUTED, total_micros=7),
            ),
        )
    )

    limits = powers_for_new_key(asked, creator).limits

    assert limits.requests_per_minute == 3
    assert limits.cap(Bucket.CREDIT) == SpendCap(Bucket.CREDIT, 1_000, 50_000)
    assert limits.cap(Bucket.ROUTED) == SpendCap(Bucket.ROUTED, 0, 7)


def test_a_key_within_its_creators_powers_is_allowed() -> None:
    creator = a_key(
        allowed_models=("demo-*",),
        fallback_allowed=True,
        expires_at=NOW + timedelta(days=2),
        limits=KeyLimits(ip_allowlist=("10.0.0.0/8", "2001:db8::/32"), requests_per_minute=10),
    )
    asked = KeyPowers(
        scopes=frozenset({Scope.INFERENCE}),
        allowed_models=("demo-chat", "demo-embed*"),
        allowed_route_kinds=(OFFICIAL,),
        fallback_allowed=True,
        expires_at=NOW + timedelta(days=1),
        limits=KeyLimits(
            ip_allowlist=("10.1.2.3", "10.9.0.0/16", "2001:db8:1::/48"), requests_per_minute=10
        ),
    )

    powers = powers_for_new_key(asked, creator)

    assert powers.allowed_models == ("demo-chat", "demo-embed*")
    assert powers.limits.ip_allowlist == ("10.1.2.3", "10.9.0.0/16", "2001:db8:1::/48")


# -- refusals ----------------------------------------------------------------------


def test_the_issues_broader_key_is_refused_naming_every_power_that_exceeds() -> None:
    asked = KeyPowers(
        scopes=frozenset(Scope),
        allowed_models=("*",),
        allowed_route_kinds=(OFFICIAL, ROUTED),
    )

    error = refusal(RESTRICTED, asked)

    assert error.reason is Reason.PERMISSION_DENIED
    assert exceeds(error) == {"scopes", "allowed_models", "allowed_route_kinds"}
    assert error.metadata is not None and error.metadata["param"] == "scopes"
    assert "topup, wallet_read" in error.message
    assert "models *" in error.message and "demo-embed" in error.message
    assert "official routes" in error.message


@pytest.mark.parametrize(
    ("pattern", "within"),
    [
        ("demo-chat", True),  # a plain id the creator's pattern matches
        ("demo-c?at", True),  # inside the fixed prefix of demo-*
        ("demo-*", True),
        ("demo-chat-*", True),
        ("*", False),
        ("d*", False),
        ("other", False),
        ("[d]emo-chat", False),  # could be within, but not provably: refused
    ],
)
def test_model_patterns_must_be_provably_inside_the_creators(pattern: str, within: bool) -> None:
    creator = a_key(allowed_models=("demo-*",))
    asked = KeyPowers(allowed_models=(pattern,))

    if within:
        assert powers_for_new_key(asked, creator).allowed_models == (pattern,)
    else:
        assert exceeds(refusal(creator, asked)) == {"allowed_models"}


@pytest.mark.parametrize(
    "entry", ["10.11.13.0/24", "10.11.0.0/16", "0.0.0.0/0", "10.11.13.1", "::1", "::/0"]
)
def test_an_ip_allow_list_no_wider_than_the_creators(entry: str) -> None:
    creator = a_key(limits=KeyLimits(ip_allowlist=("10.11.12.0/24",)))

    error = refusal(creator, KeyPowers(limits=KeyLimits(ip_allowlist=("10.11.12.7", entry))))

    assert exceeds(error) == {"ip_allowlist"}
    assert entry in error.message and "10.11.12.7," not in error.message


def test_fallback_only_if_the_creator_has_it() -> None:
    error = refusal(a_key(fallback_allowed=False), KeyPowers(fallback_allowed=True))

    assert exceeds(error) == {"fallback_allowed"}


def test_an_end_no_later_than_the_creators_own() -> None:
    creator = a_key(expires_at=NOW + timedelta(hours=1))

    later = refusal(creator, KeyPowers(expires_at=NOW + timedelta(hours=2)))

    assert exceeds(later) == {"expires_at"}


def test_a_key_in_its_rotation_grace_ends_then_and_its_keys_with_it() -> None:
    creator = a_key(revoked_at=NOW + timedelta(minutes=5))

    inherited = powers_for_new_key(KeyPowers(), creator)

    assert inherited.expires_at == NOW + timedelta(minutes=5)
    assert exceeds(refusal(creator, KeyPowers(expires_at=NOW + timedelta(hours=1)))) == {
        "expires_at"
    }


@pytest.mark.parametrize("name", ["requests_per_minute", "tokens_per_minute", "max_in_flight"])
def test_rate_limits_no_higher_than_the_creators(name: str) -> None:
    creator = a_key(limits=KeyLimits(**{name: 5}))

    error = refusal(creator, KeyPowers(limits=KeyLimits(**{name: 6})))

    assert exceeds(error) == {name}
    assert powers_for_new_key(KeyPowers(limits=KeyLimits(**{name: 5})), creator)


def test_spend_caps_no_higher_than_the_creators() -> None:
    creator = a_key(limits=KeyLimits(spend_caps=(SpendCap(Bucket.ROUTED, daily_micros=1_000),)))
    asked = KeyPowers(limits=KeyLimits(spend_caps=(SpendCap(Bucket.ROUTED, daily_micros=1_001),)))

    error = refusal(creator, asked)

    assert exceeds(error) == {"spend_caps"}
    assert "daily spend cap" in error.message


def test_rotating_or_revoking_a_broader_key_is_refused_and_a_narrower_one_is_not() -> None:
    broader = a_key(key_id="key_owner")
    narrower = a_key(
        key_id="key_child",
        scopes=frozenset({Scope.INFERENCE}),
        allowed_models=("demo-embed",),
        allowed_route_kinds=(ROUTED,),
    )

    with pytest.raises(DomainError) as caught:
        require_within(RESTRICTED, KeyPowers.of(broader), "rotate")

    assert caught.value.reason is Reason.PERMISSION_DENIED
    assert caught.value.message.startswith("This API key may rotate only keys within")
    require_within(RESTRICTED, KeyPowers.of(narrower), "rotate")
    require_within(RESTRICTED, KeyPowers.of(RESTRICTED), "revoke")


# -- the check every route makes -----------------------------------------------------


def test_every_route_checks_scope_and_address() -> None:
    key = a_key(
        scopes=frozenset({Scope.WALLET_READ}),
        limits=KeyLimits(ip_allowlist=("10.11.12.0/24",)),
    )

    require_usable(key, Scope.WALLET_READ, "10.11.12.9")
    require_usable(key, Scope.WALLET_READ, "::ffff:10.11.12.9")  # a dual-stack listener
    for scope, ip, reason in [
        (Scope.WALLET_READ, "127.0.0.1", Reason.PERMISSION_DENIED),
        (Scope.WALLET_READ, "", Reason.PERMISSION_DENIED),
        (Scope.WALLET_READ, "::ffff:127.0.0.1", Reason.PERMISSION_DENIED),
        (None, "127.0.0.1", Reason.PERMISSION_DENIED),
        (Scope.KEYS, "10.11.12.9", Reason.SCOPE_MISSING),
    ]:
        with pytest.raises(DomainError) as caught:
            require_usable(key, scope, ip)
        assert caught.value.reason is reason
