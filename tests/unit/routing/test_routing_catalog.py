"""Catalog parsing and validation: every error names the file, the YAML path and the field."""

from __future__ import annotations

import hashlib

import pytest

from services.routing.domain.catalog import (
    DEFAULT_RETRY_ON,
    Auth,
    Catalog,
    CatalogError,
    ChargePolicy,
    Endpoint,
    Protocol,
    RouteKind,
    interpolate,
    parse_catalog,
)
from services.routing.storage.catalog_file import DEMO_CATALOG, read_catalog
from tokenforge.money import Bucket

MINIMAL = """\
channels:
  - id: up
    base_url: "${UPSTREAM_URL:-http://127.0.0.1:9999}/v1"
models:
  - id: m1
    context_length: 4096
    max_output_tokens: 512
    endpoints: [chat]
    routes:
      - kind: official
        bucket: credit
        upstream_model: real-m1
        prices: {input: 1000, output: 2000}
        channels: [up]
"""


def parse(text: str, env: dict[str, str] | None = None) -> Catalog:
    return parse_catalog(text.encode(), "test.yaml", env or {})


def error_of(text: str, env: dict[str, str] | None = None) -> CatalogError:
    with pytest.raises(CatalogError) as caught:
        parse(text, env)
    return caught.value


def test_the_demo_catalog_serves_demo_chat_on_both_routes_and_demo_embed() -> None:
    catalog = read_catalog(DEMO_CATALOG, {"TOKENFORGE_MOCK_UPSTREAM_URL": "http://mock:1234"})

    chat, embed = catalog.model("demo-chat"), catalog.model("demo-embed")
    assert chat is not None and embed is not None
    official, routed = chat.route(RouteKind.OFFICIAL), chat.route(RouteKind.ROUTED)
    assert official is not None and routed is not None
    assert (official.bucket, official.upstream_model) == (Bucket.CREDIT, "mock-gpt-official")
    assert (official.price.input_per_million, official.price.output_per_million) == (
        2_500_000,
        10_000_000,
    )
    assert [c.id for c in official.channels] == ["mock-primary", "mock-backup"]
    assert (routed.bucket, routed.upstream_model) == (Bucket.ROUTED, "mock-gpt-routed")
    assert (routed.price.input_per_million, routed.price.output_per_million) == (
        1_000_000,
        4_000_000,
    )
    assert [c.id for c in routed.channels] == ["mock-backup", "mock-primary"]
    assert {c.base_url for c in catalog.channels} == {"http://mock:1234/v1"}
    assert (chat.context_length, chat.max_output_tokens, chat.endpoints) == (
        8192,
        1024,
        (Endpoint.CHAT,),
    )
    assert embed.endpoints == (Endpoint.EMBEDDINGS,)
    assert embed.routes[0].price.input_per_million == 100_000
    assert catalog.version == hashlib.sha256(DEMO_CATALOG.read_bytes()).hexdigest()[:12]


def test_defaults_fill_what_a_minimal_route_leaves_out() -> None:
    catalog = parse(MINIMAL)

    route = catalog.models[0].routes[0]
    assert route.model == "m1"
    assert route.charge_policy is ChargePolicy.NONE
    assert route.retry.max_attempts == 1 and route.retry.retry_on == DEFAULT_RETRY_ON
    assert route.price.cached_input_per_million == 1000  # cached costs input unless priced
    assert route.channels[0].base_url == "http://127.0.0.1:9999/v1"
    assert catalog.models[0].display_name == "m1"


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${A}/v1", {"A": "http://x"}, "http://x/v1"),
        ("${A:-http://d}/v1", {}, "http://d/v1"),
        ("${A:-http://d}/v1", {"A": ""}, "http://d/v1"),
        ("${A:-http://d}", {"A": "http://set"}, "http://set"),
        ("${A}-${B:-b}", {"A": "a"}, "a-b"),
        ("plain $HOME text", {}, "plain $HOME text"),
    ],
)
def test_interpolation_reads_the_environment_with_shell_style_defaults(
    text: str, env: dict[str, str], expected: str
) -> None:
    assert interpolate(text, env) == expected


def test_an_unset_variable_without_default_names_the_variable_and_the_field() -> None:
    error = error_of(MINIMAL.replace("${UPSTREAM_URL:-http://127.0.0.1:9999}", "${UPSTREAM_URL}"))

    assert error.source == "test.yaml"
    assert error.path == "channels[0].base_url"
    assert error.line == 3
    assert "UPSTREAM_URL" in str(error)
    assert str(error).startswith("test.yaml: channels[0].base_url (line 3): ")


def test_an_official_route_paid_from_the_routed_balance_is_refused() -> None:
    error = error_of(MINIMAL.replace("bucket: credit", "bucket: routed"))

    assert error.path == "models[0].routes[0].bucket"
    assert error.line == 11
    assert "official routes are paid from the credit bucket" in error.problem


@pytest.mark.parametrize(
    ("old", "new", "path", "words"),
    [
        (
            "channels: [up]",
            "channels: [up, down]",
            "models[0].routes[0].channels[1]",
            "unknown channel",
        ),
        ("input: 1000", "input: 2.5", "models[0].routes[0].prices.input", "integer"),
        ("output: 2000", "output: -1", "models[0].routes[0].prices.output", "at least 0"),
        ("kind: official", "kind: cheapest", "models[0].routes[0].kind", "not one of"),
        (
            "upstream_model: real-m1",
            "upstream_modle: real-m1",
            "models[0].routes[0].upstream_modle",
            "unknown field",
        ),
        (
            "max_output_tokens: 512",
            "max_output_tokens: 9000",
            "models[0].max_output_tokens",
            "context length",
        ),
        ("endpoints: [chat]", "endpoints: [images]", "models[0].endpoints[0]", "not one of"),
        ("id: m1", "id: m1@fast", "models[0].id", "'@'"),
        ('    base_url: "${', '    base_url: "ftp://${', "channels[0].base_url", "http://"),
        (
            "        channels: [up]",
            "        channels: [up]\n        retry: {retry_on: [teapot]}",
            "models[0].routes[0].retry.retry_on[0]",
            "teapot",
        ),
        (
            "        channels: [up]",
            "        channels: [up]\n        charge_policy: always",
            "models[0].routes[0].charge_policy",
            "as_reported",
        ),
        ("        upstream_model: real-m1\n", "", "models[0].routes[0].upstream_model", "required"),
        (
            '/v1"\n',
            '/v1"\n    protocol: gemini\n',
            "channels[0].protocol",
            "anthropic_messages",
        ),
        ('/v1"\n', '/v1"\n    auth: basic\n', "channels[0].auth", "x-api-key"),
        (
            '/v1"\n',
            '/v1"\n    headers: {Authorization: "Bearer x"}\n',
            "channels[0].headers.Authorization",
            "set by the gateway",
        ),
        ('/v1"\n', '/v1"\n    headers: [a]\n', "channels[0].headers", "mapping"),
        (
            "{input: 1000, output: 2000}",
            "{input: 1000, output: 2000, cache_write: -1}",
            "models[0].routes[0].prices.cache_write",
            "at least 0",
        ),
    ],
)
def test_each_invalid_field_is_named_by_its_path(old: str, new: str, path: str, words: str) -> None:
    assert old in MINIMAL
    error = error_of(MINIMAL.replace(old, new))

    assert error.path == path
    assert words in error.problem
    assert error.line is not None


def test_a_channel_says_its_protocol_auth_and_headers_and_a_route_its_cache_write_price() -> None:
    plain = parse(MINIMAL)
    [channel] = plain.channels
    assert (channel.protocol, channel.auth, channel.headers) == (
        Protocol.OPENAI_CHAT,
        Auth.BEARER,
        (),
    )
    # Without a cache-write price, tokens written to the cache cost what input costs.
    [route] = plain.models[0].routes
    assert route.price.cache_write == 1000

    text = MINIMAL.replace(
        '/v1"\n',
        '/v1"\n    protocol: anthropic_messages\n    auth: x-api-key\n'
        '    headers: {Anthropic-Beta: "prompt-caching-2024-07-31"}\n',
    ).replace("{input: 1000, output: 2000}", "{input: 1000, output: 2000, cache_write: 1250}")
    catalog = parse(text)
    [channel] = catalog.channels
    assert channel.protocol is Protocol.ANTHROPIC_MESSAGES and channel.auth is Auth.X_API_KEY
    assert channel.headers == (("anthropic-beta", "prompt-caching-2024-07-31"),)
    assert catalog.models[0].routes[0].price.cache_write == 1250


def test_a_model_defined_twice_is_refused() -> None:
    twice = MINIMAL + MINIMAL[MINIMAL.index("  - id: m1") :]

    error = error_of(twice)

    assert error.path == "models[1].id"
    assert "defined twice" in error.problem


def test_two_routes_of_the_same_kind_are_refused() -> None:
    route = MINIMAL[MINIMAL.index("      - kind: official") :]

    error = error_of(MINIMAL + route)

    assert error.path == "models[0].routes[1].kind"


def test_broken_yaml_names_the_file_and_line() -> None:
    error = error_of("models: [\n  - id: x\n")

    assert error.source == "test.yaml"
    assert "not valid YAML" in error.problem
    assert error.line is not None


def test_the_version_changes_with_the_file_bytes() -> None:
    one = parse(MINIMAL)
    two = parse(MINIMAL + "# a comment\n")

    assert one.version != two.version
    assert len(one.version) == 12
