"""Replay: `Idempotency-Key` on the money endpoints. One effect per key; a repeat gets
the first answer, under the first request's `x-request-id` (with
`idempotent-replayed: true`), so the receipt the answer names is one GET away.

A key whose request failed with nothing charged is given back (a retry may run); a
failure after a charge keeps the key (the request must not run twice). A stream is
delivered once: a repeat is told where its receipt is. A key whose request was cut off
by its gateway stopping (its claim's lease lapsed) is answered 409 with where its
receipt would be; it is never run twice under one key.

The gateway's database restarting never turns an answer into a failure: a key that
cannot be claimed is refused before anything runs (503, nothing charged, try again);
an answer whose record cannot be written yet is still given, and its record (or the
key's give-back) is written in the background once the database answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from services.gateway.flow.finish import charged_anyway
from services.gateway.storage.idempotency import IdempotencyStore, digest
from services.gateway.transport.http.common import api_key_of, error_response
from tokenforge.errors import DomainError, Reason, http_status
from tokenforge.runtime.db import database_unreachable

log = logging.getLogger("tokenforge.gateway.replay")

MAX_KEY_LENGTH = 255
# A record the database could not take is written again this often, this many times.
RECORD_TRIES = 8
RECORD_RETRY_MAX_S = 8.0
# Records being written in the background: kept referenced until done.
_writing: set[asyncio.Task[None]] = set()


async def idempotent(
    store: IdempotencyStore | None,
    request: Request,
    run: Callable[[], Awaitable[Response]],
    api_key: str = "",
    render: Callable[[DomainError], Response] = error_response,
) -> Response:
    """`api_key`: the key when it did not come as `Authorization: Bearer` (Anthropic
    clients send `x-api-key`); `render`: the error object a repeat gets (Anthropic's
    shape on /v1/messages)."""
    key = request.headers.get("idempotency-key")
    if not key or store is None:
        return await run()
    if len(key) > MAX_KEY_LENGTH:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            f"Idempotency-Key is at most {MAX_KEY_LENGTH} characters.",
            {"param": "Idempotency-Key"},
        )
    api_key = api_key or api_key_of(request)
    raw = await request.body()
    try:
        stored = await store.claim(api_key, key, raw, request.state.request_id)
    except Exception as error:
        if not database_unreachable(error):
            raise
        raise DomainError(
            Reason.SERVICE_UNAVAILABLE,
            "Requests with an Idempotency-Key cannot be taken right now (our database "
            "is restarting); nothing was run or charged. Try again in a moment.",
            {"retry_after_s": "1"},
        ) from error
    if stored is not None:
        if stored.body_digest != digest(raw):
            raise DomainError(
                Reason.IDEMPOTENCY_CONFLICT,
                "This Idempotency-Key was used with another request body; "
                "use a new key for a new request.",
            )
        if stored.state == "abandoned":
            # Its gateway stopped mid-request: the answer was never kept, and running
            # it again could charge twice. Say where its charge would show; keep that.
            abandoned = DomainError(
                Reason.IDEMPOTENCY_CONFLICT,
                f"The request with this Idempotency-Key ({stored.request_id}) was cut off "
                "when the gateway serving it stopped, and its answer was not kept. If it "
                f"was charged, its receipt is at /v1/usage/{stored.request_id} (within "
                "minutes). To run it again, send it with a new Idempotency-Key.",
                {"request_id": stored.request_id},
            )
            answer = render(abandoned)
            await eventually(store.complete, api_key, key, answer.status_code, answer.body, {})
            raise abandoned
        if stored.state == "running":
            raise DomainError(
                Reason.REQUEST_IN_PROGRESS,
                f"The request with this Idempotency-Key ({stored.request_id}) is still "
                "running; retry in a moment to get its answer.",
                {"retry_after_s": "1"},
            )
        headers = {
            **(stored.headers or {}),
            "idempotent-replayed": "true",
            # The first request's id: its receipt is at /v1/usage/{x-request-id}.
            "x-request-id": stored.request_id,
        }
        return Response(
            stored.body or b"",
            stored.status_code or 200,
            headers=headers,
            media_type="application/json",
        )
    try:
        return await _run_claimed(store, api_key, key, run, render)
    finally:
        store.let_go(request.state.request_id)


async def _run_claimed(
    store: IdempotencyStore,
    api_key: str,
    key: str,
    run: Callable[[], Awaitable[Response]],
    render: Callable[[DomainError], Response],
) -> Response:
    """Run the request whose key this one claimed, and keep its answer for repeats."""
    try:
        response = await run()
    except DomainError as error:
        if http_status(error) >= 500 and not charged_anyway(error):
            await eventually(store.give_back, api_key, key)  # nothing charged: a retry may run
        else:
            answer = render(error)
            await eventually(store.complete, api_key, key, answer.status_code, answer.body, {})
        raise
    except BaseException:
        await eventually(store.give_back, api_key, key)
        raise
    if isinstance(response, StreamingResponse):
        # A stream cannot be replayed: a repeat is told where its receipt is.
        receipt_url = response.headers.get("x-tokenforge-receipt", "")
        replay = render(
            DomainError(
                Reason.IDEMPOTENCY_CONFLICT,
                "This Idempotency-Key was used for a stream, which is delivered once; "
                f"its receipt is at {receipt_url}.",
            )
        )
        await eventually(store.complete, api_key, key, replay.status_code, replay.body, {})
        return response
    kept = {k: v for k, v in response.headers.items() if k.startswith("x-tokenforge-")}
    await eventually(store.complete, api_key, key, response.status_code, response.body, kept)
    return response


async def eventually(write: Callable[..., Awaitable[None]], *args: Any) -> None:
    """Write a key's record (its answer, or its give-back) now; if the database cannot be
    reached, again in the background (the answer is not held back for it): until then
    a repeat of the key hears that the request is still running."""
    try:
        await write(*args)
        return
    except Exception as error:
        if not database_unreachable(error):
            raise
        log.warning("idempotency record not written (%r); writing it in the background", error)
    task = asyncio.create_task(_write_later(write, args))
    _writing.add(task)
    task.add_done_callback(_writing.discard)


async def _write_later(write: Callable[..., Awaitable[None]], args: tuple[Any, ...]) -> None:
    for attempt in range(RECORD_TRIES):
        await asyncio.sleep(min(RECORD_RETRY_MAX_S, 0.25 * 2**attempt))
        try:
            await write(*args)
            return
        except Exception as error:  # noqa: BLE001 - logged; tried again
            if not database_unreachable(error):
                log.error("idempotency record not written: %r", error)
                return
    log.error("idempotency record not written after %d tries; its key lapses", RECORD_TRIES)
