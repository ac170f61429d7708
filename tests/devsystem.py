"""`tokenforge dev` as a child process, the way a user runs it: shared by the tests
that need real processes (tests/e2e/test_dev_command.py, tests/integration/cli,
tests/browser)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tokenforge.runtime.embedded import free_port


def start_dev(
    state_dir: Path,
    port: int,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `tokenforge dev` (with more `args`, and `env` over this environment); an
    old dev.json is removed so the new one can be awaited."""
    (state_dir / "dev.json").unlink(missing_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "apps.cli", "dev", "--port", str(port)]
        + ["--state-dir", str(state_dir), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )


def wait_for_dev_json(
    proc: subprocess.Popen[bytes], state_dir: Path, timeout: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    path = state_dir / "dev.json"
    while time.monotonic() < deadline:
        if path.exists():
            return dict(json.loads(path.read_text()))
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            pytest.fail(f"tokenforge dev exited with {proc.returncode}:\n{out}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail("dev.json was not written in time")


def stop_dev(proc: subprocess.Popen[bytes]) -> str:
    """Ctrl-C, as a user would; answers what it printed."""
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out.decode()


@contextmanager
def running_dev(state_dir: Path) -> Iterator[dict[str, Any]]:
    """A running `tokenforge dev` on free ports; yields its dev.json."""
    proc = start_dev(state_dir, free_port())
    try:
        yield wait_for_dev_json(proc, state_dir)
    finally:
        stop_dev(proc)
