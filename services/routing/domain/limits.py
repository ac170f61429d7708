"""An API key's limits and the rules that refuse a request over them (no I/O).

Where the counters live: in routing's PostgreSQL (tables `rate_windows`,
`in_flight_leases`, `key_spend`), never in a gateway's memory, so every gateway
replica and every routing replica counts against the same rows.

- Requests and tokens per minute are **fixed one-minute windows** (UTC minute):
  one atomic `INSERT ... ON CONFLICT DO UPDATE SET used = used + n RETURNING used`
  per limit. The increments and the check run in one transaction that rolls back
  when the request is refused, so a refused request consumes nothing. A fixed
  window lets a client send up to twice the limit across a minute boundary; that
  is the price of one row per key and minute.
- Tokens are the request's worst case: the gateway's prompt estimate (an upper
  bound) plus the output cap.
- Requests in flight are **leases** with a TTL (the route's timeouts plus a
  margin): the gateway ends each lease in its outcome report; a crashed gateway's
  lease expires instead of leaking the slot.
- Spend is learnt from the gateway's outcome reports (routing never touches the
  wallet): per key, bucket and UTC day, and in total. A cap is checked before the
  request; one request may overshoot a cap by at most its own charge.

A key without limits costs no database write on the request path.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket, format_amount

WINDOW = timedelta(minutes=1)
REQUESTS = "requests"
TOKENS = "tokens"
TOTAL = "total"


@dataclass(frozen=True)
class SpendCap:
    bucket: Bucket
    # Zero means no cap of that kind.
    daily_micros: int = 0
    total_micros: int = 0


@dataclass(frozen=True)
class KeyLimits:
    """Zero (or empty) means "no limit"."""

    ip_allowlist: tuple[str, ...] = ()
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    max_in_flight: int = 0
    spend_caps: tuple[SpendCap, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute", "max_in_flight"):
            if getattr(self, name) < 0:
                raise DomainError(Reason.INVALID_ARGUMENT, f"{name} must be zero or more.")
        for entry in self.ip_allowlist:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise DomainError(
                    Reason.INVALID_ARGUMENT,
                    f"{entry!r} in the IP allow-list is neither an IP address nor a CIDR "
                    "block (write 203.0.113.7 or 203.0.113.0/24).",
                    {"param": "ip_allowlist"},
                ) from None
        buckets = [c.bucket for c in self.spend_caps]
        if len(set(buckets)) != len(buckets):
            raise DomainError(Reason.INVALID_ARGUMENT, "Give at most one spend cap per bucket.")
        if any(c.daily_micros < 0 or c.total_micros < 0 for c in self.spend_caps):
            raise DomainError(Reason.INVALID_ARGUMENT, "Spend caps must be zero or more.")

    @property
    def counts_requests(self) -> bool:
        """Does a request need the counters at all (a database transaction)?"""
        return bool(
            self.requests_per_minute
            or self.tokens_per_minute
            or self.max_in_flight
            or any(c.daily_micros or c.total_micros for c in self.spend_caps)
        )

    def cap(self, bucket: Bucket) -> SpendCap | None:
        return next((c for c in self.spend_caps if c.bucket is bucket), None)


def window_start(now: datetime) -> datetime:
    return now.replace(second=0, microsecond=0)


def retry_after_s(now: datetime) -> int:
    """Whole seconds until the current window ends (at least 1)."""
    remaining = window_start(now) + WINDOW - now
    return max(1, -(-int(remaining.total_seconds() * 1_000_000) // 1_000_000))


def spend_day(now: datetime) -> str:
    """The spend period of a charge: its UTC day, as `YYYY-MM-DD`."""
    return date(now.year, now.month, now.day).isoformat()


def require_ip_allowed(limits: KeyLimits, client_ip: str) -> None:
    if not limits.ip_allowlist:
        return
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
        address = ipaddress.ip_address(client_ip)
        # A dual-stack listener sees an IPv4 client as ::ffff:a.b.c.d.
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
    except ValueError:
        address = None
    if address is not None and any(
        address in ipaddress.ip_network(entry, strict=False) for entry in limits.ip_allowlist
    ):
        return
    raise DomainError(
        Reason.PERMISSION_DENIED,
        f"This API key may not be used from {client_ip or 'an unknown address'}. "
        "Call from an allowed address or add it to the key's IP allow-list in the console.",
        {"client_ip": client_ip},
    )


def check_rate(limit: int, used: int, what: str, now: datetime) -> None:
    """`used` includes this request; over the limit is a refusal that clears with time."""
    if limit and used > limit:
        wait = retry_after_s(now)
        unit = "requests" if what == REQUESTS else "tokens"
        raise DomainError(
            Reason.RATE_LIMITED,
            f"This API key's limit of {limit} {unit} per minute is reached. "
            f"Retry in {wait} s, or ask for a higher limit.",
            {"retry_after_s": str(wait), "limit": str(limit), "limit_kind": what},
        )


def check_tokens_fit(limit: int, request_tokens: int) -> None:
    """A request larger than the whole per-minute budget would wait forever: say so."""
    if limit and request_tokens > limit:
        raise DomainError(
            Reason.RATE_LIMITED,
            f"This request may use up to {request_tokens} tokens, above the key's limit of "
            f"{limit} tokens per minute. Send a shorter prompt or a lower max_tokens.",
            {"retry_after_s": "60", "limit": str(limit), "limit_kind": TOKENS},
        )


def check_in_flight(limit: int, in_flight: int) -> None:
    """`in_flight` counts live leases before this request."""
    if limit and in_flight >= limit:
        raise DomainError(
            Reason.RATE_LIMITED,
            f"This API key already has {in_flight} requests in progress (limit {limit}). "
            "Retry when one finishes.",
            {"retry_after_s": "1", "limit": str(limit), "limit_kind": "in_flight"},
        )


def check_spend(cap: SpendCap | None, spent_today: int, spent_total: int) -> None:
    if cap is None:
        return
    bucket = cap.bucket
    if cap.daily_micros and spent_today >= cap.daily_micros:
        raise DomainError(
            Reason.SPEND_CAP_REACHED,
            f"This API key's daily spend cap on the {bucket.label} "
            f"({format_amount(cap.daily_micros, bucket)}) is reached; it resets at 00:00 UTC. "
            "Raise the cap or use another key.",
            {"bucket": bucket.value, "cap": "daily", "cap_micros": str(cap.daily_micros)},
        )
    if cap.total_micros and spent_total >= cap.total_micros:
        raise DomainError(
            Reason.SPEND_CAP_REACHED,
            f"This API key's total spend cap on the {bucket.label} "
            f"({format_amount(cap.total_micros, bucket)}) is reached. "
            "Raise the cap or use another key.",
            {"bucket": bucket.value, "cap": "total", "cap_micros": str(cap.total_micros)},
        )
