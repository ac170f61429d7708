"""Production mode (TOKENFORGE_ENV=prod): every service refuses to start with an
unsafe setting (test money on, NATS without credentials or TLS, development or
missing tokens), and says why; with safe settings it starts."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from dataclasses import replace

import pytest

from tokenforge.config import Settings
from tokenforge.prod_mode import NATS_USERS, UnsafeForProduction
from tokenforge.runtime.service import SERVICES, load


def safe(service: str, database_url: str = "postgresql://db.invalid/tokenforge") -> Settings:
    password = secrets.token_urlsafe(24)
    return Settings(
        env="prod",
        database_url=database_url,
        admin_token=secrets.token_urlsafe(32),
        internal_token=secrets.token_urlsafe(32),
        caller_tokens={name: secrets.token_urlsafe(32) for name in SERVICES},
        nats_url=f"tls://{service}:{password}@nats.tokenforge.svc:4222"
        if service in NATS_USERS
        else "",
        payments_addr="payments:50051",
    )


# (what is unsafe, how, the words of the refusal)
UNSAFE_EVERYWHERE = [
    ("test money", {"sandbox_provider": True}, "the sandbox payments provider is on"),
    (
        "the dev overlay's admin token",
        {"admin_token": "dev-only-admin-token"},
        "TOKENFORGE_ADMIN_TOKEN is a development default",
    ),
    (
        "a test's internal token",
        {"internal_token": "e2e-internal-token"},
        "TOKENFORGE_INTERNAL_TOKEN is a development default",
    ),
    ("a short admin token", {"admin_token": "hunter2"}, "shorter than 24 characters"),
    (
        "a development service token",
        {"caller_tokens": {"gateway": "dev-gateway-token"}},
        "TOKENFORGE_CALLER_TOKENS has a development default or short token for gateway",
    ),
    (
        "no token at all",
        {"admin_token": "", "internal_token": "", "caller_tokens": {}},
        "no token is set",
    ),
]
UNSAFE_NATS = [
    ("NATS without credentials", "tls://nats.tokenforge.svc:4222", "has no user and password"),
    ("NATS in clear text", "nats://wallet:{pw}@nats.tokenforge.svc:4222", "not tls://"),
    ("no NATS at all", "", "TOKENFORGE_NATS_URL is not set"),
]


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize(
    ("what", "change", "words"), UNSAFE_EVERYWHERE, ids=[u[0] for u in UNSAFE_EVERYWHERE]
)
async def test_every_service_refuses_to_start_in_prod_with_an_unsafe_setting_and_says_why(
    service: str, what: str, change: dict[str, object], words: str
) -> None:
    settings = replace(safe(service), **change)  # type: ignore[arg-type]

    with pytest.raises(UnsafeForProduction) as refused:
        await load(service).start(settings, port=0)

    message = str(refused.value)
    assert message.startswith(f"{service} refuses to start in production"), message
    assert words in message, (what, message)
    assert "docs/DEPLOY.md" in message


@pytest.mark.parametrize("service", NATS_USERS)
@pytest.mark.parametrize(("what", "url", "words"), UNSAFE_NATS, ids=[u[0] for u in UNSAFE_NATS])
async def test_services_on_nats_refuse_prod_without_credentials_or_tls(
    service: str, what: str, url: str, words: str
) -> None:
    settings = replace(safe(service), nats_url=url.format(pw=secrets.token_urlsafe(24)))

    with pytest.raises(UnsafeForProduction) as refused:
        await load(service).start(settings, port=0)

    assert words in str(refused.value), (what, str(refused.value))


def test_the_same_settings_are_fine_in_dev() -> None:
    assert replace(safe("payments"), env="dev", sandbox_provider=True).env == "dev"
    assert safe("payments").unsafe_for_prod("payments") == []
    # Dev allows them: `unsafe_for_prod` lists them, only prod refuses.
    dev = replace(safe("payments"), env="dev", sandbox_provider=True, admin_token="t-admin")
    assert len(dev.unsafe_for_prod("payments")) == 2


def test_tokenforge_serve_in_prod_with_test_money_exits_and_says_why() -> None:
    env = {
        **os.environ,
        "TOKENFORGE_ENV": "prod",
        "TOKENFORGE_SANDBOX_PROVIDER": "on",
        "TOKENFORGE_ADMIN_TOKEN": "dev-only-admin-token",
        "TOKENFORGE_NATS_URL": "nats://127.0.0.1:4222",
        "TOKENFORGE_DATABASE_URL": "postgresql://db.invalid/tokenforge",
    }
    done = subprocess.run(
        [sys.executable, "-m", "apps.cli", "serve", "payments", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 78, done.stderr
    for words in (
        "payments refuses to start in production",
        "the sandbox payments provider is on",
        "TOKENFORGE_ADMIN_TOKEN is a development default",
        "has no user and password",
        "not tls://",
    ):
        assert words in done.stderr


async def test_a_service_with_safe_settings_starts_in_prod(database_url: str) -> None:
    from services.usage import app as usage_app

    await asyncio.to_thread(usage_app.migrate, database_url)
    running = await usage_app.start(safe("usage", database_url), port=0)
    try:
        assert running.port > 0
    finally:
        await running.stop(grace=0.1)
