"""Money: one type for amounts, one for prices, and the one rounding rule.

Amounts are integers in micro-units of their bucket (1 CR = 1,000,000 micro-CR).
Prices are integers in micro-units per million tokens. No float touches money.

Rounding rule: a charge is `ceil(sum(tokens x price_per_million) / 1_000_000)`
micro-units, plus the per-request fee. We round up once, at the end, so the
platform never charges less than a fraction of a micro-unit it owes upstream and
never more than one micro-unit above the exact figure.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

MICROS_PER_UNIT = 1_000_000
TOKENS_PER_PRICE_UNIT = 1_000_000
# The largest amount a person may write (a top-up, a budget, an adjustment, a cap):
# a billion units. Sums of many such amounts stay far inside int64, the range of
# every wire field and database column that carries money.
MAX_AMOUNT_MICROS = 1_000_000_000 * MICROS_PER_UNIT


class Bucket(enum.StrEnum):
    """One of the two separate balances of an account; they never mix."""

    CREDIT = "credit"
    ROUTED = "routed"

    @property
    def label(self) -> str:
        return BUCKET_LABELS[self][0]

    @property
    def symbol(self) -> str:
        return BUCKET_LABELS[self][1]

    @property
    def pays_for(self) -> str:
        return BUCKET_PAYS_FOR[self]


BUCKET_LABELS: dict[Bucket, tuple[str, str]] = {
    Bucket.CREDIT: ("Credit", "CR"),
    Bucket.ROUTED: ("Routed balance", "RB"),
}

BUCKET_PAYS_FOR: dict[Bucket, str] = {
    Bucket.CREDIT: "official direct-model routes",
    Bucket.ROUTED: "lower-cost routed channels",
}


def configure_labels(labels: dict[str, tuple[str, str]]) -> None:
    """Apply configured labels and symbols (TOKENFORGE_BUCKET_<B>_LABEL/_SYMBOL)."""
    for name, (label, symbol) in labels.items():
        bucket = Bucket(name)
        old_label, old_symbol = BUCKET_LABELS[bucket]
        BUCKET_LABELS[bucket] = (label or old_label, symbol or old_symbol)


class MoneyError(ValueError):
    """Arithmetic between amounts that must not meet (two buckets, a float)."""


@dataclass(frozen=True, order=True)
class Money:
    """An amount of one bucket, in integer micro-units."""

    micros: int
    bucket: Bucket

    def __post_init__(self) -> None:
        if not isinstance(self.micros, int) or isinstance(self.micros, bool):
            raise MoneyError(f"amounts are integer micro-units, got {self.micros!r}")

    @classmethod
    def zero(cls, bucket: Bucket) -> Money:
        return cls(0, bucket)

    def _same_bucket(self, other: Money) -> None:
        if other.bucket is not self.bucket:
            raise MoneyError(f"cannot combine {self.bucket.label} with {other.bucket.label}")

    def __add__(self, other: Money) -> Money:
        self._same_bucket(other)
        return Money(self.micros + other.micros, self.bucket)

    def __sub__(self, other: Money) -> Money:
        self._same_bucket(other)
        return Money(self.micros - other.micros, self.bucket)

    def __neg__(self) -> Money:
        return Money(-self.micros, self.bucket)

    def __str__(self) -> str:
        return format_amount(self.micros, self.bucket)


def decimal_text(micros: int) -> str:
    """`12.5`, `0.000042`, `-3`: the exact decimal, up to 6 decimals, trailing zeros
    trimmed."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_UNIT)
    text = f"{whole}.{frac:06d}".rstrip("0").rstrip(".")
    return f"{sign}{text}"


def format_amount(micros: int, bucket: Bucket) -> str:
    """`12.5 CR`, `0.000042 RB`: up to 6 decimals, trailing zeros trimmed."""
    return f"{decimal_text(micros)} {bucket.symbol}"


def parse_amount(text: str) -> int:
    """Parse a decimal amount ("12.5") into micro-units, exactly; refuses > 6 decimals
    and amounts beyond MAX_AMOUNT_MICROS either way."""
    text = text.strip()
    negative = text.startswith("-")
    if negative:
        text = text[1:]
    whole, _, frac = text.partition(".")
    digits = (whole + frac).isascii() and (not whole or whole.isdigit())
    if not digits or (frac and not frac.isdigit()):
        raise MoneyError(f"not an amount: {text!r}")
    if len(frac) > 6:
        raise MoneyError(f"amounts have at most 6 decimals: {text!r}")
    if len(whole.lstrip("0")) > len(str(MAX_AMOUNT_MICROS // MICROS_PER_UNIT)):
        raise MoneyError(f"amounts are at most {MAX_AMOUNT_MICROS // MICROS_PER_UNIT:,}")
    micros = int(whole or "0") * MICROS_PER_UNIT + int(frac.ljust(6, "0") or "0")
    if micros > MAX_AMOUNT_MICROS:
        raise MoneyError(f"amounts are at most {MAX_AMOUNT_MICROS // MICROS_PER_UNIT:,}")
    return -micros if negative else micros


@dataclass(frozen=True)
class Price:
    """A route's prices in micro-units of its bucket per million tokens (fee per request)."""

    bucket: Bucket
    input_per_million: int
    output_per_million: int
    cached_input_per_million: int = 0
    request_fee: int = 0
    # Prompt tokens written to the upstream's prompt cache; None: the input price.
    cache_write_per_million: int | None = None

    @property
    def cache_write(self) -> int:
        if self.cache_write_per_million is None:
            return self.input_per_million
        return self.cache_write_per_million

    def charge(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> Money:
        """The charge of one request, by the rounding rule of this module. Cached (read)
        and cache-write tokens are parts of `prompt_tokens`, each at its own price."""
        if min(prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens) < 0:
            raise MoneyError("token counts are never negative")
        cached = min(cached_tokens, prompt_tokens)
        written = min(cache_write_tokens, prompt_tokens - cached)
        exact = (
            (prompt_tokens - cached - written) * self.input_per_million
            + cached * self.cached_input_per_million
            + written * self.cache_write
            + completion_tokens * self.output_per_million
        )
        micros = -(-exact // TOKENS_PER_PRICE_UNIT) + self.request_fee
        return Money(micros, self.bucket)

    def worst_case(self, prompt_tokens: int, max_output_tokens: int) -> Money:
        """The most a request can cost: every prompt token at the dearest prompt price
        (input, cached read or cache write), plus the output cap."""
        dearest = max(self.input_per_million, self.cached_input_per_million, self.cache_write)
        if min(prompt_tokens, max_output_tokens) < 0:
            raise MoneyError("token counts are never negative")
        exact = prompt_tokens * dearest + max_output_tokens * self.output_per_million
        return Money(-(-exact // TOKENS_PER_PRICE_UNIT) + self.request_fee, self.bucket)

    def max_output_for(self, budget: Money, prompt_tokens: int) -> int:
        """The largest output cap whose worst case fits in `budget` (0 if none does)."""
        if self.output_per_million <= 0:
            return 2**31 - 1
        base = self.worst_case(prompt_tokens, 0).micros
        room = budget.micros - base
        if room <= 0:
            return 0
        return room * TOKENS_PER_PRICE_UNIT // self.output_per_million

    def describe(self) -> str:
        sym = self.bucket.symbol
        i = format_amount(self.input_per_million, self.bucket).removesuffix(f" {sym}")
        o = format_amount(self.output_per_million, self.bucket).removesuffix(f" {sym}")
        return f"{i} {sym} / 1M input tokens, {o} {sym} / 1M output tokens"
