"""Request body schemas for /openapi.json (the handlers read the raw body so unknown
OpenAI parameters pass through untouched; these describe what is understood)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


class ChatMessage(BaseModel):
    """One chat message; other OpenAI message fields pass through."""

    model_config = ConfigDict(extra="allow")

    role: str = Field(
        min_length=1, max_length=64, description="system, developer, user, assistant or tool."
    )
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(BaseModel):
    """An OpenAI chat completion request; other OpenAI parameters pass through.
    The bounds are the ones the gateway enforces before anything runs."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(
        min_length=1,
        max_length=256,
        description="A model id from GET /v1/models, optionally @official/@routed.",
    )
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    n: int | None = Field(default=None, ge=1, le=16)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = Field(default=None, ge=-INT64_MAX - 1, le=INT64_MAX)
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None


class EmbeddingsRequest(BaseModel):
    """An OpenAI embeddings request."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    input: (
        str
        | list[str]
        | list[Annotated[int, Field(ge=0, le=INT32_MAX)]]
        | list[list[Annotated[int, Field(ge=0, le=INT32_MAX)]]]
    ) = Field(description="Text, texts, a token array or token arrays (at most 2048 items).")


def body_of(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON body follows `model` (nested models
    inlined: a `#/$defs/...` reference would not resolve inside /openapi.json)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline(schema, defs)}},
        }
    }


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {key: _inline(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    details: dict[str, str] | None = None


class OpenAIError(BaseModel):
    """The OpenAI error object every refusal uses."""

    error: OpenAIErrorBody


_STATUS_WORDS = {
    400: "Invalid request: the message names the field.",
    401: "Missing, unknown, revoked or expired API key.",
    402: "insufficient_balance: names the bucket, what is available and the worst case.",
    403: "The key may not do this (scope, model, route kind, spend cap, IP).",
    404: "Unknown model, or an object that is not this account's.",
    409: "Idempotency conflict, a request still in progress, or a refused state change.",
    413: "The request body is too large.",
    429: "A rate limit; Retry-After says when to try again.",
    500: "A bug on our side; quote the x-request-id.",
    502: "Every allowed upstream attempt failed; nothing charged unless the route says so.",
    503: "One of our services is not answering; nothing charged.",
    504: "The upstream timed out.",
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIError, "description": words} for status, words in _STATUS_WORDS.items()
}


class CompletionRequest(BaseModel):
    """A legacy text completion request (one prompt per request)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    prompt: str | list[str]
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=16)
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None


class ResponseRequest(BaseModel):
    """An OpenAI Responses request (stateless: nothing is stored)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None
    text: dict[str, Any] | None = None
    stream: bool | None = None


class MessagesRequest(BaseModel):
    """An Anthropic Messages request (`x-api-key` or Bearer; `max_tokens` required)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    stream: bool | None = None


class CountTokensRequest(BaseModel):
    """An Anthropic token count: the body of a Messages request, `max_tokens` optional."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
