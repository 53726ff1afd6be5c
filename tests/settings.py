"""Test settings: the demo project plus a test app; a file-based SQLite test database so
that worker subprocesses can share it."""

import os
from pathlib import Path

from testproject.settings import *  # noqa: F403
from testproject.settings import BASE_DIR, DATABASES, INSTALLED_APPS

# Apps a test writes on the fly (e.g. for runworker --reload), comma-separated, on PYTHONPATH.
EXTRA_APPS = [a for a in os.environ.get("DJANGO_TASKS_TEST_EXTRA_APPS", "").split(",") if a]
INSTALLED_APPS = [*INSTALLED_APPS, "tests.taskapp", *EXTRA_APPS]

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Beside the configured database and named after it, so that runs against different
    # DATABASE_URLs (e.g. in parallel) never share a test database.
    configured = Path(DATABASES["default"]["NAME"] or BASE_DIR / "db.sqlite3")
    if not configured.is_absolute():
        configured = BASE_DIR / configured
    test_name = configured.with_name(f"{configured.stem}-pytest.sqlite3")
    DATABASES["default"]["TEST"] = {"NAME": str(test_name)}

# Extra PostgreSQL OPTIONS as JSON, e.g. '{"server_side_binding": true, "prepare_threshold": 2}'
# to run the suite with server-side binding and prepared statements (make
# test-postgres-server-binding). Worker subprocesses inherit it with the environment; a test
# that starts a worker on a SQLite file does not get it.
db_options = os.environ.get("DJANGO_TASKS_TEST_DB_OPTIONS")
if db_options and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    import json

    DATABASES["default"].setdefault("OPTIONS", {}).update(json.loads(db_options))

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

import django  # noqa: E402

if django.VERSION >= (6, 0):
    # Django's task framework on this app's worker (tests/test_django_backend.py). An empty
    # QUEUES lets a task name any queue.
    TASKS = {"default": {"BACKEND": "django_tasks.backend.TasksBackend", "QUEUES": []}}
