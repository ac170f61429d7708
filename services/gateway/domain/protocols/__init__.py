"""Channel protocols: the APIs upstream channels speak. The flow works on chat completion
requests (whatever the client's format, domain/formats/); a channel that speaks another
protocol gets the chat request written in its protocol, and its answer (or each event
of its stream) written back as a chat completion (or chat chunks). Plain Python, no I/O.

- `openai_chat`: as is (no translation).
- `openai_responses`: OpenAI Responses (`responses.py`), stateless (`store: false`).
- `anthropic_messages`: Anthropic Messages (`anthropic.py`).

`protocol_for(name)` makes one `ChannelCall` per attempt on a channel: `request(chat)`
the body to send (a DomainError naming the parameter when the protocol cannot carry
it: `refusal` runs it before anything is held), `answer(payload)` the chat completion
(None when the payload is not an answer of the protocol), `reader()` the stream's
line-by-line translator into chat SSE lines.

Usage in the chat answers they write: `prompt_tokens` counts every prompt token (cache
reads and writes included), `prompt_tokens_details.cached_tokens` the cache reads,
`prompt_tokens_details.cache_write_tokens` the cache writes, `completion_tokens` every
output token (reasoning included) and `completion_tokens_details.reasoning_tokens` the
reasoning part: exactly the upstream's counts, re-labelled.
"""

from __future__ import annotations

from services.gateway.domain.protocols.anthropic import AnthropicCall
from services.gateway.domain.protocols.base import (
    ANTHROPIC_MESSAGES,
    OPENAI_CHAT,
    OPENAI_RESPONSES,
    ChannelCall,
    ChatCall,
    Json,
)
from services.gateway.domain.protocols.responses import MIN_OUTPUT_TOKENS, ResponsesCall
from tokenforge.errors import DomainError

__all__ = [
    "ANTHROPIC_MESSAGES",
    "OPENAI_CHAT",
    "OPENAI_RESPONSES",
    "ChannelCall",
    "least_output_cap",
    "protocol_for",
    "refusal",
]

CALLS: dict[str, type[ChannelCall]] = {
    OPENAI_CHAT: ChatCall,
    OPENAI_RESPONSES: ResponsesCall,
    ANTHROPIC_MESSAGES: AnthropicCall,
}


def protocol_for(name: str) -> ChannelCall:
    """A call on a channel of this protocol ("" is openai_chat)."""
    return CALLS.get(name or OPENAI_CHAT, ChatCall)()


def least_output_cap(protocols: set[str]) -> int:
    """The smallest output cap every one of these protocols takes."""
    return MIN_OUTPUT_TOKENS if OPENAI_RESPONSES in protocols else 1


def refusal(chat: Json, protocols: set[str]) -> DomainError | None:
    """The first thing the request has that a channel it may go to cannot carry."""
    for name in sorted(protocols):
        try:
            protocol_for(name).request(chat)
        except DomainError as error:
            return error
    return None
