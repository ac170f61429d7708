"""Deterministic token counting of the mock upstream: one whitespace-separated word is one token.

The rules, so a test can compute the usage it expects without calling the mock:

- prompt tokens = the sum over messages of (words in the message's content
  + `MESSAGE_OVERHEAD_TOKENS`); a content made of parts counts the words of its text parts,
  a missing content (an assistant tool-call message) counts zero words.
- the reply is `REPLY_PREFIX` followed by the first `PROMPT_ECHO_WORDS` words of the last
  user message, then `PAD_WORD` repeated until it is `reply_tokens` words long (cut to
  `reply_tokens` words when longer). `reply_tokens` is `DEFAULT_REPLY_TOKENS` unless the
  request sets `x-mock-reply-tokens`.
- completion tokens = words of the reply after the `max_tokens` cap, times `n`.
- a tool call counts the words of its function name plus the words of its arguments JSON.
- embedding input tokens = words of each input string (or the length of a token-id array).

Example: one user message "Say hello to the world" gives 5 + 4 = 9 prompt tokens and the
16-word reply "This is the mock answer to: Say hello to the world lorem lorem lorem lorem
lorem".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

DEFAULT_REPLY_TOKENS = 16
MESSAGE_OVERHEAD_TOKENS = 4
PROMPT_ECHO_WORDS = 5
REPLY_PREFIX: tuple[str, ...] = ("This", "is", "the", "mock", "answer", "to:")
PAD_WORD = "lorem"


def count_words(text: str) -> int:
    return len(text.split())


def content_text(content: object) -> str:
    """The text of a message content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        ]
        return " ".join(texts)
    return ""


def prompt_tokens(messages: Sequence[Mapping[str, object]]) -> int:
    return sum(
        count_words(content_text(message.get("content"))) + MESSAGE_OVERHEAD_TOKENS
        for message in messages
    )


def last_user_text(messages: Sequence[Mapping[str, object]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def reply_words(
    messages: Sequence[Mapping[str, object]], reply_tokens: int = DEFAULT_REPLY_TOKENS
) -> list[str]:
    echo = last_user_text(messages).split()[:PROMPT_ECHO_WORDS]
    words = [*REPLY_PREFIX, *echo]
    if len(words) < reply_tokens:
        words.extend([PAD_WORD] * (reply_tokens - len(words)))
    return words[:reply_tokens]


def cap_reply(words: list[str], max_tokens: int | None) -> tuple[list[str], bool]:
    """The reply cut to `max_tokens` words, and whether the cap cut anything."""
    if max_tokens is None or len(words) <= max_tokens:
        return words, False
    return words[:max_tokens], True


def reply_text(words: Sequence[str]) -> str:
    return " ".join(words)


def tool_call_tokens(name: str, arguments: str) -> int:
    return count_words(name) + count_words(arguments)


def embedding_input_tokens(item: str | Sequence[int]) -> int:
    if isinstance(item, str):
        return count_words(item)
    return len(item)
