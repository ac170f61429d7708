"""Money work a request starts and does not wait for: the finish of a request whose
client went away, the release of a hold in doubt. Each is kept referenced until done
(asyncio keeps only weak references to tasks), its failure logged, and the gateway
waits for them on its way out (`drain`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("tokenforge.gateway.finish")

_tasks: set[asyncio.Task[Any]] = set()


def in_background(work: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.create_task(work)
    _tasks.add(task)
    task.add_done_callback(_done)


def _done(task: asyncio.Task[Any]) -> None:
    _tasks.discard(task)
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("finish of an abandoned request (or a hold in doubt) failed: %r", error)


async def drain(timeout_s: float = 5.0) -> None:
    """On the way out: wait for the background work (within `timeout_s`)."""
    if _tasks:
        await asyncio.wait(list(_tasks), timeout=timeout_s)
