"""Client libraries read the cost: LiteLLM and LangChain (langchain-openai) as clients of
the gateway, each request's `usage.cost` a JSON number (as OpenRouter sends it) equal
to the receipt's charge, with no warning raised or logged on the way (a string cost
made LiteLLM warn on every call)."""

from __future__ import annotations

import gc
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.harness import System
from tests.e2e.test_client_formats import money_story

# LiteLLM reads its bundled model price map instead of fetching one at import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402


@pytest.fixture
def no_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[list[warnings.WarningMessage]]:
    """Every warning raised (Python warnings) or logged (WARNING and above) while the
    test runs: none is expected. Earlier tests' garbage is collected first: an SDK
    client they left open warns (ResourceWarning) whenever the collector meets it,
    which says nothing of the client under test."""
    gc.collect()
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    raised = [str(w.message) for w in caught if not issubclass(w.category, ResourceWarning)]
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING and _clients(r)]
    assert raised == []
    assert [r.getMessage() for r in logged] == []


CLIENT_LOGGERS = ("LiteLLM", "litellm", "langchain", "langsmith", "openai", "httpx", "httpcore")


def _clients(record: logging.LogRecord) -> bool:
    """The system under test (and other tests' leftovers) log in this process too; only
    the client libraries' logs count."""
    return record.name.startswith(CLIENT_LOGGERS)


CHAT_MESSAGES = [
    {"role": "system", "content": "Answer briefly"},
    {"role": "user", "content": "Say hello"},
]


def cost_of(micros: int) -> float:
    return micros / 1_000_000


async def test_litellm_reads_the_cost_as_a_number_with_no_warning(
    system: System, no_warnings: list[Any]
) -> None:
    _, key = await system.new_account()
    response: Any = await litellm.acompletion(
        model="openai/demo-chat",
        api_base=system.gateway_url + "/v1",
        api_key=key,
        messages=CHAT_MESSAGES,
    )
    # Serializing is where a string cost warned (pydantic: `cost` is a float).
    assert response.model_dump()["usage"]["cost"] == response.usage.cost
    usage = response.usage
    assert isinstance(usage.cost, float)
    micros = usage.cost_micros
    assert usage.cost == cost_of(micros)
    headers = response._hidden_params["additional_headers"]
    receipt = await money_story(system, key, headers["llm_provider-x-request-id"], micros)
    assert receipt["tokens"]["prompt"] == usage.prompt_tokens


async def test_langchain_openai_reads_the_cost_as_a_number_with_no_warning(
    system: System, no_warnings: list[Any]
) -> None:
    _, key = await system.new_account()
    model = ChatOpenAI(
        model="demo-chat@routed",
        base_url=system.gateway_url + "/v1",
        api_key=key,
        max_retries=0,
        include_response_headers=True,
    )
    message = await model.ainvoke([("system", "Answer briefly"), ("user", "Say hello")])
    usage = message.response_metadata["token_usage"]
    assert isinstance(usage["cost"], float) and usage["cost"] == cost_of(usage["cost_micros"])
    assert usage["cost_bucket"] == "routed"
    assert message.usage_metadata is not None
    assert message.usage_metadata["input_tokens"] == usage["prompt_tokens"]
    request_id = message.response_metadata["headers"]["x-request-id"]
    await money_story(system, key, request_id, usage["cost_micros"])
