"""The ``DJANGO_TASKS`` settings object: defaults, lazy lookup, reload on change.

Use ``from django_tasks.conf import tasks_settings`` and read attributes, e.g.
``tasks_settings.TASK_DEFAULT_QUEUE``. Validation lives in :mod:`django_tasks.checks`.
"""

from __future__ import annotations

import copy
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

SETTINGS_NAME = "DJANGO_TASKS"

DEFAULTS: dict[str, Any] = {
    # The contract's settings (docs/configuration.md).
    "BROKER_URL": "django://",
    "TASK_DEFAULT_QUEUE": "default",
    "TASK_SERIALIZER": "json",
    "ACCEPT_CONTENT": ["json"],
    "TASK_COMPRESSION": None,
    "TASK_PUBLISH_RETRY": True,
    "TASK_PUBLISH_RETRY_POLICY": {
        "max_retries": 3,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.2,
    },
    "TASK_TRACK_STARTED": False,
    "TASK_ACKS_LATE": False,
    "TASK_ALWAYS_EAGER": False,
    "TASK_ROUTES": {},
    # kombu's transport_options for broker URLs (e.g. Redis's visibility_timeout).
    "BROKER_TRANSPORT_OPTIONS": {},
    # Publishing connections per process and broker (Celery's broker_pool_limit).
    "BROKER_POOL_LIMIT": 10,
    "RESULT_EXPIRES": 86400,
    # Worker tuning, beyond Celery's names.
    "WORKER_LEASE_SECONDS": 30.0,
    # None: 1 s where LISTEN/NOTIFY wakes workers (PostgreSQL), 0.1 s elsewhere.
    "WORKER_POLL_INTERVAL": None,
    "WORKER_PREFETCH_MAX": 64,
    # The HTTP API (django_tasks.urls).
    "API_PERMISSION_CLASSES": ["django_tasks.api.permissions.IsOwnerOrStaff"],
    "API_EXPOSE_ARGUMENTS": False,  # show args/kwargs to the owner, not only to staff
    "API_EXPOSE_TRACEBACKS": False,  # show tracebacks to the owner, not only to staff
    "API_PAGE_SIZE": 50,
    "API_MAX_WAIT": 30,  # the cap on ?wait=N (seconds)
}


class TasksSettings:
    """Attribute access to ``settings.DJANGO_TASKS`` merged over :data:`DEFAULTS`."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    @property
    def user_settings(self) -> dict[str, Any]:
        return getattr(settings, SETTINGS_NAME, None) or {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in DEFAULTS:
            raise AttributeError(f"Invalid django_tasks setting: {name!r}")
        try:
            return self._cache[name]
        except KeyError:
            value = self.user_settings.get(name, copy.deepcopy(DEFAULTS[name]))
            self._cache[name] = value
            return value

    def reload(self) -> None:
        self._cache.clear()


tasks_settings = TasksSettings()


def _reload_on_change(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTINGS_NAME:
        tasks_settings.reload()


setting_changed.connect(_reload_on_change)
