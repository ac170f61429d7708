"""Configuration: environment variables prefixed `TOKENFORGE_`.

Telemetry is configured by the standard `OTEL_*` variables instead (see
tokenforge.runtime.telemetry).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# TOKENFORGE_ENV: "dev" (the default: `tokenforge dev`, tests, a laptop) or "prod".
ENVIRONMENTS = ("dev", "prod")


def _env(name: str, default: str = "") -> str:
    return os.environ.get(f"TOKENFORGE_{name}", default)


@dataclass(frozen=True)
class Settings:
    """What every service reads at start. Build it with `Settings.from_env()`."""

    database_url: str = ""
    # A service's own URL, as its own role (TOKENFORGE_<SERVICE>_DATABASE_URL): what
    # `serve <service>` and `migrate <service>` use before database_url; the owner's
    # database_url then only provisions the roles (tokenforge.runtime.db_roles).
    service_database_urls: dict[str, str] = field(default_factory=dict)
    nats_url: str = ""
    # Held by the services themselves: allows internal-only calls (Credit, Hold...).
    internal_token: str = ""
    # Held by operators (the CLI): allows operator-only calls (Adjust, review...).
    admin_token: str = ""
    # What servers hold instead of the admin token (TOKENFORGE_ADMIN_TOKEN_SHA256, hex):
    # enough to verify an operator, useless to act as one.
    admin_token_sha256: str = ""
    # One token per calling service, name -> token (TOKENFORGE_CALLER_TOKENS,
    # "gateway=tok1,payments=tok2"): servers know who calls and may refuse by name.
    caller_tokens: dict[str, str] = field(default_factory=dict)
    # The token this process presents to its peers (TOKENFORGE_SERVICE_TOKEN);
    # empty means the shared internal token (see `peer_token`).
    service_token: str = ""
    # Where each service's gRPC server is, "host:port".
    routing_addr: str = ""
    wallet_addr: str = ""
    payments_addr: str = ""
    usage_addr: str = ""
    gateway_addr: str = ""
    catalog_path: str = ""
    grpc_port: int = 0
    http_port: int = 0
    metrics_port: int = 0
    # The address the Prometheus endpoint binds (TOKENFORGE_METRICS_HOST): loopback
    # unless set; the k8s manifests set 0.0.0.0 where Prometheus scrapes the pod.
    metrics_host: str = "127.0.0.1"
    # Bucket labels and symbols are configuration; one set is used everywhere.
    bucket_labels: dict[str, tuple[str, str]] = field(default_factory=dict)
    log_level: str = "INFO"
    # How long (ms) a caller may reuse a Resolve answer for a key that counts nothing
    # per request (TOKENFORGE_RESOLVE_REUSE_MS; 0 turns reuse off). Routing never
    # answers more than this, nor past its own 2 s bound on a key's revocation.
    resolve_reuse_ms: int = 1000
    # How long (ms) the gateway lets an outcome report that can change nothing in
    # routing (a success on a reusable answer) wait for others, so that reports
    # travel together at low load too (TOKENFORGE_REPORT_LINGER_MS; 0: never wait).
    report_linger_ms: int = 50
    # Credit control for busy accounts (docs/ARCHITECTURE.md, "Budgets"): a gateway
    # replica holds one budget for this many requests' worst cases of an account's
    # bucket whose requests come less than a second apart, and draws them from it
    # (TOKENFORGE_BUDGET_REQUESTS; 0: every request holds for itself).
    budget_requests: int = 64
    # A budget no request drew from for this long (ms) is given back
    # (TOKENFORGE_BUDGET_IDLE_MS).
    budget_idle_ms: int = 1000
    # How long (ms) a gateway that is told to stop (SIGTERM) lets its open requests and
    # streams finish before it ends the rest (each settled for what it delivered) and
    # gives its budgets back (TOKENFORGE_SHUTDOWN_GRACE_MS); below the pod's
    # terminationGracePeriodSeconds.
    shutdown_grace_ms: int = 25_000
    # Upstream calls one gateway process keeps open at once (TOKENFORGE_UPSTREAM_MAX_
    # CONNECTIONS): one more is refused at once with 503 gateway_busy and Retry-After.
    upstream_max_connections: int = 4096
    # Replicas of the PAYMENTS stream (TOKENFORGE_NATS_REPLICAS): 1 on one server,
    # 3 on a 3-node JetStream cluster (the prod overlay); an existing stream is updated.
    nats_replicas: int = 1
    # The proxies whose `X-Forwarded-For` the gateway believes (IPs or CIDR blocks,
    # TOKENFORGE_TRUSTED_PROXIES="10.0.0.0/8,192.0.2.7"). None by default: the client
    # address every key check sees (the IP allow-list) is the connection's peer.
    trusted_proxies: tuple[str, ...] = ()
    # The web origins whose pages may call the API from a browser (CORS), e.g.
    # TOKENFORGE_CORS_ORIGINS="https://app.example.com,http://localhost:5173"; `*` for
    # any. None by default: the console is served by the gateway itself (same origin).
    cors_origins: tuple[str, ...] = ()
    # "prod" makes every service refuse to start with an unsafe setting
    # (`unsafe_for_prod`); "dev" allows them (TOKENFORGE_ENV).
    env: str = "dev"
    # Test money: the `sandbox` payments provider pays any order on request, so it
    # mints balance. Off unless configured (TOKENFORGE_SANDBOX_PROVIDER=on); `tokenforge
    # dev` turns it on; production refuses to start with it.
    sandbox_provider: bool = False
    # A CA bundle (PEM) to verify the NATS server's certificate with, for a `tls://`
    # NATS URL whose certificate a private CA signed (TOKENFORGE_NATS_CA_FILE).
    nats_ca_file: str = ""

    def database_url_for(self, service: str) -> str:
        """The URL `service` connects with: its own, else the shared one."""
        return self.service_database_urls.get(service) or self.database_url

    @property
    def admin_digest(self) -> str:
        """The SHA-256 (hex) of the admin token servers accept: the configured digest,
        or the token's own when a process holds the token (dev, tests, the CLI)."""
        if self.admin_token_sha256:
            return self.admin_token_sha256.lower()
        return admin_token_sha256(self.admin_token) if self.admin_token else ""

    @property
    def peer_token(self) -> str:
        """The credential this process presents when it calls another service."""
        return self.service_token or self.internal_token

    def unsafe_for_prod(self, service: str) -> list[str]:
        """Why `service` must not run in production with these settings (empty: safe);
        the rules are in tokenforge/prod_mode.py."""
        from tokenforge.prod_mode import unsafe_reasons

        return unsafe_reasons(self, service)

    @classmethod
    def from_env(cls) -> Settings:
        labels: dict[str, tuple[str, str]] = {}
        for bucket in ("credit", "routed"):
            label = _env(f"BUCKET_{bucket.upper()}_LABEL")
            symbol = _env(f"BUCKET_{bucket.upper()}_SYMBOL")
            if label or symbol:
                labels[bucket] = (label, symbol)
        return cls(
            database_url=_env("DATABASE_URL"),
            service_database_urls=service_database_urls(os.environ),
            nats_url=_env("NATS_URL"),
            internal_token=_env("INTERNAL_TOKEN"),
            admin_token=_env("ADMIN_TOKEN"),
            admin_token_sha256=_admin_token_sha256(_env("ADMIN_TOKEN"), _env("ADMIN_TOKEN_SHA256")),
            caller_tokens=parse_caller_tokens(_env("CALLER_TOKENS")),
            service_token=_env("SERVICE_TOKEN") or _env("INTERNAL_TOKEN"),
            routing_addr=_env("ROUTING_ADDR"),
            wallet_addr=_env("WALLET_ADDR"),
            payments_addr=_env("PAYMENTS_ADDR"),
            usage_addr=_env("USAGE_ADDR"),
            gateway_addr=_env("GATEWAY_ADDR"),
            catalog_path=_env("CATALOG_PATH"),
            grpc_port=int(_env("GRPC_PORT", "0")),
            http_port=int(_env("HTTP_PORT", "0")),
            metrics_port=int(_env("METRICS_PORT", "0")),
            metrics_host=_env("METRICS_HOST") or "127.0.0.1",
            bucket_labels=labels,
            log_level=_env("LOG_LEVEL", "INFO"),
            resolve_reuse_ms=int(_env("RESOLVE_REUSE_MS", "1000")),
            report_linger_ms=_non_negative("REPORT_LINGER_MS", "250"),
            budget_requests=_non_negative("BUDGET_REQUESTS", "64", "requests"),
            budget_idle_ms=_non_negative("BUDGET_IDLE_MS", "1000"),
            shutdown_grace_ms=_non_negative("SHUTDOWN_GRACE_MS", "25000"),
            upstream_max_connections=_non_negative(
                "UPSTREAM_MAX_CONNECTIONS", "4096", "connections"
            ),
            nats_replicas=_non_negative("NATS_REPLICAS", "1", "replicas"),
            trusted_proxies=parse_trusted_proxies(_env("TRUSTED_PROXIES")),
            cors_origins=parse_cors_origins(_env("CORS_ORIGINS")),
            env=_environment(),
            sandbox_provider=_switch("SANDBOX_PROVIDER"),
            nats_ca_file=_env("NATS_CA_FILE"),
        )


def service_database_urls(environ: Mapping[str, str]) -> dict[str, str]:
    """{"wallet": url} from TOKENFORGE_WALLET_DATABASE_URL=url, for every service."""
    found = {}
    for name, value in environ.items():
        matched = re.fullmatch(r"TOKENFORGE_([A-Z]+)_DATABASE_URL", name)
        if matched and value:
            found[matched.group(1).lower()] = value
    return found


def admin_token_sha256(token: str) -> str:
    """What to put in TOKENFORGE_ADMIN_TOKEN_SHA256 for `token`."""
    return hashlib.sha256(token.encode()).hexdigest()


def _admin_token_sha256(token: str, digest: str) -> str:
    digest = digest.strip().lower()
    if not digest:
        return ""
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(
            "TOKENFORGE_ADMIN_TOKEN_SHA256 is not a SHA-256 in hex (64 characters): "
            'give the output of `printf %s "$ADMIN_TOKEN" | sha256sum`'
        )
    if token and admin_token_sha256(token) != digest:
        raise ValueError(
            "TOKENFORGE_ADMIN_TOKEN and TOKENFORGE_ADMIN_TOKEN_SHA256 disagree: "
            "set the digest of that token, or only one of them"
        )
    return digest


def _environment() -> str:
    value = _env("ENV", "dev").strip().lower() or "dev"
    if value not in ENVIRONMENTS:
        raise ValueError(f"TOKENFORGE_ENV is {value!r}; give one of: {', '.join(ENVIRONMENTS)}")
    return value


def _switch(name: str) -> bool:
    value = _env(name, "off").strip().lower()
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no", ""):
        return False
    raise ValueError(f"TOKENFORGE_{name} is {value!r}; give on or off")


def _non_negative(name: str, default: str, unit: str = "milliseconds") -> int:
    value = int(_env(name, default))
    if value < 0:
        raise ValueError(f"TOKENFORGE_{name} is {value}; give 0 or more ({unit})")
    return value


def parse_trusted_proxies(text: str) -> tuple[str, ...]:
    """ "10.0.0.0/8, 192.0.2.7" -> ("10.0.0.0/8", "192.0.2.7"); anything else refused,
    `*` too (it would let any client name its own address to an IP allow-list)."""
    proxies: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(
                f"TOKENFORGE_TRUSTED_PROXIES entry {item!r} is not an IP address or CIDR "
                "block; list your proxies' addresses (e.g. the ingress controller's pod "
                "CIDR 10.244.0.0/16), never `*`"
            ) from None
        proxies.append(item)
    return tuple(proxies)


def parse_cors_origins(text: str) -> tuple[str, ...]:
    """ "https://a.example, http://localhost:5173" -> the two origins; `*` alone for any
    origin. An entry that is not an origin (a path, no scheme, a trailing slash) is
    refused: a browser sends the bare origin, so it would never match."""
    origins: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item != "*":
            parts = urlsplit(item)
            bare = f"{parts.scheme}://{parts.netloc}"
            if parts.scheme not in ("http", "https") or not parts.netloc or item != bare:
                raise ValueError(
                    f"TOKENFORGE_CORS_ORIGINS entry {item!r} is not an origin; give "
                    "scheme://host[:port] with no path, e.g. https://app.example.com, "
                    "or `*` for any origin"
                )
        origins.append(item)
    return tuple(origins)


def parse_caller_tokens(text: str) -> dict[str, str]:
    """ "gateway=tok1,payments=tok2" -> {"gateway": "tok1", "payments": "tok2"}."""
    tokens: dict[str, str] = {}
    for item in text.split(","):
        name, sep, token = item.strip().partition("=")
        if not item.strip():
            continue
        if not sep or not name.strip() or not token.strip():
            raise ValueError(f"TOKENFORGE_CALLER_TOKENS entry {item.strip()!r} is not name=token")
        tokens[name.strip()] = token.strip()
    return tokens
