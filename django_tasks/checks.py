"""System checks for ``settings.DJANGO_TASKS``: each names the key at fault."""

from __future__ import annotations

import difflib
import re
from types import ModuleType
from typing import Any

from django.core.checks import CheckMessage, Error, Tags, Warning, register

from .conf import DEFAULTS, SETTINGS_NAME, metrics_token_problem, tasks_settings
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

#: The longest worker lease: a day (a dead worker's tasks wait this long to be recovered).
MAX_LEASE_SECONDS = 86400
#: The longest long-poll of the HTTP API: each waiting request holds a server thread.
MAX_API_WAIT = 300
#: Upper bounds of the integer settings: far above any sane value, well below overflows.
INTEGER_BOUNDS = {
    "WORKER_PREFETCH_MAX": (1, 10_000),
    "BROKER_POOL_LIMIT": (1, 1_000),
    "API_PAGE_SIZE": (1, 1_000),
    # 0 turns long-polling off (every ?wait= answers at once with 304 or 429).
    "API_MAX_LONG_POLLS": (0, 10_000),
}


def _error(key: str, msg: str, hint: str, id_: int) -> Error:
    return Error(f"{SETTINGS_NAME}[{key!r}]: {msg}", hint=hint, id=f"django_tasks.E{id_:03d}")


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bounded_integer(key: str, id_: int) -> list[CheckMessage]:
    low, high = INTEGER_BOUNDS[key]
    value = getattr(tasks_settings, key)
    if _is_integer(value) and low <= value <= high:
        return []
    return [_error(key, f"must be an integer from {low} to {high}, not {value!r}", "", id_)]


def _seconds(
    key: str, id_: int, *, low: float, high: float, above_low: bool = False, none: bool = False
) -> list[CheckMessage]:
    """An error unless ``key`` is a finite number of seconds from ``low`` (excluded with
    ``above_low``) to ``high`` (or None, with ``none``)."""
    from .options import is_finite

    value = getattr(tasks_settings, key)
    if value is None and none:
        return []
    if is_finite(value) and (value > low if above_low else value >= low) and value <= high:
        return []
    bound = f"above {low:g}, at most" if above_low else f"from {low:g} to"
    return [
        _error(
            key,
            f"must be {'None or ' if none else ''}a finite number of seconds {bound} "
            f"{_seconds_text(high)}, not {value!r}",
            "",
            id_,
        )
    ]


def _seconds_text(seconds: float) -> str:
    from .options import MAX_SECONDS

    text = str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"
    return f"{text} (100 years)" if seconds == MAX_SECONDS else text


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from django.conf import settings

    errors: list[CheckMessage] = []
    user = getattr(settings, SETTINGS_NAME, None)
    if hasattr(settings, "DJANGO_TASK"):
        errors.append(
            Warning(
                "settings.DJANGO_TASK is set, but this app reads settings.DJANGO_TASKS",
                hint="Rename DJANGO_TASK to DJANGO_TASKS (plural).",
                id="django_tasks.W002",
            )
        )
    if user is None:
        return errors
    if not isinstance(user, dict):
        return [
            Error(
                f"{SETTINGS_NAME} must be a dict, not {type(user).__name__}", id="django_tasks.E001"
            )
        ]
    tasks_settings.reload()
    for key in sorted(set(user) - set(DEFAULTS), key=repr):
        close = _close_keys(key)
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


def _close_keys(key: Any) -> list[str]:
    """The known settings ``key`` was probably meant to be: the same but for case and
    underscores first, then ``difflib``'s close matches (``BROKER_ULR`` -> ``BROKER_URL``)."""
    if not isinstance(key, str):
        return []
    same = [k for k in DEFAULTS if k.replace("_", "") == key.upper().replace("_", "")]
    return same or difflib.get_close_matches(key.upper(), list(DEFAULTS), n=1, cutoff=0.75)


#: ``redis//host``, ``amqp:/host``, ``django:``: a scheme whose ``://`` lost a character.
_MISTYPED_URL = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*)(?::/?|//)(?P<rest>(?!/).*)$", re.I)


def _url_hint(url: Any) -> str:
    """``"Did you mean 'redis://host'?"`` for a URL whose ``://`` is mistyped."""
    if isinstance(url, str):
        match = _MISTYPED_URL.match(url)
        if match:
            return f"Did you mean {match['scheme'] + '://' + match['rest']!r}?"
    return "Use 'django://' or a kombu URL such as 'redis://host'."


def _check_values() -> list[CheckMessage]:
    from .transports import transport_class_for

    s = tasks_settings
    errors: list[CheckMessage] = []
    url = s.BROKER_URL
    if not isinstance(url, str) or "://" not in url:
        errors.append(_error("BROKER_URL", f"{url!r} is not a URL", _url_hint(url), 2))
    else:
        try:
            transport = transport_class_for(url)
        except ValueError as exc:
            errors.append(_error("BROKER_URL", str(exc), "Use 'django://'.", 2))
        else:
            errors.extend(transport.check(url))  # each transport's own needs
    errors.extend(_check_database(url))
    errors.extend(_check_beat())
    if not isinstance(s.BROKER_TRANSPORT_OPTIONS, dict):
        errors.append(_error("BROKER_TRANSPORT_OPTIONS", "must be a dict", "", 18))
    queue_problem = _queue_problem(s.TASK_DEFAULT_QUEUE)
    if queue_problem is not None:
        errors.append(_error("TASK_DEFAULT_QUEUE", queue_problem, QUEUE_HINT, 3))
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
    from .options import MAX_SECONDS

    errors.extend(_seconds("RESULT_EXPIRES", 11, low=0, high=MAX_SECONDS, none=True))
    errors.extend(_check_worker())
    errors.extend(_bounded_integer("WORKER_PREFETCH_MAX", 13))
    errors.extend(_bounded_integer("BROKER_POOL_LIMIT", 20))
    errors.extend(_check_api())
    errors.extend(_check_metrics_token(s.METRICS_TOKEN))
    return errors


def _check_metrics_token(token: Any) -> list[CheckMessage]:
    problem = metrics_token_problem(token)
    if problem is None:
        return []
    hint = "For example secrets.token_urlsafe(32), read from the environment."
    return [_error("METRICS_TOKEN", f"{problem}; the metrics view refuses every token", hint, 32)]


def _check_worker() -> list[CheckMessage]:
    from .options import is_finite

    s = tasks_settings
    errors = _seconds("WORKER_LEASE_SECONDS", 12, low=0, high=MAX_LEASE_SECONDS, above_low=True)
    # A poll longer than the lease would let leases run out between two looks.
    if errors:
        high, bound = MAX_LEASE_SECONDS, f"{MAX_LEASE_SECONDS}"
    else:
        high = s.WORKER_LEASE_SECONDS
        bound = f"WORKER_LEASE_SECONDS ({_seconds_text(high)})"
    poll = s.WORKER_POLL_INTERVAL
    if poll is not None and not (is_finite(poll) and 0 < poll <= high):
        errors.append(
            _error(
                "WORKER_POLL_INTERVAL",
                f"must be None or a finite number of seconds above 0, at most {bound}, "
                f"not {poll!r}",
                "",
                12,
            )
        )
    redeliveries = s.WORKER_LOST_MAX_REDELIVERIES
    if not (_is_integer(redeliveries) and redeliveries >= 0):
        errors.append(
            _error(
                "WORKER_LOST_MAX_REDELIVERIES",
                f"must be an integer >= 0, not {redeliveries!r}",
                "0 fails a task lost with its worker at once, even with acks_late.",
                21,
            )
        )
    for key, id_, unit in (
        ("WORKER_MAX_TASKS_PER_CHILD", 40, "tasks"),
        ("WORKER_MAX_MEMORY_PER_CHILD", 41, "KiB of resident memory"),
    ):
        value = getattr(s, key)
        if value is not None and not (_is_integer(value) and value >= 1):
            errors.append(
                _error(key, f"must be None or an integer >= 1 ({unit}), not {value!r}", "", id_)
            )
    return errors


def _check_api() -> list[CheckMessage]:
    from django.utils.module_loading import import_string
    from rest_framework.permissions import BasePermission

    s = tasks_settings
    errors: list[CheckMessage] = []
    hint = "For example ['django_tasks.api.permissions.IsOwnerOrStaff']."
    classes = s.raw("API_PERMISSION_CLASSES")  # the import strings, not the classes
    if not isinstance(classes, list | tuple) or not all(isinstance(c, str) for c in classes):
        errors.append(
            _error(
                "API_PERMISSION_CLASSES",
                "must be a list of import strings of DRF permission classes",
                hint,
                15,
            )
        )
    elif not classes:
        errors.append(
            _error(
                "API_PERMISSION_CLASSES",
                "must not be empty: an empty list would let anyone read and revoke every task",
                "To open the API on purpose, name rest_framework.permissions.AllowAny. " + hint,
                15,
            )
        )
    else:
        for path in classes:
            try:
                imported = import_string(path)
            except ImportError as exc:
                errors.append(
                    _error("API_PERMISSION_CLASSES", f"cannot import {path!r}: {exc}", hint, 15)
                )
                continue
            if not (isinstance(imported, type) and issubclass(imported, BasePermission)):
                errors.append(
                    _error(
                        "API_PERMISSION_CLASSES",
                        f"{path!r} is not a DRF permission class (a subclass of "
                        f"rest_framework.permissions.BasePermission)",
                        hint,
                        15,
                    )
                )
    errors.extend(_bounded_integer("API_PAGE_SIZE", 16))
    errors.extend(_bounded_integer("API_MAX_LONG_POLLS", 22))
    errors.extend(_seconds("API_MAX_WAIT", 17, low=0, high=MAX_API_WAIT))
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


QUEUE_HINT = (
    "A queue name is a non-empty string of at most 255 characters, without commas, "
    "whitespace or NUL characters."
)


def _queue_problem(queue: Any) -> str | None:
    """Why ``queue`` is not a usable queue name (the rule of ``options.queue_name_problem``)."""
    from .options import queue_name_problem

    if not isinstance(queue, str):
        return f"must be a queue name (a string), not {type(queue).__name__}"
    problem = queue_name_problem(queue)
    return None if problem is None else f"{queue!r} {problem}"


def _check_routes(routes: Any) -> list[CheckMessage]:
    from .options import check_priority

    if not isinstance(routes, dict):
        return [_error("TASK_ROUTES", "must be a dict of task name -> {'queue': ...}", "", 10)]
    errors: list[CheckMessage] = []
    for name, route in routes.items():
        if not isinstance(name, str) or not name:
            errors.append(
                _error(
                    "TASK_ROUTES",
                    f"keys must be task names or patterns (non-empty strings), not {name!r}",
                    "",
                    10,
                )
            )
        elif not isinstance(route, dict) or set(route) - {"queue", "priority"}:
            errors.append(
                _error(
                    "TASK_ROUTES",
                    f"route for {name!r} must be a dict with "
                    f"'queue' and/or 'priority', not {route!r}",
                    "",
                    10,
                )
            )
        else:
            problem = None if route.get("queue") is None else _queue_problem(route["queue"])
            if problem is not None:
                errors.append(
                    _error("TASK_ROUTES", f"queue for {name!r}: {problem}", QUEUE_HINT, 10)
                )
            try:
                check_priority(f"route for {name!r}", route.get("priority"))
            except ValueError as exc:
                errors.append(_error("TASK_ROUTES", str(exc), "", 10))
    return errors


BEAT_HINT = (
    "An entry is {'task': 'app.tasks.name', 'schedule': 30.0 | timedelta(...) | crontab(...), "
    "'args': [...], 'kwargs': {...}, 'options': {...}}; see docs/periodic.md."
)


def _check_beat() -> list[CheckMessage]:
    """``BEAT_TIMEZONE`` names a zone; each ``BEAT_SCHEDULE`` entry is usable, by name."""
    import zoneinfo

    from .options import check_priority
    from .worker.beat import parse_entry

    errors: list[CheckMessage] = []
    zone = tasks_settings.BEAT_TIMEZONE
    if zone is not None:
        try:
            if not isinstance(zone, str) or not zone:
                raise ValueError
            zoneinfo.ZoneInfo(zone)
        except (ValueError, zoneinfo.ZoneInfoNotFoundError):
            errors.append(
                _error(
                    "BEAT_TIMEZONE",
                    f"{zone!r} is not a time zone name"[:300],
                    "Use an IANA name such as 'Europe/Paris', or None for TIME_ZONE.",
                    31,
                )
            )
    schedule = tasks_settings.BEAT_SCHEDULE
    if not isinstance(schedule, dict):
        return [
            *errors,
            _error("BEAT_SCHEDULE", "must be a dict of entry name -> entry", BEAT_HINT, 30),
        ]
    for name, value in schedule.items():
        try:
            entry = parse_entry(name, value)
            queue = entry.options.get("queue")
            problem = None if queue is None else _queue_problem(queue)
            if problem is not None:
                raise ValueError(f"options queue {problem}")
            check_priority("options", entry.options.get("priority"))
        except (ValueError, TypeError) as exc:
            shown = repr(name)[:100]
            errors.append(_error("BEAT_SCHEDULE", f"entry {shown}: {exc}"[:1000], BEAT_HINT, 30))
    return errors


@register(Tags.compatibility)
def check_django_tasks_backend(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``TASKS`` naming our backend needs Django 6 (``django.tasks``)."""
    import django
    from django.conf import settings

    if django.VERSION >= (6, 0):
        return []
    configured = getattr(settings, "TASKS", None)
    if not isinstance(configured, dict):
        return []
    return [
        Error(
            f"TASKS[{alias!r}]: django_tasks.backend.TasksBackend is the backend of Django's "
            f"task framework (django.tasks), which needs Django 6.0 or later; this is Django "
            f"{django.get_version()}",
            hint="Upgrade to Django 6, or remove it from TASKS and use @django_tasks.task.",
            id="django_tasks.E061",
        )
        for alias, params in configured.items()
        if isinstance(params, dict) and params.get("BACKEND") == "django_tasks.backend.TasksBackend"
    ]


API_URLCONF = "django_tasks.urls"


def _routes_api(patterns: Any, depth: int = 0) -> bool:
    """Whether ``django_tasks.urls`` is included somewhere in ``patterns``."""
    from django.urls import URLResolver

    for pattern in patterns:
        if not isinstance(pattern, URLResolver) or depth > 20:
            continue
        module = pattern.urlconf_name
        name = module if isinstance(module, str) else getattr(module, "__name__", None)
        if name == API_URLCONF or _routes_api(pattern.url_patterns, depth + 1):
            return True
    return False


@register(Tags.urls)
def check_api_urls(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The HTTP API is routed but DRF is not installed: its pages would fail to render."""
    from django.apps import apps
    from django.urls import get_resolver

    if apps.is_installed("rest_framework"):
        return []
    try:
        routed = _routes_api(get_resolver().url_patterns)
    except Exception:  # a urlconf that fails to import is Django's own check (urls.E004...)
        return []
    if not routed:
        return []
    return [
        Error(
            f"{API_URLCONF!r} is routed in ROOT_URLCONF, but 'rest_framework' is not in "
            f"INSTALLED_APPS: the API's browsable pages cannot find their templates",
            hint="Add 'rest_framework' to INSTALLED_APPS.",
            id="django_tasks.E050",
        )
    ]
