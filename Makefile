# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_FILES := $(shell find protos -name '*.proto')
PROTO_STAMP := tokenforge/generated/.protos-generated

.PHONY: install protos run test test-unit lint fmt clean bench bench-streams soak chaos browser

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) $(PROTO_STAMP)

# Python code from protos/, made with grpcio-tools; not committed (see .gitignore).
$(PROTO_STAMP): $(PROTO_FILES) $(STAMP)
	$(BIN)/python -m tokenforge.tools.genprotos
	touch $(PROTO_STAMP)

protos: $(STAMP)
	$(BIN)/python -m tokenforge.tools.genprotos
	touch $(PROTO_STAMP)

run: install
	$(BIN)/tokenforge dev --port $${PORT:-8080} --state-dir $${STATE_DIR:-.dev}

# Debian's chromium for the console's browser tests (tests/browser); playwright drives
# it directly (`playwright install` downloads a browser build of its own, which we avoid).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

test: install browser
	$(BIN)/pytest -q $(PYTEST_ARGS)

# Benchmarks (not part of `make test`): figures go to bench-results/ and docs/PERFORMANCE.md.
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

# Streams at scale (not part of `make test`): N paced streams of about 30 s held open
# together, direct / tokenforge / LiteLLM; STREAMS=100,1000 (docs/PERFORMANCE.md).
bench-streams: install
	$(BIN)/python -m bench.streams_bench --streams $${STREAMS:-100} $(BENCH_ARGS)

# What each setting costs, then the capacity model (not part of `make test`): the shipped
# configuration beside one setting changed at a time, then 1, 2 and 4 gateway replicas
# under one fixed load; docs/PERFORMANCE.md ("What each setting costs", "Capacity model").
.PHONY: bench-capacity
bench-capacity: install
	$(BIN)/python -m bench.settings_bench $(SETTINGS_ARGS)
	$(BIN)/python -m bench.capacity_bench $(CAPACITY_ARGS)

# The conservation soak (not part of `make test`): money rule G1 on the whole system,
# tests/e2e/test_conservation.py with 20,000 requests from 48 seeded clients; figures
# printed at the end (docs/PERFORMANCE.md). TOKENFORGE_SOAK_SEED=<seed> replays a run.
soak: install
	TOKENFORGE_SOAK_REQUESTS=$${TOKENFORGE_SOAK_REQUESTS:-20000} \
	TOKENFORGE_SOAK_CLIENTS=$${TOKENFORGE_SOAK_CLIENTS:-48} \
	TOKENFORGE_SOAK_RUNS=$${TOKENFORGE_SOAK_RUNS:-1} \
	$(BIN)/pytest -q -s -p no:logging tests/e2e/test_conservation.py -k every_charge $(PYTEST_ARGS)

# Faults on the real system (not part of `make test`, which runs a short one): every
# process killed once under load, PostgreSQL restarted, money checked; one seed a run,
# TOKENFORGE_CHAOS_SEED=<seed> replays it. Reports in bench-results/chaos-*.md (docs/CHAOS.md).
chaos: install
	TOKENFORGE_CHAOS_SECONDS=$${TOKENFORGE_CHAOS_SECONDS:-120} \
	TOKENFORGE_CHAOS_CLIENTS=$${TOKENFORGE_CHAOS_CLIENTS:-24} \
	TOKENFORGE_CHAOS_REPORT=$${TOKENFORGE_CHAOS_REPORT:-bench-results/chaos-$$(date +%s).md} \
	$(BIN)/pytest -q -s -p no:logging tests/e2e/test_chaos.py -k killing $(PYTEST_ARGS)

test-unit: install
	$(BIN)/pytest -q tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy tokenforge services apps
	$(BIN)/lint-imports
	cd protos && ../$(BIN)/buf lint

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(PROTO_STAMP) .pytest_cache .mypy_cache .ruff_cache
