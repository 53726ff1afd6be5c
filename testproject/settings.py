"""Settings of the demo project, read from the environment with django-environ.

``DATABASE_URL`` (default: SQLite in ``db.sqlite3`` beside ``manage.py``) and
``DJANGO_TASKS_BROKER_URL`` (default: ``django://``, the database transport) and
``DJANGO_TASKS_TASK_DEFAULT_QUEUE`` (default: ``default``; the benchmark uses its own) and
``DJANGO_TASKS_BEAT_SCHEDULE`` (default: none; JSON, see :func:`beat_schedule`).
"""

import json
from pathlib import Path

import environ

from django_tasks.schedules import crontab

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

SECRET_KEY = env("DJANGO_SECRET_KEY", default="django-insecure-demo-only-do-not-deploy")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_tasks",
    "testproject.demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "testproject.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = "testproject.wsgi.application"

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers (result pollers, the admin) work while a worker writes; IMMEDIATE
    # takes the write lock up front so concurrent writers wait instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"init_command": "PRAGMA journal_mode=WAL;", "transaction_mode": "IMMEDIATE", "timeout": 30}
    )


def beat_schedule(raw: str) -> dict:
    """``DJANGO_TASKS_BEAT_SCHEDULE``: JSON entries with ``"every": seconds`` or ``"crontab":
    {fields}`` in place of ``"schedule"`` (the beat benchmark and tests set it)."""
    entries = {}
    for name, entry in json.loads(raw or "{}").items():
        entry = dict(entry)
        if "crontab" in entry:
            entry["schedule"] = crontab(**entry.pop("crontab"))
        elif "every" in entry:
            entry["schedule"] = entry.pop("every")
        entries[name] = entry
    return entries


DJANGO_TASKS = {
    "BROKER_URL": env("DJANGO_TASKS_BROKER_URL", default="django://"),
    "WORKER_LEASE_SECONDS": env.float("DJANGO_TASKS_WORKER_LEASE_SECONDS", default=30.0),
    "TASK_DEFAULT_QUEUE": env("DJANGO_TASKS_TASK_DEFAULT_QUEUE", default="default"),
    "BEAT_SCHEDULE": beat_schedule(env("DJANGO_TASKS_BEAT_SCHEDULE", default="")),
}

AUTH_PASSWORD_VALIDATORS: list[dict[str, str]] = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"worker": {"format": "[%(asctime)s: %(levelname)s/%(process)d] %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "worker"}},
    "loggers": {"django_tasks": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}

# The demo page needs a signed-in user; the admin's login page serves.
LOGIN_URL = "admin:login"
