"""Request body schemas for /openapi.json (the handlers read the raw body so unknown
OpenAI parameters pass through untouched; these describe what is understood)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def example(body: dict[str, Any]) -> ConfigDict:
    """The model config of a request body with one example that runs on the demo
    catalog; other parameters pass through."""
    return ConfigDict(extra="allow", json_schema_extra={"examples": [body]})


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

    model_config = example(
        {"model": "demo-chat", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}
    )

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

    model_config = example({"model": "demo-embed", "input": "Hello"})

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
    media: dict[str, Any] = {"schema": _inline(schema, defs)}
    if schema.get("examples"):
        # A request that runs, for readers and for schemathesis's examples phase (so
        # the success answers are checked against their schema too).
        media["example"] = schema["examples"][0]
    return {"requestBody": {"required": True, "content": {"application/json": media}}}


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
    # Amounts (`*_micros`) and counts are integers; ids and names strings.
    details: dict[str, str | int] | None = None


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

    model_config = example({"model": "demo-chat", "prompt": "Hello", "max_tokens": 16})

    model: str = Field(min_length=1)
    prompt: str | list[str]
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=16)
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None


class ResponseRequest(BaseModel):
    """An OpenAI Responses request (stateless: nothing is stored)."""

    model_config = example({"model": "demo-chat", "input": "Hello", "max_output_tokens": 16})

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None
    text: dict[str, Any] | None = None
    stream: bool | None = None


class MessagesRequest(BaseModel):
    """An Anthropic Messages request (`x-api-key` or Bearer; `max_tokens` required)."""

    model_config = example(
        {"model": "demo-chat", "max_tokens": 16, "messages": [{"role": "user", "content": "Hello"}]}
    )

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

    model_config = example(
        {"model": "demo-chat", "messages": [{"role": "user", "content": "Hello"}]}
    )

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None


class TopUpRequest(BaseModel):
    """POST /v1/topups: the balance to credit and what you pay."""

    model_config = example({"bucket": "credit", "amount": "10.00", "provider": "sandbox"})

    bucket: str = Field(max_length=64, description="credit or routed: the balance credited.")
    amount: str | int = Field(
        description='What you pay, in the currency, at most 2 decimals: "10.00".'
    )
    currency: str | None = Field(default=None, max_length=64, description="Default USD.")
    provider: str | None = Field(
        default=None,
        max_length=64,
        description="manual_transfer, stripe or sandbox, as this deployment offers.",
    )


class TransferProofRequest(BaseModel):
    """POST /v1/topups/{order_id}/proof: the bank transfer's reference."""

    model_config = ConfigDict(extra="allow")

    transfer_reference: str | None = Field(default=None, max_length=512)
    reference: str | None = Field(default=None, max_length=512, description="The same.")


class SandboxOutcomeRequest(BaseModel):
    """POST /v1/topups/{order_id}/sandbox: what the sandbox provider does with the order."""

    model_config = ConfigDict(extra="allow")

    outcome: str = Field(description="paid, failed or expired.")


class SpendCap(BaseModel):
    model_config = ConfigDict(extra="allow")

    bucket: str
    daily_micros: int | None = Field(default=None, ge=0)
    total_micros: int | None = Field(default=None, ge=0)


class KeyCreateRequest(BaseModel):
    """POST /v1/keys: a new key of your account, with its scopes and settings."""

    model_config = example({"name": "ci", "scopes": ["chat", "read"]})

    name: str | None = Field(default=None, max_length=256)
    project_id: str | None = Field(default=None, max_length=256)
    scopes: list[str] | None = Field(default=None, description="e.g. chat, read, topup, keys.")
    expires_at: str | None = Field(default=None, description="ISO 8601 with a time zone.")
    allowed_models: list[str] | None = None
    allowed_route_kinds: list[str] | None = None
    route_preference: list[str] | None = None
    fallback_allowed: bool | None = None
    ip_allowlist: list[str] | None = None
    requests_per_minute: int | None = Field(default=None, ge=0, le=INT32_MAX)
    tokens_per_minute: int | None = Field(default=None, ge=0, le=INT64_MAX)
    max_in_flight: int | None = Field(default=None, ge=0, le=INT32_MAX)
    spend_caps: list[SpendCap] | None = None


class KeyRotateRequest(BaseModel):
    """POST /v1/keys/{key_id}/rotate (body optional): how long the old key still works."""

    model_config = ConfigDict(extra="allow")

    grace_seconds: int | None = Field(default=None, ge=0, le=INT32_MAX)


class RunRequest(BaseModel):
    """POST /v1/runs: one hold for many requests, from a budget or an estimate."""

    model_config = example({"model": "demo-chat", "budget": "0.5", "ttl": 60})

    model: str | None = Field(default=None, max_length=256)
    bucket: str | None = Field(default=None, description="credit or routed.")
    budget: str | int | None = Field(default=None, description='A decimal amount: "2.5".')
    estimate: dict[str, Any] | None = Field(
        default=None, description="{requests, max_tokens, ...}: the budget is worked out."
    )
    ttl: int | None = Field(default=None, ge=1, le=INT32_MAX, description="Seconds.")


def optional_body_of(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON body may be left out."""
    extra = body_of(model)
    extra["requestBody"]["required"] = False
    return extra
