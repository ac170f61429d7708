"""LiteLLM's proxy as the comparison point: an isolated virtualenv made on demand
(bench/.venv-litellm, gitignored; its pins never touch ours) and the proxy started
with 2 workers in front of the same mock upstream, no database.

`ensure_venv()` installs `litellm[proxy]` at the pinned version once; `start()` writes
a config naming the bench models and returns the running proxy, or raises
`Unavailable` with the reason (the benchmark then reports LiteLLM as unavailable).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

log = logging.getLogger("bench.litellm")

LITELLM_VERSION = "1.81.16"
VENV = Path(__file__).parent / ".venv-litellm"
MASTER_KEY = "sk-bench-litellm"
WORKERS = 2


class Unavailable(RuntimeError):
    """LiteLLM could not be installed or started here; the message says why."""


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv() -> Path:
    """The venv's python, installing `litellm[proxy]==LITELLM_VERSION` if missing."""
    stamp = VENV / f".installed-{LITELLM_VERSION}"
    if stamp.exists():
        return venv_python()
    log.info("installing litellm[proxy]==%s into %s (once)", LITELLM_VERSION, VENV)
    try:
        if not venv_python().exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(venv_python()), "-m", "pip", "install", "-q", "--upgrade", "pip"],
            check=True,
            timeout=600,
        )
        subprocess.run(
            [
                str(venv_python()),
                "-m",
                "pip",
                "install",
                "-q",
                f"litellm[proxy]=={LITELLM_VERSION}",
            ],
            check=True,
            timeout=1200,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        raise Unavailable(
            f"pip install litellm[proxy]=={LITELLM_VERSION} failed: {error}"
        ) from None
    stamp.touch()
    return venv_python()


def write_config(path: Path, models: dict[str, str]) -> None:
    """`models`: public model name -> upstream base URL (OpenAI-compatible, with /v1)."""
    lines = ["model_list:"]
    for name, base_url in models.items():
        lines += [
            f"  - model_name: {name}",
            "    litellm_params:",
            f"      model: openai/{name}",
            f"      api_base: {base_url}",
            "      api_key: sk-mock",
        ]
    lines += [
        "litellm_settings:",
        "  drop_params: true",
        "  telemetry: false",
        "general_settings:",
        f"  master_key: {MASTER_KEY}",
        "  disable_spend_logs: true",
    ]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class LiteLLMProxy:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start(port: int, models: dict[str, str], workdir: Path, timeout: float = 120) -> LiteLLMProxy:
    ensure_venv()
    config = workdir / "litellm.yaml"
    write_config(config, models)
    log_path = workdir / "litellm.log"
    env = {
        **os.environ,
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_SCHEMA_UPDATE": "true",
        "DATABASE_URL": "",
    }
    env.pop("DATABASE_URL")
    with open(log_path, "ab") as logfile:
        process = subprocess.Popen(
            [
                str(VENV / "bin" / "litellm"),
                "--config",
                str(config),
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
                "--num_workers",
                str(WORKERS),
            ],
            env=env,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=workdir,
        )
    proxy = LiteLLMProxy(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:]
            raise Unavailable(f"litellm exited with code {process.returncode}: {tail}")
        try:
            answer = httpx.get(proxy.url + "/health/liveliness", timeout=1.0)
            if answer.status_code == 200:
                return proxy
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proxy.stop()
    raise Unavailable(f"litellm did not answer /health/liveliness within {timeout:.0f}s")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    ensure_venv()
