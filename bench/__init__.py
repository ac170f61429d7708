"""Benchmarks (not part of `make test`): `python -m bench` runs the gateway comparison
(bench/gateway_bench.py), then the wallet and usage benchmarks when present."""
