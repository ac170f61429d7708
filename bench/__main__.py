"""`python -m bench [--quick] [gateway options]`: the gateway comparison (direct upstream,
tokenforge with full billing, LiteLLM's proxy), then bench/wallet_bench.py and
bench/usage_bench.py as subprocesses when they exist. `--only gateway` skips the others.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from bench import gateway_bench

HERE = Path(__file__).parent
ROOT = HERE.parent
log = logging.getLogger("bench")

# Extra arguments for the other benchmarks in --quick mode (their own defaults otherwise).
OTHERS: dict[str, tuple[list[str], list[str]]] = {
    # name: (default args, quick args)
    "wallet_bench.py": ([], ["--seconds", "3", "--clients", "16"]),
    "usage_bench.py": ([], ["--receipts", "20000", "--repeat", "3"]),
}


def main() -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--only", choices=["gateway", "others"], default=None)
    own, rest = parser.parse_known_args()
    if "-h" in rest or "--help" in rest:
        gateway_bench.parse_args(["--help"])
    worst = 0
    if own.only != "others":
        worst = max(worst, gateway_bench.main(rest))
    if own.only == "gateway":
        return worst
    quick = "--quick" in rest
    for name, (default_args, quick_args) in OTHERS.items():
        script = HERE / name
        if not script.exists():
            continue
        args = quick_args if quick else default_args
        log.info("running %s %s", name, " ".join(args))
        done = subprocess.run([sys.executable, str(script), *args], cwd=ROOT)
        worst = max(worst, done.returncode)
    return worst


if __name__ == "__main__":
    raise SystemExit(main())
