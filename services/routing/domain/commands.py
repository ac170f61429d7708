"""What callers ask the routing service to do: one imperative dataclass per use case
(the use cases are in services/routing/handlers.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.routing.domain.access import Scope
from services.routing.domain.catalog import Endpoint, RouteKind
from services.routing.domain.limits import KeyLimits
from tokenforge.errors import DomainError
from tokenforge.money import Bucket


@dataclass(frozen=True)
class ResolveRoute:
    api_key: str
    model: str
    endpoint: Endpoint | None = None
    client_ip: str = ""
    # The request's prompt estimate and output cap (0: the model's max output).
    prompt_tokens: int = 0
    output_cap: int = 0
    # A preview checks the key but counts nothing and takes no lease.
    preview: bool = False


@dataclass(frozen=True)
class AttemptOutcome:
    channel_id: str
    outcome: str
    latency_ms: int


@dataclass(frozen=True)
class ReportOutcome:
    request_id: str
    key_id: str
    lease_id: str = ""
    attempts: tuple[AttemptOutcome, ...] = ()
    bucket: Bucket | None = None
    charge_micros: int = 0


@dataclass(frozen=True)
class ReportOutcomes:
    # Each report as read from the wire, or why it could not be read (its answer).
    reports: Sequence[ReportOutcome | DomainError]


@dataclass(frozen=True)
class ListApiKeys:
    account_id: str


@dataclass(frozen=True)
class RevokeApiKey:
    account_id: str
    key_id: str
    # The API key that asks (the user API): it may revoke only keys within its own
    # powers. Empty for an operator.
    acting_key_id: str = ""


@dataclass(frozen=True)
class RotateApiKey:
    account_id: str
    key_id: str
    grace: timedelta = timedelta(0)
    # As for RevokeApiKey: a key rotates only keys within its own powers.
    acting_key_id: str = ""


@dataclass(frozen=True)
class Authenticate:
    api_key: str
    scope: Scope | None = None
    # The caller's address, checked against the key's IP allow-list as Resolve does.
    client_ip: str = ""


@dataclass(frozen=True)
class OpenAccount:
    account_id: str
    display_name: str = ""


@dataclass(frozen=True)
class CreateApiKey:
    """A setting left empty (None, zero) is not given: the new key gets the acting
    key's own, or everything when an operator creates it (domain/access.py,
    `powers_for_new_key`)."""

    account_id: str
    project_id: str = ""
    name: str = ""
    scopes: tuple[Scope, ...] = ()
    expires_at: datetime | None = None
    allowed_models: tuple[str, ...] = ()
    allowed_route_kinds: tuple[RouteKind, ...] = ()
    route_preference: tuple[RouteKind, ...] = ()
    fallback_allowed: bool = False
    limits: KeyLimits = KeyLimits()
    # The API key that asks (the user API): the new key must be within its powers.
    # Empty for an operator (the admin token), who may give any.
    acting_key_id: str = ""
