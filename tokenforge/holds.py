"""Names that the gateway, the wallet and usage agree on for holds and their parts.

- A **budget** is one wallet hold that a gateway replica places for a busy account's
  bucket and draws its requests from (each request's charge is a part of it, as a
  run's request is). Its request id starts with `BUDGET_PREFIX`, so reconciliation
  knows the hold pays for many receipts.
- A **part** of a hold (wallet CapturePart) gets a ledger entry id derived from the hold
  and the part's request id, and a hold's **settle** one derived from the hold, so the
  gateway can name the entry in its answer before the wallet writes it (a finish
  durably queued, DESIGN "One request").
- A fallback route's Hold the wallet never answered is listed on the request's receipt
  as a route attempt `HOLD_IN_DOUBT` (no hold id); the hold, if placed, is released
  later, and reconciliation matches it by request id and bucket.
"""

from __future__ import annotations

import uuid

BUDGET_PREFIX = "budget-"
# A run's id, which is also the request id of its hold.
RUN_PREFIX = "run_"
# A receipt's route attempt whose Hold the wallet never answered.
HOLD_IN_DOUBT = "hold_in_doubt"

# Fixed forever: changing them changes every part's and settle's entry id.
_PART_NAMESPACE = uuid.UUID("5b0c53a4-54c4-4f0e-9a51-0c1f8f7c2d6e")
_SETTLE_NAMESPACE = uuid.UUID("0e6f0b52-8f1c-4a9e-b8a5-7d3c2e91f4a0")


def new_budget_request_id() -> str:
    return f"{BUDGET_PREFIX}{uuid.uuid4()}"


def is_budget(request_id: str) -> bool:
    """Whether a hold's request id names a gateway budget."""
    return request_id.startswith(BUDGET_PREFIX)


def part_entry_id(hold_id: str | uuid.UUID, request_id: str) -> uuid.UUID:
    """The ledger entry id of the part of `hold_id` that pays for `request_id`: one
    part per (hold, request) (W4), so one id each."""
    return uuid.uuid5(_PART_NAMESPACE, f"{hold_id}:{request_id}")


def settle_entry_id(hold_id: str | uuid.UUID) -> uuid.UUID:
    """The ledger entry id of the settle of `hold_id` (a hold settles once, W3)."""
    return uuid.uuid5(_SETTLE_NAMESPACE, str(hold_id))
