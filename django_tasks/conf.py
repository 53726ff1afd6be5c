"""The ``DJANGO_TASKS`` settings object: defaults, lazy lookup, reload on change.

Use ``from django_tasks.conf import tasks_settings`` and read attributes, e.g.
``tasks_settings.TASK_DEFAULT_QUEUE``. Validation lives in :mod:`django_tasks.checks`.

Settings named in :data:`IMPORT_STRINGS` (as in DRF's ``APISettings``) are imported on first
access and cached until ``DJANGO_TASKS`` changes: ``tasks_settings.API_PERMISSION_CLASSES`` is
a list of classes. ``tasks_settings.raw(name)`` gives the configured value, not imported.
"""

from __future__ import annotations

import copy
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

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
    # How often an acks_late task whose worker died while running it is queued again
    # before it fails with WorkerLostError (a task that kills its process cannot loop).
    "WORKER_LOST_MAX_REDELIVERIES": 3,
    # Celery's worker_max_tasks_per_child and worker_max_memory_per_child (KiB): a prefork
    # child that reaches either is replaced after its current task; None: no limit.
    "WORKER_MAX_TASKS_PER_CHILD": None,
    "WORKER_MAX_MEMORY_PER_CHILD": None,
    # Periodic tasks (docs/periodic.md): Celery beat's entries, and the zone crontabs are
    # read in (None: TIME_ZONE).
    "BEAT_SCHEDULE": {},
    "BEAT_TIMEZONE": None,
    # The HTTP API (django_tasks.urls).
    "API_PERMISSION_CLASSES": ["django_tasks.api.permissions.IsOwnerOrStaff"],
    "API_EXPOSE_ARGUMENTS": False,  # show args/kwargs to the owner, not only to staff
    "API_EXPOSE_TRACEBACKS": False,  # show tracebacks to the owner, not only to staff
    "API_PAGE_SIZE": 50,
    "API_MAX_WAIT": 30,  # the cap on ?wait=N (seconds)
    "API_MAX_LONG_POLLS": 100,  # long-polls that may wait at once, per server process
    # Operations: a scraper's bearer token for tasks/metrics (None: the API's permissions only).
    "METRICS_TOKEN": None,
}

#: Settings given as a dotted import string, or a list of them, and read as what they name.
IMPORT_STRINGS: tuple[str, ...] = ("API_PERMISSION_CLASSES",)


def import_from_string(value: Any, setting_name: str) -> Any:
    """The object that the import string ``value`` names; ImportError naming the setting."""
    if not isinstance(value, str):
        raise ImportError(
            f"Could not import {value!r} for {SETTINGS_NAME} setting {setting_name!r}: "
            f"not an import string."
        )
    try:
        return import_string(value)
    except ImportError as exc:
        raise ImportError(
            f"Could not import {value!r} for {SETTINGS_NAME} setting {setting_name!r}. "
            f"{type(exc).__name__}: {exc}."
        ) from exc


def perform_import(value: Any, setting_name: str) -> Any:
    """``value`` imported: a string as one object, a list or tuple as a list; None as is."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return [import_from_string(item, setting_name) for item in value]
    return import_from_string(value, setting_name)


#: The shortest METRICS_TOKEN accepted: a guessable token would open the metrics.
MIN_METRICS_TOKEN = 16


def metrics_token_problem(token: Any) -> str | None:
    """What is wrong with ``METRICS_TOKEN`` ``token`` (None: nothing; None is no token)."""
    if token is None:
        return None
    if not isinstance(token, str):
        return f"must be None or a string, not {type(token).__name__}"
    if len(token) < MIN_METRICS_TOKEN:
        return f"must be at least {MIN_METRICS_TOKEN} characters long, not {len(token)}"
    if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
        return "must be printable ASCII without spaces (it is sent in an HTTP header)"
    return None


class TasksSettings:
    """Attribute access to ``settings.DJANGO_TASKS`` merged over :data:`DEFAULTS`.

    A setting in ``import_strings`` reads as the object(s) its import string(s) name, imported
    once and cached until :meth:`reload` (called when ``DJANGO_TASKS`` changes).
    """

    def __init__(self, import_strings: tuple[str, ...] = IMPORT_STRINGS) -> None:
        self.import_strings = import_strings
        self._cache: dict[str, Any] = {}

    @property
    def user_settings(self) -> dict[str, Any]:
        return getattr(settings, SETTINGS_NAME, None) or {}

    def raw(self, name: str) -> Any:
        """The configured value of setting ``name`` (an import string is not imported)."""
        if name.startswith("_") or name not in DEFAULTS:
            raise AttributeError(f"Invalid django_tasks setting: {name!r}")
        return self.user_settings.get(name, copy.deepcopy(DEFAULTS[name]))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in DEFAULTS:  # and no recursion on self._cache
            raise AttributeError(f"Invalid django_tasks setting: {name!r}")
        try:
            return self._cache[name]
        except KeyError:
            value = self.raw(name)
            if name in self.import_strings:
                value = perform_import(value, name)  # on failure, nothing is cached
            self._cache[name] = value
            return value

    def reload(self) -> None:
        self._cache.clear()


tasks_settings = TasksSettings()


def _reload_on_change(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTINGS_NAME:
        tasks_settings.reload()


setting_changed.connect(_reload_on_change)
