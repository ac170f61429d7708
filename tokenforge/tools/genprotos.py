"""Generate Python code from protos/ with grpcio-tools (called by `make protos`).

The generated modules land next to their package path, so
`protos/tokenforge/wallet/v1/wallet.proto` becomes `tokenforge.wallet.v1.wallet_pb2`.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"


def main() -> int:
    from grpc_tools import protoc

    well_known = str(resources.files("grpc_tools") / "_proto")
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *files,
    ]
    code = protoc.main(args)
    if code != 0:
        sys.stderr.write("protoc failed\n")
    return int(code)


if __name__ == "__main__":
    raise SystemExit(main())
