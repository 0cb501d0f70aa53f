# MilkGuard. `make run` and `make test` do all set-up on a fresh Debian machine: the Debian
# packages (scripts/system-deps.sh), the virtual environment in .venv, and the pinned Python
# packages (constraints.txt).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run test check lint format lock clean

run: $(STAMP)
	@scripts/system-deps.sh run
	$(BIN)/milkguard run

test: $(STAMP)
	@scripts/system-deps.sh test
	$(BIN)/pytest $(PYTEST_ARGS)

# What CI runs: lint, types, then the whole test suite.
check: lint test

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

$(STAMP): pyproject.toml constraints.txt
	@scripts/system-deps.sh run
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

# Re-resolve the newest allowed versions into constraints.txt (then run `make check`).
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e '.[all,dev]'
	.venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^-e' > constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache var
