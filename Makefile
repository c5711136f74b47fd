# The README's two commands: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOWEST := .venv-lowest

.PHONY: demo example-django test test-fast test-lowest lint typecheck services venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "aqueue needs Python >= 3.11: run make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv
	$(BIN)/uv pip install -q --python $(BIN)/python -e ".[all]" --group dev
	@touch $(STAMP)

## make demo: a worker and a producer on the embedded SQLite broker, no server needed
demo: venv
	$(BIN)/python examples/demo.py

## make example-django: examples/django_app (celery101's API on Django): migrates its SQLite
## database, starts a worker (aqueue worker --django) beside `manage.py runserver` on
## 127.0.0.1:8000; Ctrl-C stops both. Broker: the embedded SQLite file aqueue.db there
example-django: venv
	cd examples/django_app && ../../$(BIN)/python manage.py migrate -v 0
	cd examples/django_app; \
	DJANGO_SETTINGS_MODULE=celery101.settings ../../$(BIN)/aqueue worker celery101.aqueue:app \
		--django -l info & worker=$$!; \
	trap 'kill $$worker 2>/dev/null; wait $$worker' EXIT INT TERM; \
	../../$(BIN)/python manage.py runserver 127.0.0.1:8000 --noreload

## The adapters' own tests of the two most version-sensitive dependencies (redis-py;
## aio-pika and aiormq): make test runs them again on the lowest versions pyproject.toml
## allows, beside the fast suite. make test-lowest runs the whole fast suite that way:
## run it when a floor in pyproject.toml or an adapter changes
LOWEST_SMOKE := tests/brokers/test_redis.py tests/brokers/test_rabbitmq.py

## make test: ruff and the import contracts; the fast tests four at a time with mypy
## --strict and LOWEST_SMOKE beside them (their output in .typecheck.log and
## .test-lowest.log, shown whole if the run failed); then the slow ones (subprocesses,
## private servers, faults: they mostly wait, so four at a time). Everything runs against
## real Redis and RabbitMQ. Recovery-time bounds in the slow tests are correctness bounds
## with room for a loaded machine, not speed measurements (benchmarks/ does those)
test: venv services lint $(LOWEST)/.installed
	@$(BIN)/mypy > .typecheck.log 2>&1 & typing=$$!; \
	$(LOWEST)/bin/pytest -q -m "not slow" -p no:cacheprovider $(LOWEST_SMOKE) \
		> .test-lowest.log 2>&1 & low=$$!; \
	$(BIN)/pytest -q -p no:cacheprovider -m "not slow" -n 4; fast=$$?; \
	wait $$typing; typed=$$?; wait $$low; lowest=$$?; \
	echo "== mypy --strict (.typecheck.log):"; \
	if [ $$typed -eq 0 ]; then tail -n 1 .typecheck.log; else cat .typecheck.log; fi; \
	echo "== LOWEST_SMOKE on the lowest allowed versions (.test-lowest.log):"; \
	if [ $$lowest -eq 0 ]; then tail -n 1 .test-lowest.log; else cat .test-lowest.log; fi; \
	[ $$fast -eq 0 ] && [ $$typed -eq 0 ] && [ $$lowest -eq 0 ]
	$(BIN)/pytest -q -p no:cacheprovider -m slow -n 4 --durations=15

## make test-fast: the suite without subprocess and fault tests
test-fast: venv
	$(BIN)/pytest -q -m "not slow" -n 4 -p no:cacheprovider

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check aqueue
	$(BIN)/lint-imports

## make test-lowest: the fast suite with the lowest allowed version of every direct
## dependency (uv's lowest-direct resolution), so a floor in pyproject.toml cannot lie
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

## the web examples (docs/sync.md), each one command, on the embedded SQLite broker
.PHONY: example-fastapi example-flask
example-fastapi: venv
	$(BIN)/python -m examples.fastapi_app

example-flask: venv
	$(BIN)/python -m examples.flask_app

## make bench: the side-by-side benchmark (docs/benchmarks.md); peers live in .bench-venv
## make chaos: the fault and load run (docs/reliability.md, "Repeat it: make chaos"): per
## broker, workers drain tasks while workers are killed / frozen and private servers
## restarted / partitioned; prints lost / duplicated / recovery, fails if anything was lost.
## Not part of `make test`. make chaos BROKER=redis SEED=42 CHAOS_ARGS="--tasks 1000"
BROKER ?= all
SEED   ?=
CHAOS_ARGS ?=
.PHONY: chaos
chaos: venv
	$(BIN)/python -m benchmarks.chaos --broker $(BROKER) $(if $(SEED),--seed $(SEED)) $(CHAOS_ARGS)

.PHONY: bench
bench:
	$(PYTHON) -m benchmarks setup
	.bench-venv/bin/python -m benchmarks run
	.bench-venv/bin/python -m benchmarks.sync_send
	.bench-venv/bin/python -m benchmarks.signing_cost
	.bench-venv/bin/python -m benchmarks.scaling

## make bench-sync: only the blocking callers' send rates (docs/benchmarks.md, "Blocking callers")
.PHONY: bench-sync
bench-sync:
	$(PYTHON) -m benchmarks setup
	.bench-venv/bin/python -m benchmarks.sync_send

## make docs: the documentation site (mkdocs.yml, docs/) served on http://127.0.0.1:8000,
## rebuilt on every change; make docs-build: the same site built into site/ with --strict
## (a broken link or anchor, or a docstring mkdocstrings cannot read, fails it). `make test`
## builds it too (tests/docs/test_site.py). Everything is local: it builds offline
.PHONY: docs docs-build
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -a 127.0.0.1:8000

docs-build: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site
