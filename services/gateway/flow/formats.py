"""Client formats on the same money path: a request in another format (legacy
completions, Responses, Anthropic Messages: services/gateway/domain/formats/) is
written as a chat completion request *before* admit, goes through the very same
stages as a chat request (admit -> reserve -> call -> finish, on the chat endpoint:
the same prices, routes, holds, settlement and receipt), and its answer (or each
piece of its stream) is written back in the client's format *after* finish, so the
cost and the receipt it names are the ones the chat answer would have named.

A body the format cannot carry to a chat channel is refused by `chat_body()` before
anything is resolved or held.
"""

from __future__ import annotations

from dataclasses import replace

from services.gateway.adapters.peers import Peers
from services.gateway.adapters.upstream import Upstream
from services.gateway.domain.commands import ChatCommand
from services.gateway.domain.formats import ClientFormat
from services.gateway.domain.formats.stream import translate
from services.gateway.flow.admit import CHAT, ChatOutcome
from services.gateway.flow.complete import complete
from services.gateway.flow.stream import ReservedStreamingResponse, start_chat_stream


def as_chat(cmd: ChatCommand, fmt: ClientFormat) -> ChatCommand:
    """The command as a chat request, its receipt naming the client's format."""
    return replace(cmd, body=fmt.chat_body(), client_format=fmt.name)


async def complete_in(
    peers: Peers, upstream: Upstream, cmd: ChatCommand, fmt: ClientFormat
) -> ChatOutcome:
    """A request that is not streamed: the chat flow, its answer in the client's format."""
    outcome = await complete(peers, upstream, as_chat(cmd, fmt), CHAT)
    answer = fmt.answer(outcome.payload)
    return ChatOutcome(outcome.status, answer, outcome.receipt, outcome.headers)


async def stream_in(
    peers: Peers, upstream: Upstream, cmd: ChatCommand, fmt: ClientFormat
) -> ReservedStreamingResponse:
    """A streamed request: the chat stream (its reservation ended however the response
    ends), each piece written as the client format's events."""
    stream = await start_chat_stream(peers, upstream, as_chat(cmd, fmt))
    return ReservedStreamingResponse(stream, lambda events: translate(events, fmt.translator()))
