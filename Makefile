# The two front-door commands: `make dev` runs the service, `make test` runs every gate.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: dev test install lint bench deploy-check

$(BIN)/turnstream: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps 'agent-framework-ag-ui>=1.7,<2'  # see the dev extras in pyproject.toml
	touch $(BIN)/turnstream

install: $(BIN)/turnstream

dev: install
	$(BIN)/turnstream dev

lint: install
	$(BIN)/ruff check api worker shared tests
	$(BIN)/mypy

# Two test processes, a module's tests in one of them (--dist loadscope: a module's stack starts once).
test: lint
	$(BIN)/pytest -q -n 2 --dist loadscope

# deploy/ alone (also part of `test`): hadolint, Kubernetes and Compose schemas, the image's file set run.
deploy-check: install
	$(BIN)/pytest -q tests/test_deploy.py

# Every performance target in one run, each figure beside its target (~10 min; BENCH_ARGS=--quick ~3 min).
bench: install
	$(BIN)/python tests/benchmarks/bench.py $(BENCH_ARGS)
