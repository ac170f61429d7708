"""Response schemas for /openapi.json: what each operation answers on success, so a
client can be generated from the document and schemathesis can check every answer
against it (tests/e2e/test_openapi_fuzz.py). Each names the fields clients rely on,
with their JSON types; other fields may be added (objects stay open). Errors are
described once, for every operation, by schemas.ERROR_RESPONSES."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
BOOLEAN: Schema = {"type": "boolean"}
OPTIONAL_STRING: Schema = {"type": ["string", "null"]}


def obj(description: str = "", /, **required: Schema) -> Schema:
    """An open object whose listed fields are always there, with these types."""
    schema: Schema = {"type": "object", "required": sorted(required), "properties": required}
    if description:
        schema["description"] = description
    return schema


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def listing(item: Schema, cursor: bool = True) -> Schema:
    fields: dict[str, Schema] = {"object": {"const": "list"}, "data": array(item)}
    if cursor:
        fields["next_cursor"] = OPTIONAL_STRING
    return obj(**fields)


def extend(base: Schema, **more: Schema) -> Schema:
    return obj(base.get("description", ""), **base["properties"], **more)


AMOUNT = obj(
    "An amount: exact integer millionths of the bucket's unit, and how it reads.",
    micros=INTEGER,
    display=STRING,
)
RECEIPT = obj(
    "A request's receipt, the same object as GET /v1/usage/{request_id}.",
    request_id=STRING,
    status=STRING,
    route=STRING,
    bucket=STRING,
    selected_model=STRING,
    tokens=obj(
        prompt=INTEGER, cached=INTEGER, cache_write=INTEGER, completion=INTEGER, reasoning=INTEGER
    ),
    prices=obj(
        input_per_million=AMOUNT,
        cached_input_per_million=AMOUNT,
        cache_write_per_million=AMOUNT,
        output_per_million=AMOUNT,
        reasoning_per_million=AMOUNT,
        request_fee=AMOUNT,
    ),
    charge=AMOUNT,
    receipt_url=STRING,
    client_format=STRING,
    channel_protocol=OPTIONAL_STRING,
)
# `usage` of every paid answer: the format's token counts plus these.
COST = obj(
    "The charge: `cost` a JSON number in the bucket's unit, `cost_micros` the exact "
    "integer in millionths.",
    cost=NUMBER,
    cost_micros=INTEGER,
    cost_currency=STRING,
    cost_bucket=STRING,
)
CHAT_COMPLETION = obj(
    "An OpenAI chat completion, with the cost in `usage` and the `receipt`.",
    id=STRING,
    choices=array({"type": "object"}),
    usage=COST,
    receipt=RECEIPT,
)
EMBEDDING_LIST = obj(
    "OpenAI embeddings, with the cost in `usage` and the `receipt`.",
    data=array({"type": "object"}),
    usage=COST,
    receipt=RECEIPT,
)
COMPLETION = obj(
    "An OpenAI legacy text completion, with the cost in `usage` and the `receipt`.",
    id=STRING,
    choices=array({"type": "object"}),
    usage=COST,
    receipt=RECEIPT,
)
RESPONSE = obj(
    "An OpenAI Responses answer, with the cost in `usage` and the `receipt`.",
    id=STRING,
    object={"const": "response"},
    output=array({"type": "object"}),
    usage=COST,
    receipt=RECEIPT,
)
MESSAGE = obj(
    "An Anthropic message, with the cost in `usage` and the `receipt`.",
    id=STRING,
    type={"const": "message"},
    content=array({"type": "object"}),
    usage=COST,
    receipt=RECEIPT,
)
TOKEN_COUNT = obj(input_tokens=INTEGER)
MODEL = obj(
    "A model with its routes, each with its bucket, prices and channels' health.",
    id=STRING,
    object={"const": "model"},
    routes=array(obj(kind=STRING, bucket=STRING, prices=obj(input_per_million=AMOUNT))),
)
PREVIEW = obj(
    "What a request would run on and may cost at most, before anything is held.",
    selected_model=STRING,
    route=STRING,
    bucket=STRING,
    max_output_tokens=INTEGER,
    worst_case_cost=AMOUNT,
    available=AMOUNT,
    can_run=BOOLEAN,
)
WALLET = obj(
    account_id=STRING,
    balances=array(obj(bucket=STRING, posted=AMOUNT, held=AMOUNT, available=AMOUNT)),
)
LEDGER_ROW = obj(entry_id=STRING, kind=STRING, bucket=STRING, amount=AMOUNT, balance_after=AMOUNT)
AGGREGATES = obj(
    object={"const": "list"},
    by=STRING,
    data=array(
        obj(
            requests=INTEGER,
            prompt_tokens=INTEGER,
            cached_tokens=INTEGER,
            cache_write_tokens=INTEGER,
            completion_tokens=INTEGER,
            reasoning_tokens=INTEGER,
            charge=AMOUNT,
        )
    ),
)
TOPUP = obj(
    "A top-up order, its status in words and each transition.",
    object={"const": "topup"},
    order_id=STRING,
    state=STRING,
    state_text=STRING,
    status=STRING,
    status_text=STRING,
    bucket=STRING,
    provider=STRING,
    topup_amount=obj(minor=INTEGER, currency=STRING, display=STRING),
    received_balance=AMOUNT,
    transitions=array(obj(to=STRING, at=STRING)),
)
TOPUP_USES = obj(
    "What a credited top-up paid for, first in, first out: one page, oldest first.",
    object={"const": "list"},
    received_balance=AMOUNT,
    used=AMOUNT,
    left=AMOUNT,
    total=INTEGER,
    data=array(obj(entry_id=STRING, kind=STRING, used=AMOUNT, created_at=STRING)),
)
PAID_FROM = obj(
    "The top-ups (credits) that paid one request, first in, first out.",
    object={"const": "list"},
    request_id=STRING,
    charge=AMOUNT,
    data=array(obj(credit_entry_id=STRING, used=AMOUNT)),
)
WEBHOOK = obj(received=BOOLEAN, outcome=STRING)
KEY = obj(
    "An API key as you read it: never the secret, only its first characters.",
    id=STRING,
    object={"const": "api_key"},
    name=STRING,
    prefix=STRING,
    scopes=array(STRING),
)
NEW_KEY = extend(KEY, key=STRING)
ROTATED_KEY = extend(KEY, key=STRING, revoked_key_id=STRING)
RUN = obj(
    "A run: one hold for many requests, what it spent and what is left.",
    id=STRING,
    object={"const": "run"},
    status=STRING,
    bucket=STRING,
    budget=AMOUNT,
    spent=AMOUNT,
    reserved=AMOUNT,
    remaining=AMOUNT,
    requests=INTEGER,
)
OPENED_RUN = extend(
    RUN, available_before=AMOUNT, hold=obj(hold_id=STRING, amount=AMOUNT, expires_at=STRING)
)
RUN_RECEIPT = obj(
    "A run's receipt: a line per request (each its own ledger row), totals per model.",
    object={"const": "run.receipt"},
    run=RUN,
    lines=array(obj(request_id=STRING, status=STRING, charge=AMOUNT)),
    models=array(obj(model=STRING, requests=INTEGER, charge=AMOUNT)),
)

SSE = "text/event-stream"


def answer(schema: Schema, *statuses: int, stream: str = "") -> dict[int | str, Any]:
    """`responses=` for a route: `schema` as the JSON answer of each status (200 when
    none is named), and with `stream`, the answer with `"stream": true` too."""
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    if stream:
        # Each server-sent event: its `data` (a JSON object, or `[DONE]` in OpenAI
        # chat and completions streams) and, in the Responses and Messages formats,
        # its `event` name.
        content[SSE] = {
            "schema": obj(stream, data=STRING) | {"properties": {"data": STRING, "event": STRING}}
        }
    return {
        status: {"description": schema.get("description") or "Success", "content": content}
        for status in statuses or (200,)
    }
