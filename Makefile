# One entry point for every routine task. Each target works from a clean clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# A working python3.13: on PATH first, then pyenv's installs.
PYTHON ?= $(shell for p in python3.13 $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.13.*/bin/python3.13 2>/dev/null | sort -V -r); do \
	"$$p" -c 'import sys; assert sys.version_info[:2] == (3, 13)' >/dev/null 2>&1 && { command -v "$$p"; break; }; done)
UV ?= $(shell command -v uv 2>/dev/null)
VENV := .venv
BIN := $(VENV)/bin
# Settings come from the environment, then from ENV_FILE if it is set, else from
# src/core/.env, which every target creates on first use (scripts/new-env-file.sh). Every
# process (manage.py, Celery, gunicorn, pytest) finds that file by itself, so the
# commands the README gives work outside make too.
SETTINGS_FILE := $(if $(ENV_FILE),,src/core/.env)
MANAGE := $(BIN)/python src/manage.py
MODE ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo native)
PYTEST_ARGS ?=
# Arguments for bench/run.py, e.g. BENCH_ARGS="--only throughput --batch-sizes 1000,5000".
BENCH_ARGS ?=
PROMETHEUS_RULES := docker/prometheus/rules/event_log.yml docker/prometheus/rules/verify.yml
# --strict makes a dependency that cannot be audited an error (CI on GitHub sets it).
AUDIT_FLAGS ?=

.PHONY: help venv tools services test test-faults lint fmt audit run install shell migrations migrate \
	superuser clickhouse-migrate relay status bench loadtest docs-check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

venv: $(BIN)/.synced $(SETTINGS_FILE) tools ## create or update .venv from uv.lock, then `make tools`

tools: ## install promtool (Debian's prometheus package) when missing and we may; says how otherwise
	@scripts/ensure-tools.sh

# The local defaults with this checkout's own database, queue and cache prefix, so two
# clones run two separate stacks. Never overwritten: once created it is the operator's.
src/core/.env:
	@scripts/new-env-file.sh $@

$(BIN)/.synced: pyproject.toml uv.lock
	@test -n "$(PYTHON)" || { echo "error: Python 3.13 not found (install it, e.g. 'pyenv install 3.13')" >&2; exit 1; }
	@if [ -z "$(UV)" ] && ! "$(PYTHON)" -m uv --version >/dev/null 2>&1; then \
		echo "installing uv with pip"; "$(PYTHON)" -m pip install --quiet uv; fi
	$(if $(UV),$(UV),"$(PYTHON)" -m uv) sync --locked --python "$(PYTHON)"
	@touch $@

services: venv ## make sure DATABASE_URL, REDIS_URL and CELERY_BROKER_URL answer (starts local ones)
	@scripts/ensure-services.sh

test: venv services ## run the whole test suite (fault-injection included)
	$(BIN)/pytest $(PYTEST_ARGS)

test-faults: venv services ## run only the fault-injection suite
	$(BIN)/pytest -m faults $(PYTEST_ARGS)

lint: venv ## ruff, format check, mypy, event catalogue and JSON Schemas, Compose/Dockerfile/workflow checks
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy src
	$(MANAGE) event_log_catalogue --check
	$(BIN)/check-jsonschema --check-metaschema docs/events/*.json
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BIN)/check-jsonschema --builtin-schema vendor.dependabot .github/dependabot.yml
	$(BIN)/actionlint .github/workflows/*.yml
	$(BIN)/hadolint Dockerfile
	@if command -v promtool >/dev/null 2>&1; then promtool check rules $(PROMETHEUS_RULES); \
	elif [ "$${CI:-}" = true ]; then echo "error: promtool is missing (make tools)" >&2; exit 1; \
	else echo "skipped 'promtool check rules': promtool is missing (make tools, as root)"; fi

fmt: venv ## format and autofix
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

audit: venv ## known vulnerabilities in the locked dependencies
	$(if $(UV),$(UV),"$(PYTHON)" -m uv) export --locked --no-hashes --no-emit-project --format requirements-txt > $(VENV)/requirements.audit.txt
	$(BIN)/pip-audit $(AUDIT_FLAGS) --disable-pip --no-deps --progress-spinner off -r $(VENV)/requirements.audit.txt

run: ## the whole stack in the foreground (MODE=docker|native; default: docker if an engine answers)
ifeq ($(MODE),docker)
	docker compose up --build
else
	@$(MAKE) --no-print-directory venv services
	$(MANAGE) ensure_database
	$(MANAGE) migrate --noinput
	$(MANAGE) clickhouse_migrate
	@mkdir -p var
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start -f Procfile
endif

install: venv services ## database, migrate, ClickHouse DDL, superuser (writes no file into the repository)
	$(MANAGE) ensure_database
	$(MANAGE) migrate --noinput
	$(MANAGE) clickhouse_migrate
	@$(MAKE) --no-print-directory superuser

shell: venv ## Django shell
	$(MANAGE) shell

migrations: venv ## make Django migrations
	$(MANAGE) makemigrations

migrate: venv services ## apply Django and ClickHouse migrations
	$(MANAGE) ensure_database
	$(MANAGE) migrate --noinput
	$(MANAGE) clickhouse_migrate

superuser: venv ## create a superuser: without prompts from DJANGO_SUPERUSER_* when DJANGO_SUPERUSER_EMAIL is set
	$(if $(DJANGO_SUPERUSER_EMAIL),$(MANAGE) ensure_superuser,$(MANAGE) createsuperuser)

relay: venv ## run one relay in the foreground until Ctrl-C
	$(MANAGE) relay_events

status: venv ## event log status as JSON
	$(MANAGE) event_log_status --json

bench: venv services ## benchmarks (not part of make test); results in bench/results/
	$(BIN)/python bench/run.py $(BENCH_ARGS)

loadtest: venv services ## the deployed service under HTTP load and a ClickHouse outage (bench section 7)
	$(BIN)/python bench/run.py --only load --database die_hard_loadtest --clickhouse-under run

docs-check: venv ## the README's make targets, variables and commands are real
	$(BIN)/pytest -q -p no:cacheprovider src/core/docs_tests.py

clean: ## remove the virtualenv, caches and local data
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
