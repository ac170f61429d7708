"""Legacy text completions (`POST /v1/completions`) as a chat request: the prompt is
the user message, each choice's message content is the choice's `text`.

One prompt per request (a string, or a list holding one string): several prompts would
be several upstream calls, each with its own hold and receipt, so a list of several is
refused, as are `echo`, `suffix`, `best_of` > 1 and `logprobs`, which a chat channel
cannot answer faithfully. Without `max_tokens` the output cap is 16, the legacy API's
default.
"""

from __future__ import annotations

import time
from typing import Any

from services.gateway.domain.formats import (
    ClientFormat,
    Json,
    StreamTranslator,
    copy_keys,
    data_only,
    id_part,
    invalid,
    require_model,
    tokens_of,
)

DEFAULT_MAX_TOKENS = 16
CARRIED = (
    "n",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "user",
    "logit_bias",
    "max_tokens",
)


def prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str) for p in prompt):
        raise invalid(
            "`prompt` holds several prompts; send one prompt per request (each request "
            "has its own hold and receipt).",
            "prompt",
        )
    raise invalid("`prompt` must be a string (or a list holding one string).", "prompt")


class CompletionsFormat(ClientFormat):
    name = "openai_completions"
    operation = "text_completion"

    def chat_body(self) -> Json:
        body = self.body
        model = require_model(body)
        if "prompt" not in body:
            raise invalid("`prompt` is required: the text to complete.", "prompt")
        text = prompt_text(body["prompt"])
        if body.get("echo"):
            raise invalid("`echo` is not supported: the prompt is not repeated.", "echo")
        if body.get("suffix"):
            raise invalid("`suffix` (insertion) is not supported by chat channels.", "suffix")
        best_of = body.get("best_of")
        if best_of is not None and best_of != 1:
            raise invalid("`best_of` other than 1 is not supported; use `n`.", "best_of")
        if body.get("logprobs") is not None:
            raise invalid("`logprobs` is not supported on /v1/completions.", "logprobs")
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise invalid("`stream_options` must be an object.", "stream_options")
        chat: Json = {"model": model, "messages": [{"role": "user", "content": text}]}
        copy_keys(body, chat, CARRIED)
        chat.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
        return chat

    def answer(self, chat: Json) -> Json:
        prompt, completion, _ = tokens_of(chat)
        usage = dict(chat.get("usage") or {})
        usage.update(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )
        return {
            "id": f"cmpl-{id_part(self.request_id)}",
            "object": "text_completion",
            "created": chat.get("created") or int(time.time()),
            "model": chat.get("model"),
            "system_fingerprint": chat.get("system_fingerprint"),
            "choices": [
                {
                    "text": str((choice.get("message") or {}).get("content") or ""),
                    "index": choice.get("index", i),
                    "logprobs": None,
                    "finish_reason": choice.get("finish_reason"),
                }
                for i, choice in enumerate(chat.get("choices") or [])
            ],
            "usage": usage,
            "receipt": chat.get("receipt"),
        }

    def translator(self) -> StreamTranslator:
        return CompletionsStream(f"cmpl-{id_part(self.request_id)}")


class CompletionsStream:
    """Chat chunks as `text_completion` chunks, `data:` lines ending in `[DONE]`."""

    def __init__(self, completion_id: str) -> None:
        self.completion_id = completion_id
        self.created = int(time.time())

    def _chunk(self, model: Any, choices: list[Json]) -> Json:
        return {
            "id": self.completion_id,
            "object": "text_completion",
            "created": self.created,
            "model": model,
            "choices": choices,
        }

    def start(self) -> list[bytes]:
        return []

    def chunk(self, chunk: Json) -> list[bytes]:
        if isinstance(chunk.get("usage"), dict) and "receipt" in chunk:
            final = self._chunk(chunk.get("model"), [])
            final["usage"] = chunk["usage"]
            final["receipt"] = chunk["receipt"]
            return [data_only(final)]
        choices = []
        for i, choice in enumerate(chunk.get("choices") or []):
            text = (choice.get("delta") or {}).get("content")
            finish = choice.get("finish_reason")
            if not text and not finish:
                continue
            choices.append(
                {
                    "text": text or "",
                    "index": choice.get("index", i),
                    "logprobs": None,
                    "finish_reason": finish,
                }
            )
        return [data_only(self._chunk(chunk.get("model"), choices))] if choices else []

    def error(self, error: Json) -> list[bytes]:
        return [data_only({"error": error})]

    def done(self) -> list[bytes]:
        return [b"data: [DONE]\n\n"]
