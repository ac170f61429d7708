"""One `tokenforge dev` for the operator CLI tests (tests/integration/cli): real
processes on free ports in a temporary state dir; the CLI reads its dev.json through
--state-dir. The few helpers are copied from tests/e2e/test_dev_command.py (test
modules are not imported)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.devsystem import running_dev


@dataclass(frozen=True)
class Cli:
    """`tokenforge ...` as a subprocess against the running dev system."""

    state_dir: Path
    info: dict[str, Any]

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "apps.cli", *args, "--state-dir", str(self.state_dir)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, *args: str) -> str:
        done = self(*args)
        assert done.returncode == 0, f"tokenforge {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def http(self, key: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.info["gateway_url"],
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )

    def new_account(self, *scopes: str) -> tuple[str, str]:
        """A fresh account opened by the CLI, and an API key with these scopes."""
        account = f"acct-cli-{uuid.uuid4().hex[:12]}"
        self.ok("accounts", "open", account, "--name", "cli test")
        flags = [f"--scope={s}" for s in scopes or ("inference", "wallet_read")]
        created = self.ok("keys", "create", account, "--name", "cli test key", *flags)
        return account, secret_of(created)


def secret_of(created: str) -> str:
    [line] = [x for x in created.splitlines() if x.startswith("API key (shown once")]
    return line.rsplit(" ", 1)[1]


def wait_until(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    state_dir = tmp_path_factory.mktemp("cli-dev")
    with running_dev(state_dir) as info:
        yield Cli(state_dir, info)
