# The README's two commands: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast test-lowest lint typecheck services venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "aqueue needs Python >= 3.11: run make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e ".[all]" --group dev
	@touch $(STAMP)

## make demo: a worker and a producer on the embedded SQLite broker, no server needed
demo: venv
	$(BIN)/python examples/demo.py

## make test: ruff, import contracts, mypy --strict, the whole suite against real Redis and
## RabbitMQ (the fast tests two at a time, then the subprocess and fault tests one at a
## time), then the fast suite again on the lowest versions pyproject.toml allows
test: venv services lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider -m "not slow" -n 2
	$(BIN)/pytest -q -p no:cacheprovider -m slow
	$(MAKE) --no-print-directory test-lowest

## make test-fast: the suite without subprocess and fault tests
test-fast: venv
	$(BIN)/pytest -q -m "not slow" -n 2 -p no:cacheprovider

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check aqueue
	$(BIN)/lint-imports

## make test-lowest: the fast suite with the lowest allowed version of every direct
## dependency (uv's lowest-direct resolution), so a floor in pyproject.toml cannot lie
LOWEST := .venv-lowest
$(LOWEST)/.installed: pyproject.toml $(STAMP)
	rm -rf $(LOWEST)
	$(BIN)/uv venv -q --python $(BIN)/python $(LOWEST)
	$(BIN)/uv pip install -q --python $(LOWEST)/bin/python --resolution lowest-direct \
		-e ".[all]" --group dev
	@touch $@

test-lowest: $(LOWEST)/.installed services
	$(LOWEST)/bin/pytest -q -m "not slow" -n 2 -p no:cacheprovider

typecheck: venv
	$(BIN)/mypy

services:
	@bash scripts/ensure-services

clean:
	rm -rf $(VENV) $(LOWEST) .mypy_cache .ruff_cache .pytest_cache

## make bench: the side-by-side benchmark (docs/benchmarks.md); peers live in .bench-venv
.PHONY: bench
bench:
	$(PYTHON) -m benchmarks setup
	.bench-venv/bin/python -m benchmarks run
