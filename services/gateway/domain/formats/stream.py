"""Driving a `StreamTranslator` over the gateway's chat stream (its SSE bytes, as the
flow writes them): each chunk, the final usage chunk, an error notice and `[DONE]`
handed to the translator in order. Closing the translated stream closes the chat
stream (whose own end then finishes the request's reservation)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from services.gateway.domain.formats import StreamTranslator


def frames_of(translator: StreamTranslator, sse: bytes) -> list[bytes]:
    """The client format's frames for one piece of the chat stream."""
    out: list[bytes] = []
    for line in sse.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            out.extend(translator.done())
            continue
        piece = orjson.loads(data)
        if isinstance(piece.get("error"), dict) and "choices" not in piece:
            out.extend(translator.error(piece["error"]))
        else:
            out.extend(translator.chunk(piece))
    return out


async def translate(
    events: AsyncIterator[bytes], translator: StreamTranslator
) -> AsyncIterator[bytes]:
    try:
        for frame in translator.start():
            yield frame
        async for sse in events:
            for frame in frames_of(translator, sse):
                yield frame
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
