"""The words for money: one name per amount, per balance figure and per state.

docs/GLOSSARY.md is the text a person reads; this module is the same table in code.
The API's JSON, the receipts, the ledger listing, the CLI and the console take their
names and labels from here (the console from GET /console/vocabulary.json), and
tests/unit/kernel/test_vocabulary.py walks what each of them says and fails on a word
for money that is not here.

The one shape of an amount:
- in JSON bodies, an **amount object** under the amount's name:
  `"charge": {"micros": 1234, "display": "0.001234 CR"}`;
- where a flat value is needed (error `details`, request bodies, headers, CLI
  `--json`), the integer `<name>_micros`: `"available_micros": 0`. Never a string.
`usage.cost` / `usage.cost_micros` in an answer are the OpenRouter-compatible names
clients already read (CLIENT_NAMES); on our own objects the same amount is `charge`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tokenforge.money import Bucket, format_amount


@dataclass(frozen=True)
class Word:
    code: str  # the name in code, JSON and the CLI
    reads: str  # what a person reads (console, CLI headings, status texts)
    meaning: str


def _table(*words: Word) -> dict[str, Word]:
    return {w.code: w for w in words}


# Every amount that has a name of its own (JSON keys of amount objects; `<code>_micros`).
AMOUNTS = _table(
    Word("posted", "Balance", "money in the bucket after every finished request and credit"),
    Word(
        "held",
        "Held",
        "all money held in the bucket: held_for_requests plus set_aside; never spendable",
    ),
    Word(
        "held_for_requests",
        "Held for your requests in progress",
        "the worst cases of your requests and runs still running",
    ),
    Word(
        "set_aside",
        "Set aside for fast serving",
        "held by the gateway for a busy bucket so its next requests start without a wallet "
        "call; returned when the bucket goes quiet",
    ),
    Word("available", "Available to spend", "posted minus held: what a new request can spend"),
    Word("charge", "Charge", "what one request finally cost, taken from its bucket"),
    Word("charged", "Charged", "the sum of the charges of a run or a period"),
    Word("change", "Change", "a ledger row's signed change of its bucket"),
    Word("balance_after", "Balance after", "the bucket's balance once the ledger row was written"),
    Word("topup_amount", "Top-up amount", "what a top-up order pays, in its currency"),
    Word("received_balance", "Received balance", "what a top-up adds to its bucket"),
    Word("used", "Used", "the part of a credit (a top-up) that paid for charges"),
    Word("left", "Left", "the part of a credit, a run or a budget not used yet"),
    Word("worst_case", "Worst case", "the most a request may cost: what its hold covers"),
    Word("worst_case_per_request", "Worst case per request", "a run's hold for one request"),
    Word("worst_case_total", "Worst case in all", "a run's hold for all its requests"),
    Word("available_before", "Available before", "available to spend before the run's hold"),
    Word("budget", "Budget", "what a run may spend in all"),
    Word("requested", "Requested", "what a refused hold or debit asked for"),
    Word("cap", "Spend cap", "the most an API key may spend (a day, or in all)"),
    Word("daily", "Daily spend cap", "the most an API key may spend in one UTC day"),
    Word("total", "Total spend cap", "the most an API key may spend in all"),
    Word("input_per_million", "Input price", "price of a million prompt tokens"),
    Word("cached_input_per_million", "Cached input price", "price of a million cached tokens"),
    Word(
        "cache_write_per_million",
        "Cache write price",
        "price of a million prompt tokens written to the upstream's prompt cache",
    ),
    Word("output_per_million", "Output price", "price of a million generated tokens"),
    Word(
        "reasoning_per_million",
        "Reasoning price",
        "price of a million reasoning tokens: the output price (they are output, shown apart)",
    ),
    Word("request_fee", "Request fee", "a fixed fee per request"),
)

# Names kept one release for clients that read them; each names what replaces it.
DEPRECATED = {
    "amount": "change",  # a ledger row's signed change (ledger rows, hold objects keep it)
    "worst_case_cost": "worst_case",
    "spent": "charged",
    "reserved": "held",
    "remaining": "left",
}

# Names of other APIs that clients read as they are (OpenAI / OpenRouter usage).
CLIENT_NAMES = frozenset({"cost", "cost_micros", "cost_currency", "cost_bucket"})

RECEIPT_STATES = _table(
    Word("succeeded", "Succeeded", "the answer was delivered and charged by its tokens"),
    Word("partial", "Stopped early", "charged for what was generated before it stopped"),
    Word("failed", "Failed", "charged by the route's charge policy (default: nothing)"),
    Word("rejected", "Not run", "refused before it ran: nothing charged"),
)

# A top-up's `state`: what the user reads about the order and its credit together.
TOPUP_STATES = _table(
    Word("pending", "Waiting for payment", "the order is open; nothing paid yet"),
    Word(
        "awaiting_review",
        "Waiting for review",
        "an operator checks the payment (a bank transfer, or a payment after expiry)",
    ),
    Word("paid", "Paid, being credited", "the payment is confirmed; the credit is on its way"),
    Word("credited", "Credited", "the received balance is in the bucket (its ledger row exists)"),
    Word("expired", "Expired", "not paid in time: nothing was charged, no balance added"),
    Word("failed", "Payment failed", "the provider refused the payment; no balance added"),
    Word("rejected", "Not approved", "an operator refused the payment; no balance added"),
    Word("canceled", "Canceled", "canceled before payment; no balance added"),
)

# The order's status as the payments service keeps it (API field `status`, kept one
# release beside `state`): `succeeded` there is `paid` or `credited` here.
TOPUP_STATUSES = frozenset(
    {"pending", "awaiting_review", "succeeded", "expired", "failed", "rejected", "canceled"}
)

ENTRY_KINDS = _table(
    Word("topup_credit", "Top-up credit", "a top-up's received balance added to its bucket"),
    Word("request_charge", "Request charge", "a request's charge taken from its bucket"),
    Word("adjustment", "Adjustment", "an operator's entry with a reason; never an edit"),
    Word("reversal", "Reversal", "an operator's entry undoing another entry, with a reason"),
)

HOLD_STATES = _table(
    Word("open", "Open", "still held"),
    Word("settled", "Settled", "ended with a charge; the rest went back"),
    Word("released", "Released", "given back whole"),
    Word("expired", "Expired", "ended by its time limit; given back"),
)

# Words a person must not read for a money concept, and the glossary word to use.
RETIRED = {
    "reserved": "held",
    "request cost": "charge",
    "completed": "succeeded",
    "spent": "charged",
    "paid:": "credited",
}
_RETIRED_RE = re.compile(
    r"\b(" + "|".join(re.escape(w).replace(r"\:", ":") for w in RETIRED) + r")(?=\W|$)",
    re.IGNORECASE,
)


def retired_words(text: str) -> list[str]:
    """The retired words `text` uses (empty when it speaks the glossary)."""
    return [m.group(1) for m in _RETIRED_RE.finditer(text)]


def amount_json(micros: int, bucket: Bucket) -> dict[str, Any]:
    """The one JSON shape of an amount: integer micros and the display text."""
    return {"micros": micros, "display": format_amount(micros, bucket)}


def is_amount_json(value: object) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == {"micros", "display"}
        and isinstance(value["micros"], int)
        and not isinstance(value["micros"], bool)
    )


def reads(code: str) -> str:
    """What a person reads for an amount, a state or an entry kind's code name."""
    for table in (AMOUNTS, TOPUP_STATES, RECEIPT_STATES, ENTRY_KINDS, HOLD_STATES):
        if code in table:
            return table[code].reads
    raise KeyError(f"{code!r} is not a glossary word (tokenforge/vocabulary.py)")


def as_json() -> dict[str, Any]:
    """The whole vocabulary for the console (GET /console/vocabulary.json)."""

    def words(table: dict[str, Word]) -> dict[str, str]:
        return {code: w.reads for code, w in table.items()}

    return {
        "amounts": words(AMOUNTS),
        "receipt_states": words(RECEIPT_STATES),
        "topup_states": words(TOPUP_STATES),
        "entry_kinds": words(ENTRY_KINDS),
        "hold_states": words(HOLD_STATES),
    }
