"""Servers verify operators by the admin token's SHA-256: a pod that holds only the
digest (TOKENFORGE_ADMIN_TOKEN_SHA256) accepts the operator and cannot act as one."""

from __future__ import annotations

import hashlib

import pytest

from tokenforge.config import Settings, admin_token_sha256
from tokenforge.runtime.grpc_server import Caller, Credentials, Role

ADMIN = "adm_the-operators-token"
DIGEST = hashlib.sha256(ADMIN.encode()).hexdigest()


def test_a_server_holding_only_the_digest_knows_the_operator() -> None:
    settings = Settings(internal_token="int", admin_token_sha256=DIGEST)
    credentials = Credentials.from_settings(settings)
    assert credentials is not None
    assert credentials.identify(ADMIN) == Caller(Role.OPERATOR, "operator")
    assert credentials.identify(DIGEST) is None  # the digest is no credential
    assert credentials.identify(ADMIN + "x") is None
    assert credentials.identify("int") == Caller(Role.INTERNAL, "internal")
    assert ADMIN not in repr(credentials)


def test_the_token_and_its_digest_verify_alike() -> None:
    assert admin_token_sha256(ADMIN) == DIGEST
    from_token = Credentials.from_settings(Settings(admin_token=ADMIN))
    assert from_token is not None and from_token.admin_token == ""
    assert from_token.identify(ADMIN) == Caller(Role.OPERATOR, "operator")
    assert Credentials("int", ADMIN).identify(ADMIN) == Caller(Role.OPERATOR, "operator")
    assert Credentials.from_settings(Settings(admin_token_sha256=DIGEST)) is not None


def test_settings_read_the_digest_and_refuse_a_wrong_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENFORGE_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("TOKENFORGE_ADMIN_TOKEN_SHA256", DIGEST.upper())
    settings = Settings.from_env()
    assert settings.admin_token == "" and settings.admin_digest == DIGEST
    monkeypatch.setenv("TOKENFORGE_ADMIN_TOKEN_SHA256", "not-hex")
    with pytest.raises(ValueError, match="64 characters"):
        Settings.from_env()
    monkeypatch.setenv("TOKENFORGE_ADMIN_TOKEN_SHA256", admin_token_sha256("another"))
    monkeypatch.setenv("TOKENFORGE_ADMIN_TOKEN", ADMIN)
    with pytest.raises(ValueError, match="disagree"):
        Settings.from_env()
    monkeypatch.setenv("TOKENFORGE_ADMIN_TOKEN_SHA256", DIGEST)
    assert Settings.from_env().admin_digest == DIGEST
