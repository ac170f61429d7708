"""Start a service's async gRPC server with health, reflection and graceful shutdown.

`create_server()` binds port 0 when asked, so tests learn the port; interceptors
check the caller's credential, map domain errors to rich gRPC statuses and trace
every call.

Callers are users too (DESIGN S2): a request with a NUL character in any string
field is refused INVALID_ARGUMENT naming the field before a handler runs
(PostgreSQL text cannot hold one), and a failure nobody planned for is logged here
with its traceback and the request id, and answered INTERNAL with a message that
says nothing of the internals (no exception text, SQL or parameters). A call that
could not reach its database (a restart, a failover: `db.database_unreachable`) is
answered UNAVAILABLE instead, which callers retry when the call is idempotent.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import hashlib
import hmac
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from tokenforge.errors import ERROR_DOMAIN, GRPC_STATUS, DomainError, Reason
from tokenforge.runtime.db import database_unreachable
from tokenforge.runtime.logging import request_id_var
from tokenforge.runtime.metrics import MetricsInterceptor

if TYPE_CHECKING:
    from tokenforge.config import Settings

log = logging.getLogger(__name__)


class Role(enum.StrEnum):
    """Who may call a method: the services themselves, or operators (the CLI)."""

    INTERNAL = "internal"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Caller:
    """Who is calling: a role, and the name of the service or person behind it."""

    role: Role
    name: str


# The caller of the call being served (set by GuardInterceptor), for handlers that
# record who did something (an operator's adjustment or reversal).
current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "tokenforge_current_caller", default=None
)

LEGACY_INTERNAL = "internal"
OPERATOR_NAME = "operator"


@dataclass(frozen=True)
class Credentials:
    """Tokens a server accepts: the admin token (operators), the shared internal token
    (role internal, caller "internal"), and one token per calling service
    (`callers`: name -> token; role internal, caller = that name).

    A server need not hold the admin token itself: `admin_token_sha256` (hex) verifies
    an operator just as well, and is what the Kubernetes pods get (docs/DEPLOY.md)."""

    internal_token: str
    admin_token: str = ""
    callers: Mapping[str, str] = field(default_factory=dict)
    admin_token_sha256: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> Credentials | None:
        """None (no check at all) only when no token is configured."""
        admin_digest = settings.admin_digest
        if not (settings.internal_token or admin_digest or settings.caller_tokens):
            return None
        return cls(
            settings.internal_token,
            callers=dict(settings.caller_tokens),
            admin_token_sha256=admin_digest,
        )

    @property
    def admin_digest(self) -> bytes:
        if self.admin_token_sha256:
            return bytes.fromhex(self.admin_token_sha256)
        return hashlib.sha256(self.admin_token.encode()).digest() if self.admin_token else b""

    def identify(self, token: str) -> Caller | None:
        # Every candidate is compared, so timing does not tell which one matched.
        found: Caller | None = None
        admin = self.admin_digest
        if admin and hmac.compare_digest(hashlib.sha256(token.encode()).digest(), admin):
            found = Caller(Role.OPERATOR, OPERATOR_NAME)
        if self.internal_token and hmac.compare_digest(token, self.internal_token):
            found = found or Caller(Role.INTERNAL, LEGACY_INTERNAL)
        for name, secret in self.callers.items():
            if secret and hmac.compare_digest(token, secret):
                found = found or Caller(Role.INTERNAL, name)
        return found

    def role_of(self, token: str) -> Role | None:
        caller = self.identify(token)
        return caller.role if caller is not None else None


@dataclass
class AccessPolicy:
    """Which callers may call which method.

    `rules` names roles, `callers` names callers (services by name, or "internal"
    for the shared internal token). A method named in neither is open to every
    authenticated caller; a method named in either is open to a caller whose role is
    in `rules[method]` or whose name is in `callers[method]`.
    """

    rules: Mapping[str, frozenset[Role]] = field(default_factory=dict)
    callers: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def allows(self, method: str, role: Role | Caller) -> bool:
        caller = role if isinstance(role, Caller) else Caller(role, "")
        name = method.rsplit("/", 1)[-1]
        roles = self.rules.get(name)
        names = self.callers.get(name)
        if roles is None and names is None:
            return True
        return caller.role in (roles or frozenset()) or caller.name in (names or frozenset())


# The batch calls: the guard leaves their NUL check to the servicer
# (batch_items.without_nul_items), so an item with a NUL is refused alone, as its
# unary call would be, and the batch's other items stand.
BATCH_METHODS = frozenset(
    {"HoldMany", "SettleMany", "CapturePartMany", "ReleaseMany", "RecordReceipts", "ReportOutcomes"}
)

# A status travels in the call's trailers, which gRPC caps at 16 KiB: a message or a
# detail that echoes a huge input is cut short rather than lose the whole status.
MAX_STATUS_MESSAGE_CHARS = 2048
MAX_STATUS_DETAIL_CHARS = 512


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def rich_status(error: DomainError) -> status_pb2.Status:
    metadata = {
        _clip(k, MAX_STATUS_DETAIL_CHARS): _clip(v, MAX_STATUS_DETAIL_CHARS)
        for k, v in (error.metadata or {}).items()
    }
    info = error_details_pb2.ErrorInfo(
        reason=error.reason.value, domain=ERROR_DOMAIN, metadata=metadata
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    code = GRPC_STATUS[error.reason]
    message = _clip(error.message, MAX_STATUS_MESSAGE_CHARS)
    return status_pb2.Status(code=code.value[0], message=message, details=[detail])


def unexpected_error(method: str) -> DomainError:
    """What a caller learns of a failure nobody planned for: which call, the request
    id; the traceback is in this service's log under that id."""
    request_id = request_id_var.get()
    named = f" (request {request_id})" if request_id else ""
    return DomainError(
        Reason.INTERNAL,
        f"{method.rsplit('/', 1)[-1]} failed unexpectedly{named}; the details are in the "
        "service's log.",
        {"request_id": request_id} if request_id else {},
    )


def database_unavailable(method: str) -> DomainError:
    """A call that met its database restarting or gone: unavailable (callers retry an
    idempotent call), not a failure nobody planned for."""
    request_id = request_id_var.get()
    return DomainError(
        Reason.SERVICE_UNAVAILABLE,
        f"{method.rsplit('/', 1)[-1]} could not reach its database right now; "
        "try again in a moment.",
        {"request_id": request_id} if request_id else {},
    )


def nul_refusal(message: Any) -> DomainError | None:
    """The refusal of a request (or a batch's item) with a NUL in a string field.

    A NUL character is a zero byte on the wire; most requests have none at all, and
    serializing (C code) to look costs a fifth of walking the fields."""
    if not isinstance(message, Message) or b"\x00" not in message.SerializeToString():
        return None
    bad = nul_field(message)
    if bad is None:
        return None
    return DomainError(
        Reason.INVALID_ARGUMENT,
        f"`{bad}` holds a NUL character, which no id, name or text may hold.",
        {"field": bad},
    )


def nul_field(message: Message, prefix: str = "") -> str | None:
    """The first string field (dotted path) of `message` holding a NUL character."""
    for fd, value in message.ListFields():
        name = f"{prefix}{fd.name}"
        if fd.type == FieldDescriptor.TYPE_STRING:
            values = value if fd.is_repeated else (value,)
            if any("\x00" in v for v in values):
                return name
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
                items = list(value.items())
                if any(isinstance(k, str) and "\x00" in k for k, _ in items):
                    return name
                for key, item in items:
                    if isinstance(item, str) and "\x00" in item:
                        return f"{name}[{key}]"
                    if isinstance(item, Message) and (found := nul_field(item, f"{name}.")):
                        return found
            else:
                for index, item in enumerate(value if fd.is_repeated else (value,)):
                    where = f"{name}[{index}]." if fd.is_repeated else f"{name}."
                    if found := nul_field(item, where):
                        return found
    return None


def _wrap_unary(
    handler: grpc.RpcMethodHandler,
    behaviour: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class GuardInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Checks the caller's credential and maps DomainError to a rich status."""

    def __init__(self, credentials: Credentials | None, policy: AccessPolicy) -> None:
        self._credentials = credentials
        self._policy = policy

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or handler.unary_unary is None or method.startswith("/grpc."):
            return handler
        inner = handler.unary_unary
        caller, denial = self._check(method, details.invocation_metadata or ())
        # A batch call refuses an item with a NUL alone (batch_items.without_nul_items).
        check_nul = method.rsplit("/", 1)[-1] not in BATCH_METHODS

        async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if denial is not None:
                await context.abort_with_status(rpc_status.to_status(rich_status(denial)))
            if check_nul and (refusal := nul_refusal(request)):
                await context.abort_with_status(rpc_status.to_status(rich_status(refusal)))
            reset = current_caller.set(caller)
            try:
                return await inner(request, context)
            except DomainError as error:
                await context.abort_with_status(rpc_status.to_status(rich_status(error)))
            except grpc.aio.AbortError:
                raise  # a handler's own abort: its status is already set
            except Exception as error:
                if database_unreachable(error):  # a restart or failover: try again
                    log.warning("%s: the database is not answering (%r)", method, error)
                    status = rich_status(database_unavailable(method))
                else:
                    log.exception("%s failed unexpectedly", method)
                    status = rich_status(unexpected_error(method))
                await context.abort_with_status(rpc_status.to_status(status))
            finally:
                current_caller.reset(reset)

        return _wrap_unary(handler, behaviour)

    def _check(
        self, method: str, metadata: Iterable[tuple[str, Any]]
    ) -> tuple[Caller | None, DomainError | None]:
        if self._credentials is None:
            return None, None
        token = bearer_token(metadata)
        caller = self._credentials.identify(token) if token else None
        if caller is None:
            return None, DomainError(
                Reason.UNAUTHENTICATED,
                "This call needs a service or operator credential (authorization: Bearer <token>).",
            )
        if not self._policy.allows(method, caller):
            return caller, DomainError(
                Reason.PERMISSION_DENIED,
                f"{method.rsplit('/', 1)[-1]} is not open to the {caller.role.value} "
                f"credential of {caller.name!r}.",
            )
        return caller, None


def bearer_token(metadata: Iterable[tuple[str, Any]]) -> str:
    """The credential a call carries (`authorization: Bearer <token>`), or ""."""
    token = ""
    for key, value in metadata:
        if key == "authorization" and isinstance(value, str):
            token = value.removeprefix("Bearer ").strip()
    return token


@dataclass
class Server:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: list[str]

    async def set_serving(self) -> None:
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def create_server(
    registrations: Iterable[tuple[Callable[[Any, grpc.aio.Server], None], Any, str]],
    *,
    port: int = 0,
    host: str | None = None,
    credentials: Credentials | None = None,
    policy: AccessPolicy | None = None,
) -> Server:
    """Build a server. `registrations` are (add_XServicer_to_server, servicer, full name).

    Health starts NOT_SERVING; call `Server.set_serving()` once the service is ready.
    """
    server = grpc.aio.server(
        interceptors=[
            aio_server_interceptor(),  # type: ignore[no-untyped-call]
            MetricsInterceptor(),
            GuardInterceptor(credentials, policy or AccessPolicy()),
        ],
        options=[("grpc.so_reuseport", 0)],
    )
    names: list[str] = []
    for add, servicer, name in registrations:
        add(servicer, server)
        names.append(name)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    # TOKENFORGE_BIND_HOST=0.0.0.0 in containers; loopback by default.
    host = host or os.environ.get("TOKENFORGE_BIND_HOST", "127.0.0.1")
    bound = server.add_insecure_port(f"{host}:{port}")
    return Server(server=server, port=bound, health=health_servicer, service_names=names)


async def run_until_signal(stop: Callable[[], Awaitable[None]]) -> None:
    """Wait for SIGTERM or SIGINT, then run `stop` (graceful shutdown)."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    await event.wait()
    log.info("shutting down")
    await stop()
