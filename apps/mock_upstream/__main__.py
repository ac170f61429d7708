"""`python -m apps.mock_upstream --port 9000`: the mock upstream on its own."""

from __future__ import annotations

import argparse

from apps.mock_upstream.server import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--host", default="127.0.0.1")
    arguments = parser.parse_args()
    main(arguments.port, arguments.host)
