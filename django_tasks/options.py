"""Call options: what ``@task`` and ``apply_async`` accept, their checks, and the outgoing
message a call becomes (:func:`build_outgoing`)."""

from __future__ import annotations

import datetime as dt
import fnmatch
import numbers
import uuid
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from .conf import DEFAULTS, tasks_settings
from .exceptions import ImproperlyConfiguredTask
from .messages import check_compression, check_json, check_serializer, encode_arguments
from .signature import Signature
from .transports import OutgoingTask

if TYPE_CHECKING:
    from .task import Task

#: Declaration options and their defaults (Celery's, where Celery has one).
TASK_OPTION_DEFAULTS: dict[str, Any] = {
    "name": None,
    "bind": False,
    "queue": None,
    "priority": None,
    "max_retries": 3,
    "default_retry_delay": 180,
    "autoretry_for": (),
    "dont_autoretry_for": (),
    "retry_kwargs": {},
    "retry_backoff": False,
    "retry_backoff_max": 600,
    "retry_jitter": True,
    "track_started": None,
    "ignore_result": False,
    "acks_late": None,
    "expires": None,
    "time_limit": None,
    "soft_time_limit": None,
    "serializer": None,
    "compression": None,
    "typing": True,
}

#: Options ``apply_async`` takes beyond ``args``/``kwargs``.
CALL_OPTIONS = frozenset(
    {
        "task_id",
        "countdown",
        "eta",
        "expires",
        "queue",
        "priority",
        "serializer",
        "compression",
        "headers",
        "ignore_result",
        "retry",
        "retry_policy",
        "link",
        "link_error",
        "on_commit",
        "owner",
        "time_limit",
        "soft_time_limit",
    }
)

RETRY_POLICY_KEYS = frozenset({"max_retries", "interval_start", "interval_step", "interval_max"})
PRIORITY_RANGE = range(0, 256)


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_optional_number(where: str, option: str, value: Any, *, allow_zero: bool = True) -> None:
    if value is None:
        return
    if not is_number(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(
            f"{where}: {option} must be a {'non-negative' if allow_zero else 'positive'}"
            f" number of seconds, not {value!r}"
        )


def check_priority(where: str, value: Any) -> None:
    if value is not None and (
        not isinstance(value, int) or isinstance(value, bool) or value not in PRIORITY_RANGE
    ):
        raise ValueError(f"{where}: priority must be an integer from 0 to 255, not {value!r}")


def check_time_limits(where: str, time_limit: Any, soft_time_limit: Any) -> None:
    check_optional_number(where, "time_limit", time_limit, allow_zero=False)
    check_optional_number(where, "soft_time_limit", soft_time_limit, allow_zero=False)
    if time_limit is not None and soft_time_limit is not None and soft_time_limit > time_limit:
        raise ValueError(
            f"{where}: soft_time_limit ({soft_time_limit}) is above time_limit ({time_limit})"
        )


def check_retry_policy(where: str, policy: Any) -> dict[str, Any]:
    """Validate a publish retry policy and fill in the defaults."""
    if not isinstance(policy, dict):
        raise TypeError(f"{where}: retry_policy must be a dict, not {type(policy).__name__}")
    unknown = sorted(set(policy) - RETRY_POLICY_KEYS)
    if unknown:
        raise ValueError(
            f"{where}: unknown retry_policy key(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(RETRY_POLICY_KEYS))}"
        )
    merged = {
        **DEFAULTS["TASK_PUBLISH_RETRY_POLICY"],
        **tasks_settings.TASK_PUBLISH_RETRY_POLICY,
        **policy,
    }
    max_retries = merged["max_retries"]
    if max_retries is not None and (not isinstance(max_retries, int) or max_retries < 0):
        raise ValueError(
            f"{where}: retry_policy max_retries must be None or an integer >= 0, "
            f"not {max_retries!r}"
        )
    for key in ("interval_start", "interval_step", "interval_max"):
        check_optional_number(where, f"retry_policy {key}", merged[key])
        if merged[key] is None:
            raise ValueError(f"{where}: retry_policy {key} must be a number, not None")
    return merged


def check_exception_classes(where: str, option: str, value: Any) -> tuple[type, ...]:
    classes = tuple(value) if isinstance(value, list | tuple) else (value,)
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise ImproperlyConfiguredTask(
                f"{where}: {option} must hold exception classes, not {cls!r}"
            )
    return classes


def to_datetime(where: str, option: str, value: Any, now: dt.datetime) -> dt.datetime:
    """A datetime (naive: current time zone) or seconds from ``now``."""
    if isinstance(value, dt.datetime):
        if timezone.is_naive(value):
            return timezone.make_aware(value, timezone.get_current_timezone())
        return value
    if is_number(value):
        return now + dt.timedelta(seconds=float(value))
    raise TypeError(
        f"{where}: {option} must be a number of seconds or a datetime, not {type(value).__name__}"
    )


def as_signatures(where: str, option: str, value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else [value]
    sigs = []
    for item in items:
        if not isinstance(item, dict) and callable(getattr(item, "s", None)):
            item = item.s()  # a task given as its own signature
        if not isinstance(item, dict):
            raise TypeError(f"{where}: {option} takes signatures (task.s(...)), not {item!r}")
        sigs.append(dict(Signature.from_dict(item)))
    return sigs


def build_outgoing(
    task: Task[Any, Any],
    where: str,
    args: list[Any],
    kwargs: dict[str, Any],
    options: dict[str, Any],
) -> OutgoingTask:
    """Validate ``apply_async``'s options for ``task`` and encode the call as it will be sent:
    ``ValueError``/``TypeError``/``EncodeError`` naming the option or argument otherwise."""
    now = timezone.now()
    task_id = options.get("task_id") or str(uuid.uuid4())
    if not isinstance(task_id, str) or len(task_id) > 255:
        raise ValueError(f"{where}: task_id must be a string of at most 255 characters")
    countdown, eta = options.get("countdown"), options.get("eta")
    if countdown is not None and eta is not None:
        raise ValueError(f"{where}: give countdown or eta, not both")
    if countdown is not None:
        run_after = to_datetime(where, "countdown", countdown, now)
    elif eta is not None:
        if not isinstance(eta, dt.datetime):
            raise TypeError(f"{where}: eta must be a datetime, not {type(eta).__name__}")
        run_after = to_datetime(where, "eta", eta, now)
    else:
        run_after = now
    expires_opt = options.get("expires", task.expires)
    expires = None if expires_opt is None else to_datetime(where, "expires", expires_opt, now)

    route = route_for(task.name)
    queue = (
        options.get("queue")
        or task.queue
        or route.get("queue")
        or tasks_settings.TASK_DEFAULT_QUEUE
    )
    if not isinstance(queue, str):
        raise TypeError(f"{where}: queue must be a string, not {type(queue).__name__}")
    priority = options.get("priority")
    if priority is None:
        priority = task.priority if task.priority is not None else route.get("priority")
    check_priority(where, priority)
    serializer = options.get("serializer") or task.serializer or tasks_settings.TASK_SERIALIZER
    check_serializer(serializer, option=f"{where}: serializer")
    compression = options.get("compression") or task.compression or tasks_settings.TASK_COMPRESSION
    if compression:
        check_compression(compression, option=f"{where}: compression")
    time_limit = options.get("time_limit", task.time_limit)
    soft_time_limit = options.get("soft_time_limit", task.soft_time_limit)
    check_time_limits(where, time_limit, soft_time_limit)

    extra: dict[str, Any] = {}
    headers = options.get("headers")
    if headers:
        if not isinstance(headers, dict):
            raise TypeError(f"{where}: headers must be a dict")
        extra["headers"] = headers
    ignore_result = options.get("ignore_result")
    if ignore_result if ignore_result is not None else task.ignore_result:
        extra["ignore_result"] = True
    for option in ("link", "link_error"):
        sigs = as_signatures(where, option, options.get(option))
        if sigs:
            extra[option] = sigs
    if time_limit is not None:
        extra["time_limit"] = time_limit
    if soft_time_limit is not None:
        extra["soft_time_limit"] = soft_time_limit
    encoded = encode_arguments(
        args, kwargs, serializer=serializer, compression=compression, task_name=task.name
    )
    if encoded.compression:
        extra["compression"] = encoded.compression
    if extra:
        check_json(extra, f"{where}: headers and links")
    owner = options.get("owner")
    owner_id = getattr(owner, "pk", owner) if owner is not None else None
    return OutgoingTask(
        task_id=task_id,
        task_name=task.name,
        queue=queue,
        priority=priority or 0,
        encoded=encoded,
        run_after=run_after,
        expires=expires,
        options=extra or None,
        owner_id=owner_id,
        created=now,
    )


def route_for(name: str) -> dict[str, Any]:
    """The ``TASK_ROUTES`` entry for task ``name`` (exact name first, then glob patterns)."""
    routes: dict[str, dict[str, Any]] = tasks_settings.TASK_ROUTES
    route = routes.get(name)
    if route is None:
        for pattern, candidate in routes.items():
            if fnmatch.fnmatchcase(name, pattern):
                return candidate
        return {}
    return route
