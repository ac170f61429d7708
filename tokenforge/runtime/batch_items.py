"""The server side of batch calls (HoldMany, SettleMany, CapturePartMany, ReleaseMany,
RecordReceipts, ReportOutcomes): one cap on the items of a call, and one way to turn an item's
failure into that item's answer while the other items stand.

The client side is `tokenforge.runtime.batching.Batcher`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from google.protobuf.message import Message

from tokenforge.errors import DomainError, Reason
from tokenforge.runtime.db import database_unreachable
from tokenforge.runtime.grpc_server import nul_refusal

log = logging.getLogger(__name__)

T = TypeVar("T")
Item = TypeVar("Item", bound=Message)

# A batch call carries at most this many items (clients send at most 64).
MAX_BATCH_ITEMS = 256


def check_batch_size(size: int, items: str = "items") -> None:
    """Refuse a batch above the cap whole, before anything of it runs."""
    if size > MAX_BATCH_ITEMS:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            f"A batch carries at most {MAX_BATCH_ITEMS} {items} and this one has {size}: "
            "split it into smaller batches.",
            {"field": items, "max_items": str(MAX_BATCH_ITEMS)},
        )


async def item_outcome(call: Awaitable[T], item: str) -> T | DomainError:
    """One item's outcome: its answer, its refusal, or, for an unexpected failure
    (logged), an INTERNAL refusal naming the item, as its own call would fail (and
    SERVICE_UNAVAILABLE when the database could not be reached)."""
    try:
        return await call
    except DomainError as error:
        return error
    except Exception as error:  # noqa: BLE001 - this item failed, not the batch
        if database_unreachable(error):  # unavailable: the caller tries it again
            log.warning("batch item %s: the database is not answering (%r)", item, error)
            return DomainError(
                Reason.SERVICE_UNAVAILABLE,
                f"{item} could not reach the database right now; try it again in a moment.",
                {"item": item},
            )
        log.exception("batch item %s failed", item)
        return DomainError(
            Reason.INTERNAL, f"{item} could not be done; try it again.", {"item": item}
        )


async def without_nul_items(
    items: Sequence[Item],
    run: Callable[[list[Item]], Awaitable[list[T | DomainError]]],
) -> list[T | DomainError]:
    """Run the items that hold no NUL character; each one that does is refused alone
    (INVALID_ARGUMENT naming the field), in its place among the outcomes."""
    refusals = [nul_refusal(item) for item in items]
    if not any(refusals):
        return await run(list(items))
    ran = iter(await run([item for item, no in zip(items, refusals, strict=True) if not no]))
    return [no if no is not None else next(ran) for no in refusals]
