"""The settings of issue 17: test money is off unless configured, production mode is
named, and a value that is neither is refused with what to give instead."""

from __future__ import annotations

import pytest

from tokenforge.config import Settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in [n for n in os.environ if n.startswith("TOKENFORGE_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_by_default_there_is_no_test_money_and_the_environment_is_dev(
    clean_env: pytest.MonkeyPatch,
) -> None:
    settings = Settings.from_env()

    assert settings.sandbox_provider is False
    assert settings.env == "dev"


@pytest.mark.parametrize(("value", "on"), [("on", True), ("ON", True), ("1", True), ("off", False)])
def test_the_sandbox_is_on_only_when_configured(
    clean_env: pytest.MonkeyPatch, value: str, on: bool
) -> None:
    clean_env.setenv("TOKENFORGE_SANDBOX_PROVIDER", value)

    assert Settings.from_env().sandbox_provider is on


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("TOKENFORGE_SANDBOX_PROVIDER", "maybe", "give on or off"),
        ("TOKENFORGE_ENV", "production", "give one of: dev, prod"),
    ],
)
def test_an_unclear_value_is_refused(
    clean_env: pytest.MonkeyPatch, name: str, value: str, words: str
) -> None:
    clean_env.setenv(name, value)

    with pytest.raises(ValueError, match=words):
        Settings.from_env()


def test_prod_is_read_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TOKENFORGE_ENV", "prod")
    clean_env.setenv("TOKENFORGE_NATS_CA_FILE", "/etc/tokenforge/nats-ca/ca.crt")

    settings = Settings.from_env()

    assert settings.env == "prod"
    assert settings.nats_ca_file == "/etc/tokenforge/nats-ca/ca.crt"
