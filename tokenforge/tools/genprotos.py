"""Generate Python code from protos/ with grpcio-tools (called by `make protos`).

The generated modules land in `tokenforge/generated/`, where nothing but generated code
lives: `protos/tokenforge/wallet/v1/wallet.proto` becomes
`tokenforge.generated.wallet.v1.wallet_pb2` (with its `.pyi` stub and `wallet_pb2_grpc`).
protoc names modules after the proto files' paths, so its imports between them (and
the module names it registers) are moved under `tokenforge.generated` too; the protobuf
package names on the wire (`tokenforge.wallet.v1.WalletService`) stay as they are.
"""

from __future__ import annotations

import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
GENERATED = ROOT / "tokenforge" / "generated"
# An import of another generated module, or the module name protoc registers.
_MODULE = re.compile(
    r"^(from |import |_builder\.BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')tokenforge\."
)


def _moved(text: str) -> str:
    return "\n".join(_MODULE.sub(r"\1tokenforge.generated.", line) for line in text.split("\n"))


def main() -> int:
    from grpc_tools import protoc

    well_known = str(resources.files("grpc_tools") / "_proto")
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTOS}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *files,
        ]
        code = protoc.main(args)
        if code != 0:
            sys.stderr.write("protoc failed\n")
            return int(code)
        made = Path(tmp) / "tokenforge"
        for source in sorted(made.rglob("*_pb2*.py*")):
            target = GENERATED / source.relative_to(made)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_moved(source.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
