"""The model catalog: channels (upstream endpoints), models, and their routes.

A route is one way to serve a model: its kind (official or routed) fixes the bucket
that pays (official -> credit, routed -> routed), and it names the upstream model,
the prices, the channels (primary first, then backups), the retry policy and what a
failed request costs.

The catalog is written in YAML (see services/routing/catalog/demo.yaml). String
values may use `${VAR}` or `${VAR:-default}` to read the environment. Every error
names the file, the YAML path and the field, with the line when known.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from tokenforge.money import Bucket, Price


class RouteKind(enum.StrEnum):
    OFFICIAL = "official"
    ROUTED = "routed"

    @property
    def bucket(self) -> Bucket:
        """The bucket that pays for this kind of route; never another."""
        return Bucket.CREDIT if self is RouteKind.OFFICIAL else Bucket.ROUTED


class Endpoint(enum.StrEnum):
    CHAT = "chat"
    EMBEDDINGS = "embeddings"


class Protocol(enum.StrEnum):
    """The API a channel speaks; the gateway translates chat requests to it and back."""

    OPENAI_CHAT = "openai_chat"
    OPENAI_RESPONSES = "openai_responses"
    ANTHROPIC_MESSAGES = "anthropic_messages"


class Auth(enum.StrEnum):
    """How a channel's key is sent: `Authorization: Bearer <key>` or `x-api-key: <key>`."""

    BEARER = "bearer"
    X_API_KEY = "x-api-key"


class ChargePolicy(enum.StrEnum):
    """What a failed request costs: nothing, its prompt, or what upstream reported."""

    NONE = "none"
    PROMPT_ONLY = "prompt_only"
    AS_REPORTED = "as_reported"


DEFAULT_RETRY_ON = ("429", "500", "502", "503", "504", "timeout", "connect")
_RETRY_WORDS = frozenset({"timeout", "connect"})


@dataclass(frozen=True)
class Channel:
    id: str
    base_url: str
    secret_name: str = ""
    connect_timeout_ms: int = 5_000
    first_byte_timeout_ms: int = 60_000
    total_timeout_ms: int = 300_000
    # Share of load among channels of equal priority (see domain/health.py).
    weight: int = 1
    protocol: Protocol = Protocol.OPENAI_CHAT
    auth: Auth = Auth.BEARER
    # Extra headers sent with every call (e.g. anthropic-version), sorted by name.
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    retry_on: tuple[str, ...] = DEFAULT_RETRY_ON


@dataclass(frozen=True)
class Route:
    model: str
    kind: RouteKind
    bucket: Bucket
    upstream_model: str
    price: Price
    channels: tuple[Channel, ...]
    retry: RetryPolicy
    charge_policy: ChargePolicy = ChargePolicy.NONE
    # The priority group of each channel (same length as `channels`): channels of
    # one group share load by weight; groups are tried in order. Default: one each.
    channel_groups: tuple[int, ...] = ()

    @property
    def groups(self) -> tuple[int, ...]:
        return self.channel_groups or tuple(range(len(self.channels)))


@dataclass(frozen=True)
class Model:
    id: str
    display_name: str
    context_length: int
    max_output_tokens: int
    endpoints: tuple[Endpoint, ...]
    routes: tuple[Route, ...]

    def route(self, kind: RouteKind) -> Route | None:
        return next((r for r in self.routes if r.kind is kind), None)


@dataclass(frozen=True)
class Catalog:
    models: tuple[Model, ...]
    channels: tuple[Channel, ...]
    version: str
    source: str = ""
    _by_id: dict[str, Model] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_id.update({m.id: m for m in self.models})

    def model(self, model_id: str) -> Model | None:
        return self._by_id.get(model_id)

    @property
    def model_ids(self) -> list[str]:
        return [m.id for m in self.models]


class CatalogError(ValueError):
    """A catalog file that cannot be used; the message says where and why."""

    def __init__(self, source: str, path: str, problem: str, line: int | None = None) -> None:
        self.source = source
        self.path = path
        self.problem = problem
        self.line = line
        where = f"{source}: {path or '<root>'}"
        if line is not None:
            where += f" (line {line})"
        super().__init__(f"{where}: {problem}")


def catalog_version(data: bytes) -> str:
    """The first 12 hex digits of the SHA-256 of the file's bytes."""
    return hashlib.sha256(data).hexdigest()[:12]


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Replace `${VAR}` and `${VAR:-default}` (default when VAR is unset or empty).

    Raises KeyError naming the variable when it is unset and has no default.
    """

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = env.get(name, "")
        if found:
            return found
        if default is not None:
            return default
        raise KeyError(name)

    return _ENV_REF.sub(replace, value)


def parse_catalog(data: bytes, source: str, env: Mapping[str, str]) -> Catalog:
    """Parse and validate a catalog; raises CatalogError naming file, path and field."""
    return _Parser(data, source, env).catalog()


Path = tuple[str | int, ...]


def _render(path: Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _line_map(node: yaml.Node | None) -> dict[Path, int]:
    """YAML path -> 1-based line of the node, from the composed node tree's marks."""
    lines: dict[Path, int] = {}

    def walk(current: yaml.Node, path: Path) -> None:
        lines[path] = current.start_mark.line + 1
        if isinstance(current, yaml.MappingNode):
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode):
                    walk(value, (*path, str(key.value)))
        elif isinstance(current, yaml.SequenceNode):
            for index, item in enumerate(current.value):
                walk(item, (*path, index))

    if node is not None:
        walk(node, ())
    return lines


class _Parser:
    def __init__(self, data: bytes, source: str, env: Mapping[str, str]) -> None:
        self.data = data
        self.source = source
        self.env = env
        self.lines: dict[Path, int] = {}

    # -- errors ---------------------------------------------------------------

    def fail(self, path: Path, problem: str) -> CatalogError:
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        return CatalogError(self.source, _render(path), problem, self.lines.get(probe))

    # -- typed field readers --------------------------------------------------

    def mapping(self, value: Any, path: Path, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {type(value).__name__}")
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            raise self.fail(
                (*path, unknown[0]),
                f"unknown field {unknown[0]!r}; expected one of: {', '.join(sorted(allowed))}",
            )
        return value

    def sequence(self, value: Any, path: Path, *, non_empty: bool = True) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list, got {type(value).__name__}")
        if non_empty and not value:
            raise self.fail(path, "must not be empty")
        return value

    def string(self, obj: dict[str, Any], key: str, path: Path, default: str | None = None) -> str:
        if key not in obj or obj[key] is None:
            if default is None:
                raise self.fail((*path, key), f"the field {key!r} is required")
            return default
        value = obj[key]
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise self.fail((*path, key), f"expected a string, got {type(value).__name__}")
        try:
            text = interpolate(str(value), self.env)
        except KeyError as missing:
            raise self.fail(
                (*path, key),
                f"environment variable {missing.args[0]} is not set and has no default "
                f"(write ${{{missing.args[0]}:-default}} to give one)",
            ) from None
        if not text and default is None:
            raise self.fail((*path, key), f"the field {key!r} must not be empty")
        return text

    def integer(
        self,
        obj: dict[str, Any],
        key: str,
        path: Path,
        default: int | None = None,
        minimum: int = 0,
    ) -> int:
        if key not in obj or obj[key] is None:
            if default is None:
                raise self.fail((*path, key), f"the field {key!r} is required")
            return default
        value = obj[key]
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(
                (*path, key),
                f"expected an integer, got {value!r} (prices are integer micro-units per "
                "million tokens, timeouts integer milliseconds)",
            )
        if value < minimum:
            raise self.fail((*path, key), f"must be at least {minimum}, got {value}")
        return value

    def choice(
        self,
        obj: dict[str, Any],
        key: str,
        path: Path,
        options: type[enum.StrEnum],
        default: str | None = None,
    ) -> Any:
        text = self.string(obj, key, path, default)
        try:
            return options(text)
        except ValueError:
            allowed = ", ".join(o.value for o in options)
            raise self.fail((*path, key), f"{text!r} is not one of: {allowed}") from None

    # -- the document ---------------------------------------------------------

    def catalog(self) -> Catalog:
        try:
            text = self.data.decode("utf-8")
            self.lines = _line_map(yaml.compose(text, Loader=yaml.SafeLoader))
            document = yaml.safe_load(text)
        except UnicodeDecodeError as err:
            raise CatalogError(self.source, "", f"not UTF-8 text: {err}") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            raise CatalogError(self.source, "", f"not valid YAML: {err}", line) from None
        root = self.mapping(document, (), {"channels", "models"})
        channels = self.channels(root.get("channels"), ("channels",))
        models: list[Model] = []
        seen: set[str] = set()
        for index, raw in enumerate(self.sequence(root.get("models"), ("models",))):
            model = self.model(raw, ("models", index), channels)
            if model.id in seen:
                raise self.fail(("models", index, "id"), f"model {model.id!r} is defined twice")
            seen.add(model.id)
            models.append(model)
        return Catalog(
            models=tuple(models),
            channels=tuple(channels.values()),
            version=catalog_version(self.data),
            source=self.source,
        )

    def channels(self, value: Any, path: Path) -> dict[str, Channel]:
        found: dict[str, Channel] = {}
        for index, raw in enumerate(self.sequence(value, path)):
            here = (*path, index)
            obj = self.mapping(
                raw,
                here,
                {
                    "id",
                    "base_url",
                    "secret_name",
                    "timeouts_ms",
                    "weight",
                    "protocol",
                    "auth",
                    "headers",
                },
            )
            channel_id = self.string(obj, "id", here)
            if channel_id in found:
                raise self.fail((*here, "id"), f"channel {channel_id!r} is defined twice")
            base_url = self.string(obj, "base_url", here).rstrip("/")
            if not base_url.startswith(("http://", "https://")):
                raise self.fail(
                    (*here, "base_url"), f"must start with http:// or https://, got {base_url!r}"
                )
            timeouts_path = (*here, "timeouts_ms")
            timeouts = self.mapping(
                obj.get("timeouts_ms") or {}, timeouts_path, {"connect", "first_byte", "total"}
            )
            found[channel_id] = Channel(
                id=channel_id,
                base_url=base_url,
                secret_name=self.string(obj, "secret_name", here, ""),
                connect_timeout_ms=self.integer(timeouts, "connect", timeouts_path, 5_000, 1),
                first_byte_timeout_ms=self.integer(
                    timeouts, "first_byte", timeouts_path, 60_000, 1
                ),
                total_timeout_ms=self.integer(timeouts, "total", timeouts_path, 300_000, 1),
                weight=self.integer(obj, "weight", here, 1, 0),
                protocol=self.choice(obj, "protocol", here, Protocol, Protocol.OPENAI_CHAT.value),
                auth=self.choice(obj, "auth", here, Auth, Auth.BEARER.value),
                headers=self.headers(obj.get("headers"), (*here, "headers")),
            )
        return found

    def headers(self, value: Any, path: Path) -> tuple[tuple[str, str], ...]:
        """A channel's extra headers: names to string values; never the key's header."""
        if value is None:
            return ()
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping of header names to values, got {value!r}")
        found: list[tuple[str, str]] = []
        for name in value:
            lowered = str(name).lower()
            if lowered in ("authorization", "x-api-key", "content-type"):
                raise self.fail(
                    (*path, name),
                    f"{name!r} is set by the gateway (the key from secret_name, by `auth`)",
                )
            found.append((lowered, self.string(value, name, path)))
        return tuple(sorted(found))

    def model(self, raw: Any, path: Path, channels: dict[str, Channel]) -> Model:
        obj = self.mapping(
            raw,
            path,
            {"id", "display_name", "context_length", "max_output_tokens", "endpoints", "routes"},
        )
        model_id = self.string(obj, "id", path)
        if "@" in model_id:
            raise self.fail(
                (*path, "id"), "a model id may not contain '@' (it marks the route kind)"
            )
        endpoints: list[Endpoint] = []
        endpoints_path = (*path, "endpoints")
        for index, raw_endpoint in enumerate(self.sequence(obj.get("endpoints"), endpoints_path)):
            try:
                endpoints.append(Endpoint(str(raw_endpoint)))
            except ValueError:
                allowed = ", ".join(e.value for e in Endpoint)
                raise self.fail(
                    (*endpoints_path, index), f"{raw_endpoint!r} is not one of: {allowed}"
                ) from None
        context_length = self.integer(obj, "context_length", path, minimum=1)
        # Embeddings generate no output tokens; a chat model must allow some.
        max_output = self.integer(
            obj, "max_output_tokens", path, minimum=1 if Endpoint.CHAT in endpoints else 0
        )
        if max_output > context_length:
            raise self.fail(
                (*path, "max_output_tokens"),
                f"{max_output} is above the context length {context_length}",
            )
        routes: list[Route] = []
        for index, raw_route in enumerate(self.sequence(obj.get("routes"), (*path, "routes"))):
            route = self.route(raw_route, (*path, "routes", index), model_id, channels)
            if any(r.kind is route.kind for r in routes):
                raise self.fail(
                    (*path, "routes", index, "kind"),
                    f"model {model_id!r} has two {route.kind.value} routes; keep one per kind",
                )
            routes.append(route)
        return Model(
            id=model_id,
            display_name=self.string(obj, "display_name", path, model_id),
            context_length=context_length,
            max_output_tokens=max_output,
            endpoints=tuple(endpoints),
            routes=tuple(routes),
        )

    def route(self, raw: Any, path: Path, model_id: str, channels: dict[str, Channel]) -> Route:
        obj = self.mapping(
            raw,
            path,
            {
                "kind",
                "bucket",
                "upstream_model",
                "prices",
                "channels",
                "retry",
                "charge_policy",
            },
        )
        kind: RouteKind = self.choice(obj, "kind", path, RouteKind)
        bucket: Bucket = self.choice(obj, "bucket", path, Bucket)
        if bucket is not kind.bucket:
            raise self.fail(
                (*path, "bucket"),
                f"{kind.value} routes are paid from the {kind.bucket.value} bucket, "
                f"not {bucket.value!r}",
            )
        prices_path = (*path, "prices")
        prices = self.mapping(
            obj.get("prices"),
            prices_path,
            {"input", "cached_input", "cache_write", "output", "request_fee"},
        )
        input_price = self.integer(prices, "input", prices_path)
        price = Price(
            bucket=bucket,
            input_per_million=input_price,
            output_per_million=self.integer(prices, "output", prices_path),
            # Without a cached price, cached tokens cost what input tokens cost.
            cached_input_per_million=self.integer(prices, "cached_input", prices_path, input_price),
            request_fee=self.integer(prices, "request_fee", prices_path, 0),
            # Without a cache-write price, tokens written to the cache cost input's.
            cache_write_per_million=self.integer(prices, "cache_write", prices_path, input_price),
        )
        route_channels: list[Channel] = []
        channel_groups: list[int] = []
        channels_path = (*path, "channels")
        # An entry is a channel id, or a list of ids that share load by weight.
        for index, entry in enumerate(self.sequence(obj.get("channels"), channels_path)):
            group_path: Path = (*channels_path, index)
            members = (
                [(n, (*group_path, i)) for i, n in enumerate(self.sequence(entry, group_path))]
                if isinstance(entry, list)
                else [(entry, group_path)]
            )
            for name, where in members:
                channel = channels.get(str(name))
                if channel is None:
                    known = ", ".join(sorted(channels)) or "none"
                    raise self.fail(where, f"unknown channel {name!r}; defined channels: {known}")
                if channel in route_channels:
                    raise self.fail(where, f"channel {name!r} is listed twice")
                route_channels.append(channel)
                channel_groups.append(index)
        retry_path = (*path, "retry")
        retry_obj = self.mapping(obj.get("retry") or {}, retry_path, {"max_attempts", "retry_on"})
        retry_on: list[str] = []
        if retry_obj.get("retry_on") is not None:
            for index, item in enumerate(
                self.sequence(retry_obj["retry_on"], (*retry_path, "retry_on"), non_empty=False)
            ):
                word = str(item)
                if word not in _RETRY_WORDS and not (len(word) == 3 and word.isdigit()):
                    raise self.fail(
                        (*retry_path, "retry_on", index),
                        f"{word!r} is neither an HTTP status nor one of: timeout, connect",
                    )
                retry_on.append(word)
        retry = RetryPolicy(
            max_attempts=self.integer(
                retry_obj, "max_attempts", retry_path, len(route_channels), 1
            ),
            retry_on=tuple(retry_on) if "retry_on" in retry_obj else DEFAULT_RETRY_ON,
        )
        return Route(
            model=model_id,
            kind=kind,
            bucket=bucket,
            upstream_model=self.string(obj, "upstream_model", path),
            price=price,
            channels=tuple(route_channels),
            retry=retry,
            charge_policy=self.choice(obj, "charge_policy", path, ChargePolicy, "none"),
            channel_groups=tuple(channel_groups),
        )
