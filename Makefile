# squish — set-up and checks.
#
#   make run     the reconciler, in the foreground, on desired/
#   make test    lint (ruff, mypy, import-linter), pytest, then the VM tier (make test-vm)
#   make test-lowest  the quick tests with every dependency at its lowest allowed version
#   make test-wheel   the built wheel and pipx install work from a folder outside the checkout
#   make bench   every bench/*.py against its anchors (bwrap, podman), then PNG charts
#                into docs/charts; `make bench QUICK=1`: fewer runs, a fast check
#   make lint | make venv | make clean | make whoami (debug: who runs, which python)
#
# squish is rootless-only. As root, every target except `clean` prepares the host
# (scripts/host-setup.sh), copies this checkout into a folder owned by the unprivileged
# account SQUISH_USER (default squish) and re-runs the same target there as that account
# (scripts/as-user.sh). As a normal user, targets run here, in ./.venv.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

USER_TARGETS := run test test-vm test-lowest test-wheel lint bench venv check whoami
.PHONY: help clean $(USER_TARGETS)

help:
	@sed -n '2,14s/^# \{0,1\}//p' $(firstword $(MAKEFILE_LIST))

ifeq ($(shell id -u),0)

# --- root: drop to the unprivileged account ----------------------------------------------
# `make test lint` as root makes one copy and one `make test lint` as the account.
ROOT_GOALS := $(filter $(USER_TARGETS),$(MAKECMDGOALS))
$(USER_TARGETS):
	@if [[ "$@" == "$(firstword $(ROOT_GOALS))" ]]; then
		exec bash scripts/as-user.sh $(ROOT_GOALS) $(if $(QUICK),QUICK=$(QUICK))
	fi

clean: clean-local
	@bash scripts/as-user.sh --remove-copy

else

# --- a normal user: the real work -----------------------------------------------------------
VENV := .venv
STAMP := $(VENV)/.squish-installed
# Override with `make PYTHON=/path/to/python3.x`; else the first usable of these.
PYTHON ?=
PYTHON_CANDIDATES := $(PYTHON) /usr/bin/python3 python3.13 python3.12 python3.11 python3

run: venv check
	@exec $(VENV)/bin/reconciler run desired/

test: venv check
	@rc=0
	$(MAKE) lint || rc=1
	echo "==> pytest"
	prc=0
	$(VENV)/bin/python -m pytest || prc=$$?
	if ((prc == 5)); then echo "make test: pytest collected no tests; that is a failure" >&2; fi
	if ((prc != 0)); then rc=1; fi
	echo "==> test-vm (cgroup v2 limits on a real kernel, under qemu)"
	bash scripts/vm-test.sh || rc=1
	if ((rc != 0)); then echo "make test: FAILED (lint, pytest and/or the VM tier; see above)" >&2; fi
	exit $$rc

test-vm: venv
	@exec bash scripts/vm-test.sh

test-lowest:
	@exec bash scripts/lowest-deps.sh

test-wheel:
	@exec bash scripts/wheel-check.sh

lint: venv
	@rc=0
	echo "==> ruff check ."; $(VENV)/bin/ruff check . || rc=1
	echo "==> mypy"; $(VENV)/bin/mypy || rc=1
	echo "==> lint-imports"; $(VENV)/bin/lint-imports || rc=1
	if ((rc != 0)); then echo "make lint: FAILED" >&2; fi
	exit $$rc

BENCH_STAMP := $(VENV)/.squish-bench-installed
bench: venv check $(BENCH_STAMP)
	@exec $(VENV)/bin/python bench/suite.py $(if $(QUICK),--quick)

# matplotlib for bench/charts.py: only `make bench` installs the bench extra.
$(BENCH_STAMP): $(STAMP)
	@echo "==> pip install -e '.[dev,bench]' into $(VENV)"
	$(VENV)/bin/python -m pip install --no-input --progress-bar off -q -e '.[dev,bench]'
	touch $@

venv: $(STAMP)

# Rebuilt only when pyproject.toml is newer than the stamp (or the venv is missing/broken).
$(STAMP): pyproject.toml
	@py=""
	for c in $(PYTHON_CANDIDATES); do
		p="$$(command -v "$$c" 2>/dev/null)" || continue
		if "$$p" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
			py="$$p"; break
		fi
	done
	if [[ -z "$$py" ]]; then
		echo "make venv: no python3 >= 3.11 with the venv module found." >&2
		echo "  fix: sudo apt-get install python3-venv   (or: make PYTHON=/path/to/python3.11+)" >&2
		exit 1
	fi
	if ! $(VENV)/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
		echo "==> creating $(VENV) with $$py ($$("$$py" -V))"
		rm -rf $(VENV)
		"$$py" -m venv $(VENV)
	fi
	echo "==> pip install -e '.[dev]' into $(VENV)"
	$(VENV)/bin/python -m pip install --no-input --progress-bar off -q -e '.[dev]'
	touch $@

# Prerequisites for running containers; prints the fix for each missing one. The list is
# reconciler/prereqs.py: an installed `reconciler` checks the same at its first use.
check: venv
	@exec $(VENV)/bin/python -m reconciler.prereqs --make

whoami: venv
	@echo "user:   $$(id)"
	echo "dir:    $$(pwd)"
	echo "python: $$($(VENV)/bin/python -c 'import sys; print(sys.executable, sys.version.split()[0])')"
	$(VENV)/bin/python -c 'import runtime, reconciler; print("import: runtime from", runtime.__file__)'
	env | grep -E '^(CI|SQUISH_[A-Za-z0-9_]*)=' | sort || true

clean: clean-local

endif

.PHONY: clean-local
clean-local:
	@rm -rf .venv .mypy_cache .ruff_cache .pytest_cache .import_linter_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
