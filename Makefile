# `make demo` and `make test` need only python3 (3.11+) and, for the PostgreSQL half of the
# tests, a PostgreSQL server (POSTGRES_URL; skipped with a reason when absent, except in CI).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/django_tasks
MYSQL_URL ?= mysql://root@127.0.0.1:3306/django_tasks
INSTALLED := $(VENV)/.installed
# Another Django for the same run, e.g. DJANGO='django>=6.0,<7' (with PYTHON=python3.12).
DJANGO ?=

.PHONY: demo test test-sqlite test-postgres test-mysql lint format bench clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' $(if $(DJANGO),'$(DJANGO)')
	touch $(INSTALLED)

## demo: set up SQLite, send sample tasks, run a worker until they finish, print the results
demo: $(INSTALLED)
	$(BIN)/python manage.py migrate --noinput -v0
	$(BIN)/python manage.py demo

## test: the whole suite, on SQLite and then on PostgreSQL
test: test-sqlite test-postgres

test-sqlite: $(INSTALLED)
	DATABASE_URL=sqlite:///$(CURDIR)/.test-db.sqlite3 $(BIN)/python -m pytest $(PYTEST_ARGS)

test-postgres: $(INSTALLED)
	DATABASE_URL=$(POSTGRES_URL) $(BIN)/python -m pytest $(PYTEST_ARGS)

## test-mysql: the suite on MySQL/MariaDB (needs the client headers: libmariadb-dev)
test-mysql: $(INSTALLED)
	$(BIN)/python -m pip install --quiet -e '.[mysql]'
	DATABASE_URL=$(MYSQL_URL) $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python manage.py makemigrations --check --dry-run -v0

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## bench: throughput and latency on SQLite and PostgreSQL (see bench/README.md)
bench: $(INSTALLED)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .test-db.sqlite3* db.sqlite3*
