"""Replay: `Idempotency-Key` on the money endpoints. One effect per key; a repeat gets
the first answer, under the first request's `x-request-id` (with
`idempotent-replayed: true`), so the receipt the answer names is one GET away.

A key whose request failed with nothing charged is given back (a retry may run); a
failure after a charge keeps the key (the request must not run twice). A stream is
delivered once: a repeat is told where its receipt is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from services.gateway.flow.finish import charged_anyway
from services.gateway.storage.idempotency import IdempotencyStore, digest
from services.gateway.transport.http.common import api_key_of, error_response
from tokenforge.errors import DomainError, Reason, http_status

MAX_KEY_LENGTH = 255


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
    stored = await store.claim(api_key, key, raw, request.state.request_id)
    if stored is not None:
        if stored.body_digest != digest(raw):
            raise DomainError(
                Reason.IDEMPOTENCY_CONFLICT,
                "This Idempotency-Key was used with another request body; "
                "use a new key for a new request.",
            )
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
        response = await run()
    except DomainError as error:
        if http_status(error) >= 500 and not charged_anyway(error):
            await store.give_back(api_key, key)  # nothing charged: a retry may run
        else:
            answer = render(error)
            await store.complete(api_key, key, answer.status_code, bytes(answer.body), {})
        raise
    except BaseException:
        await store.give_back(api_key, key)
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
        await store.complete(api_key, key, replay.status_code, bytes(replay.body), {})
        return response
    kept = {k: v for k, v in response.headers.items() if k.startswith("x-tokenforge-")}
    await store.complete(api_key, key, response.status_code, bytes(response.body), kept)
    return response
