"""Django settings of the Celery reference: django-celery-results on PostgreSQL, nothing else.

Read from the environment that ``bench/run.py`` sets: ``BENCH_DATABASE_URL`` (a scratch
PostgreSQL database), ``BENCH_BROKER_URL`` and ``BENCH_CELERY_VARIANT`` (``default`` or
``reused``).
"""

import os
from urllib.parse import unquote, urlsplit

_db = urlsplit(os.environ["BENCH_DATABASE_URL"])
VARIANT = os.environ.get("BENCH_CELERY_VARIANT", "default")

SECRET_KEY = "celery-reference-bench-only"
INSTALLED_APPS = ["django_celery_results"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db.path.lstrip("/"),
        "USER": unquote(_db.username or ""),
        "PASSWORD": unquote(_db.password or ""),
        "HOST": _db.hostname or "",
        "PORT": str(_db.port or ""),
    }
}

CELERY_BROKER_URL = os.environ["BENCH_BROKER_URL"]
CELERY_RESULT_BACKEND = "django-db"
CELERY_TASK_DEFAULT_QUEUE = "bench_celery"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
if VARIANT == "reused":
    # Celery's Django fixup closes every database connection before and after each task
    # (celery.fixups.django.DjangoWorkerFixup.close_database). CELERY_DB_REUSE_MAX, the
    # documented knob, makes it close them only every that many tasks instead;
    # CONN_MAX_AGE alone does not help, the fixup calls connection.close() regardless.
    CELERY_DB_REUSE_MAX = 100_000
