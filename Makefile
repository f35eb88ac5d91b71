# The README's two commands are `make demo` and `make test`; each bootstraps what it needs.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-all lint bench fault-large soak

setup:
	@./scripts/bootstrap.sh

demo: setup
	$(BIN)/riskstream demo

test:
	@./scripts/bootstrap.sh --test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

test-all:
	@./scripts/bootstrap.sh --test
	$(BIN)/pytest -m ''

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

bench: setup
	$(BIN)/python -m bench

# kill -9 five-plus times over 20,000 proposals (tests/fault/test_crash_recovery.py); minutes
fault-large:
	@./scripts/bootstrap.sh --test
	$(BIN)/pytest -m fault_large -s tests/fault/test_crash_recovery.py

# 30 minutes at 20k ticks/s and 500 proposals/s: RSS and p99 per minute (bench/soak.py),
# results in bench/results/soak.*; SOAK_MINUTES=5 make soak for a shorter one
SOAK_MINUTES ?= 30
soak: setup
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES) --tick-rate 20000 --proposal-rate 500
