# `make demo` and `make test` need only python3 (3.11+) and, for the PostgreSQL half of the
# tests, a PostgreSQL server (POSTGRES_URL; skipped with a reason when absent, except in CI).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/django_tasks
MYSQL_URL ?= mysql://root@127.0.0.1:3306/django_tasks
REDIS_URL ?= redis://127.0.0.1:6379/15
RABBITMQ_URL ?= amqp://guest:guest@127.0.0.1:5672//
INSTALLED := $(VENV)/.installed
# Another Django for the same run, e.g. DJANGO='django>=6.0,<7' (with PYTHON=python3.12).
DJANGO ?=

.PHONY: demo test test-sqlite test-postgres test-postgres-server-binding test-redis test-rabbitmq test-mysql lint docs format bench bench-brokers clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' $(if $(DJANGO),'$(DJANGO)')
	touch $(INSTALLED)

## demo: set up SQLite, send sample tasks, run a worker until they finish, print the results
demo: $(INSTALLED)
	$(BIN)/python manage.py migrate --noinput -v0
	$(BIN)/python manage.py demo

## test: the whole suite on four transports: the database transport on SQLite and on
## PostgreSQL, then Redis and RabbitMQ (results in PostgreSQL)
test: test-sqlite test-postgres test-redis test-rabbitmq

test-sqlite: $(INSTALLED)
	DATABASE_URL=sqlite:///$(CURDIR)/.test-db.sqlite3 $(BIN)/python -m pytest $(PYTEST_ARGS)

test-postgres: $(INSTALLED)
	DATABASE_URL=$(POSTGRES_URL) $(BIN)/python -m pytest $(PYTEST_ARGS)

test-redis: $(INSTALLED)
	DATABASE_URL=$(POSTGRES_URL) DJANGO_TASKS_BROKER_URL=$(REDIS_URL) $(BIN)/python -m pytest $(PYTEST_ARGS)

test-rabbitmq: $(INSTALLED)
	DATABASE_URL=$(POSTGRES_URL) DJANGO_TASKS_BROKER_URL=$(RABBITMQ_URL) $(BIN)/python -m pytest $(PYTEST_ARGS)

## test-postgres-server-binding: the PostgreSQL suite with Django's server-side binding and
## psycopg's prepared statements (OPTIONS server_side_binding, prepare_threshold)
test-postgres-server-binding: $(INSTALLED)
	DATABASE_URL=$(POSTGRES_URL) DJANGO_TASKS_TEST_DB_OPTIONS='{"server_side_binding": true, "prepare_threshold": 2}' $(BIN)/python -m pytest $(PYTEST_ARGS)

## test-mysql: the suite on MySQL/MariaDB (needs the client headers: libmariadb-dev)
test-mysql: $(INSTALLED)
	$(BIN)/python -m pip install --quiet -e '.[mysql]'
	DATABASE_URL=$(MYSQL_URL) $(BIN)/python -m pytest $(PYTEST_ARGS)

## lint: ruff, the import layers (import-linter), types (mypy) and missing migrations
lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	DATABASE_URL=sqlite:///$(CURDIR)/.mypy-db.sqlite3 $(BIN)/mypy
	$(BIN)/python manage.py makemigrations --check --dry-run -v0

## docs: the Sphinx site (MyST + furo) from docs/*.md, warnings as errors, in docs/_build/html
docs: $(INSTALLED)
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## bench: throughput and latency on SQLite, PostgreSQL, Redis and RabbitMQ, the brokers next to
## Celery + django-celery-results in bench/.venv-celery (see bench/README.md)
bench: $(INSTALLED)
	$(BIN)/python bench/run.py

## bench-brokers: the Redis and RabbitMQ columns and their Celery reference only
bench-brokers: $(INSTALLED)
	$(BIN)/python bench/run.py --only redis,rabbitmq

clean:
	rm -rf $(VENV) bench/.venv-celery docs/_build *.egg-info .pytest_cache .ruff_cache .mypy_cache .test-db.sqlite3* db.sqlite3*
