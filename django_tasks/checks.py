"""System checks for ``settings.DJANGO_TASKS``: each names the key at fault."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from django.core.checks import CheckMessage, Error, Tags, Warning, register

from .conf import DEFAULTS, SETTINGS_NAME, tasks_settings
from .messages import accepted_content_types, check_compression, check_serializer

BOOLEAN_KEYS = (
    "TASK_PUBLISH_RETRY",
    "TASK_TRACK_STARTED",
    "TASK_ACKS_LATE",
    "TASK_ALWAYS_EAGER",
    "API_EXPOSE_ARGUMENTS",
    "API_EXPOSE_TRACEBACKS",
)
PICKLE_TYPE = "application/x-python-serialize"


def _error(key: str, msg: str, hint: str, id_: int) -> Error:
    return Error(f"{SETTINGS_NAME}[{key!r}]: {msg}", hint=hint, id=f"django_tasks.E{id_:03d}")


def _positive_integer(key: str, id_: int) -> list[CheckMessage]:
    value = getattr(tasks_settings, key)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return []
    return [_error(key, f"must be an integer >= 1, not {value!r}", "", id_)]


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from django.conf import settings

    errors: list[CheckMessage] = []
    user = getattr(settings, SETTINGS_NAME, None)
    if user is None:
        return errors
    if not isinstance(user, dict):
        return [
            Error(
                f"{SETTINGS_NAME} must be a dict, not {type(user).__name__}", id="django_tasks.E001"
            )
        ]
    tasks_settings.reload()
    for key in sorted(set(user) - set(DEFAULTS)):
        close = [k for k in DEFAULTS if k.replace("_", "") == key.upper().replace("_", "")]
        errors.append(
            _error(
                key,
                "unknown setting",
                f"Did you mean {close[0]!r}?"
                if close
                else f"Known settings: {', '.join(sorted(DEFAULTS))}.",
                1,
            )
        )
    errors.extend(_check_values())
    return errors


def _check_values() -> list[CheckMessage]:
    from .transports import transport_class_for

    s = tasks_settings
    errors: list[CheckMessage] = []
    url = s.BROKER_URL
    if not isinstance(url, str) or "://" not in url:
        errors.append(_error("BROKER_URL", f"{url!r} is not a URL", "Use 'django://'.", 2))
    else:
        try:
            transport = transport_class_for(url)
        except ValueError as exc:
            errors.append(_error("BROKER_URL", str(exc), "Use 'django://'.", 2))
        else:
            errors.extend(transport.check(url))  # each transport's own needs
    errors.extend(_check_database(url))
    if not isinstance(s.BROKER_TRANSPORT_OPTIONS, dict):
        errors.append(_error("BROKER_TRANSPORT_OPTIONS", "must be a dict", "", 18))
    if not isinstance(s.TASK_DEFAULT_QUEUE, str) or not s.TASK_DEFAULT_QUEUE:
        errors.append(_error("TASK_DEFAULT_QUEUE", "must be a non-empty string", "", 3))
    try:
        check_serializer(s.TASK_SERIALIZER, option="TASK_SERIALIZER")
    except (ValueError, TypeError) as exc:
        errors.append(_error("TASK_SERIALIZER", str(exc), "", 4))
    accept = s.ACCEPT_CONTENT
    if not isinstance(accept, list | tuple) or not all(isinstance(a, str) for a in accept):
        errors.append(
            _error(
                "ACCEPT_CONTENT", "must be a list of serializer names", "For example ['json'].", 5
            )
        )
    else:
        types = accepted_content_types(list(accept))
        unknown = [a for a in accept if not _known_type(accepted_content_types([a]))]
        if unknown:
            errors.append(
                _error(
                    "ACCEPT_CONTENT",
                    f"unknown serializer(s) {unknown}",
                    "Use 'json', 'msgpack' or 'pickle'.",
                    5,
                )
            )
        if PICKLE_TYPE in types:
            errors.append(
                Warning(
                    f"{SETTINGS_NAME}['ACCEPT_CONTENT'] allows pickle: a worker will run code "
                    f"chosen by anyone who can write a task message",
                    hint="Accept only 'json' unless every producer is trusted.",
                    id="django_tasks.W001",
                )
            )
        if isinstance(s.TASK_SERIALIZER, str):
            serializer_types = accepted_content_types([s.TASK_SERIALIZER])
            if not serializer_types & types:
                errors.append(
                    _error(
                        "TASK_SERIALIZER",
                        f"{s.TASK_SERIALIZER!r} is not in ACCEPT_CONTENT, so "
                        f"workers would reject every task",
                        "Add it to ACCEPT_CONTENT.",
                        6,
                    )
                )
    if s.TASK_COMPRESSION is not None:
        try:
            check_compression(s.TASK_COMPRESSION, option="TASK_COMPRESSION")
        except (ValueError, TypeError) as exc:
            errors.append(_error("TASK_COMPRESSION", str(exc), "", 7))
    for key in BOOLEAN_KEYS:
        if not isinstance(getattr(s, key), bool):
            errors.append(_error(key, f"must be True or False, not {getattr(s, key)!r}", "", 8))
    policy = s.TASK_PUBLISH_RETRY_POLICY
    try:
        from .options import check_retry_policy

        check_retry_policy("TASK_PUBLISH_RETRY_POLICY", policy)
    except (ValueError, TypeError) as exc:
        errors.append(_error("TASK_PUBLISH_RETRY_POLICY", str(exc).split(": ", 1)[-1], "", 9))
    errors.extend(_check_routes(s.TASK_ROUTES))
    expires = s.RESULT_EXPIRES
    if expires is not None and (
        not isinstance(expires, int | float) or isinstance(expires, bool) or expires < 0
    ):
        errors.append(
            _error("RESULT_EXPIRES", f"must be seconds (>= 0) or None, not {expires!r}", "", 11)
        )
    for key in ("WORKER_LEASE_SECONDS", "WORKER_POLL_INTERVAL"):
        value = getattr(s, key)
        if value is None and key == "WORKER_POLL_INTERVAL":
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            errors.append(
                _error(key, f"must be a positive number of seconds, not {value!r}", "", 12)
            )
    errors.extend(_positive_integer("WORKER_PREFETCH_MAX", 13))
    errors.extend(_positive_integer("BROKER_POOL_LIMIT", 20))
    errors.extend(_check_api())
    return errors


def _check_api() -> list[CheckMessage]:
    from django.utils.module_loading import import_string

    s = tasks_settings
    errors: list[CheckMessage] = []
    classes = s.raw("API_PERMISSION_CLASSES")  # the import strings, not the classes
    if not isinstance(classes, list | tuple) or not all(isinstance(c, str) for c in classes):
        errors.append(
            _error(
                "API_PERMISSION_CLASSES",
                "must be a list of import strings of DRF permission classes",
                "For example ['django_tasks.api.permissions.IsOwnerOrStaff'].",
                15,
            )
        )
    else:
        for path in classes:
            try:
                import_string(path)
            except ImportError as exc:
                errors.append(
                    _error("API_PERMISSION_CLASSES", f"cannot import {path!r}: {exc}", "", 15)
                )
    errors.extend(_positive_integer("API_PAGE_SIZE", 16))
    wait = s.API_MAX_WAIT
    if not isinstance(wait, int | float) or isinstance(wait, bool) or wait < 0:
        errors.append(
            _error("API_MAX_WAIT", f"must be a number of seconds (>= 0), not {wait!r}", "", 17)
        )
    return errors


def _check_database(url: Any) -> list[CheckMessage]:
    """The database transport's own needs of the database (without connecting)."""
    from django.db import connection

    if connection.vendor != "sqlite":
        return []
    # ``Database`` is the backend's DB-API module: every backend sets it; django-stubs lack it.
    database: ModuleType = connection.Database  # type: ignore[attr-defined]
    version = database.sqlite_version_info
    if version < (3, 35):
        return [
            _error(
                "BROKER_URL",
                f"the database transport needs SQLite 3.35 or later "
                f"(UPDATE … RETURNING); this Python has {database.sqlite_version}",
                "Use a newer Python or SQLite, or PostgreSQL.",
                14,
            )
        ]
    return []


def _known_type(types: set[str]) -> bool:
    from kombu.serialization import registry

    return all(t in registry._decoders for t in types)


def _check_routes(routes: Any) -> list[CheckMessage]:
    if not isinstance(routes, dict):
        return [_error("TASK_ROUTES", "must be a dict of task name -> {'queue': ...}", "", 10)]
    errors: list[CheckMessage] = []
    for name, route in routes.items():
        if not isinstance(route, dict) or set(route) - {"queue", "priority"}:
            errors.append(
                _error(
                    "TASK_ROUTES",
                    f"route for {name!r} must be a dict with "
                    f"'queue' and/or 'priority', not {route!r}",
                    "",
                    10,
                )
            )
        elif "queue" in route and (not isinstance(route["queue"], str) or not route["queue"]):
            errors.append(
                _error("TASK_ROUTES", f"queue for {name!r} must be a non-empty string", "", 10)
            )
    return errors
