"""Production mode (TOKENFORGE_ENV=prod): the settings no service may run with.

Every service's `start` calls `refuse_unsafe_prod` first (and `tokenforge serve` before
anything else, exiting 78): in production a service refuses to start, logging every
reason at once, with test money on (the sandbox provider mints balance), NATS without
a user and password or without TLS (payments and the wallet), no token at all, or a
development or short token. docs/DEPLOY.md, "Production mode, test money and NATS
users", lists what to set.
In dev the same settings are allowed: `Settings.unsafe_for_prod` still lists them.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from tokenforge.config import Settings, admin_token_sha256

log = logging.getLogger(__name__)

# The services that connect to NATS (payments publishes, the wallet consumes).
NATS_USERS = ("payments", "wallet")
MIN_TOKEN_LENGTH = 24
# Tokens that shipped in examples, dev set-ups and tests (anything starting "dev-", as
# the k8s dev overlay's "dev-only-..." placeholders, too): never in production.
DEV_TOKENS = frozenset(
    {
        "change-me",
        "changeme",
        "e2e-internal-token",
        "e2e-admin-token",
        "t-internal",
        "t-admin",
    }
)


# The placeholders the k8s dev overlay and the docs use, as the digests servers hold.
DEV_TOKEN_DIGESTS = frozenset(
    admin_token_sha256(token)
    for token in (*DEV_TOKENS, "dev-only-admin-token", "dev-only-internal-token")
)


class UnsafeForProduction(RuntimeError):
    """A service asked to start in production with settings that open a door."""


def weak(token: str) -> bool:
    return token in DEV_TOKENS or token.startswith("dev-") or len(token) < MIN_TOKEN_LENGTH


def unsafe_reasons(settings: Settings, service: str) -> list[str]:
    """Why `service` must not run in production with `settings` (empty: safe)."""
    reasons: list[str] = []
    if settings.sandbox_provider:
        reasons.append(
            "the sandbox payments provider is on (TOKENFORGE_SANDBOX_PROVIDER): it pays "
            "any order without a payment, so anyone with a top-up key mints balance; "
            "unset it"
        )
    if service in NATS_USERS:
        nats = urlsplit(settings.nats_url) if settings.nats_url else None
        if nats is None:
            reasons.append(
                "TOKENFORGE_NATS_URL is not set: top-up events would not flow; give the "
                "NATS URL with this service's user and password"
            )
        else:
            if not (nats.username and nats.password):
                reasons.append(
                    "TOKENFORGE_NATS_URL has no user and password: anyone who reaches "
                    "NATS could publish top-up events; use "
                    f"tls://{service}:<password>@<host>:4222"
                )
            if nats.scheme != "tls":
                reasons.append(
                    f"TOKENFORGE_NATS_URL is {nats.scheme}://, not tls://: passwords and "
                    "events would cross the network in clear text"
                )
    if not (settings.admin_token or settings.internal_token or settings.caller_tokens):
        reasons.append(
            "no token is set (TOKENFORGE_ADMIN_TOKEN, TOKENFORGE_INTERNAL_TOKEN, "
            "TOKENFORGE_CALLER_TOKENS): the service would take every call with no "
            "credential at all; set long random tokens from a Secret"
        )
    if settings.admin_token and weak(settings.admin_token):
        reasons.append(
            "TOKENFORGE_ADMIN_TOKEN is a development default or shorter than "
            f"{MIN_TOKEN_LENGTH} characters; set a long random token from a Secret"
        )
    if settings.admin_token_sha256.lower() in DEV_TOKEN_DIGESTS:
        reasons.append(
            "TOKENFORGE_ADMIN_TOKEN_SHA256 is the digest of a development token; give the "
            "digest of a long random token that only operators hold"
        )
    if settings.internal_token and weak(settings.internal_token):
        reasons.append(
            "TOKENFORGE_INTERNAL_TOKEN is a development default or shorter than "
            f"{MIN_TOKEN_LENGTH} characters; set a long random token from a Secret"
        )
    if settings.service_token and weak(settings.service_token):
        reasons.append(
            "TOKENFORGE_SERVICE_TOKEN is a development default or shorter than "
            f"{MIN_TOKEN_LENGTH} characters; set a long random token from a Secret"
        )
    weak_callers = sorted(name for name, tok in settings.caller_tokens.items() if weak(tok))
    if weak_callers:
        reasons.append(
            f"TOKENFORGE_CALLER_TOKENS has a development default or short token for "
            f"{', '.join(weak_callers)}; give each service a long random token"
        )
    return reasons


def refuse_unsafe_prod(settings: Settings, service: str) -> None:
    """In production, refuse to start `service` with an unsafe setting, saying every
    reason at once (logged, and raised as UnsafeForProduction)."""
    if settings.env != "prod":
        return
    reasons = unsafe_reasons(settings, service)
    if reasons:
        error = UnsafeForProduction(
            f"{service} refuses to start in production (TOKENFORGE_ENV=prod): "
            + "; ".join(reasons)
            + '. See docs/DEPLOY.md, "Production mode, test money and NATS users".'
        )
        log.error("%s", error)
        raise error
