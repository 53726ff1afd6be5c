"""Call options: what ``@task`` and ``apply_async`` accept, their checks, and the outgoing
message a call becomes (:func:`build_outgoing`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import functools
import math
import numbers
import uuid
from typing import TYPE_CHECKING, Any, Literal

from django.core.exceptions import ValidationError
from django.utils import timezone

from .conf import DEFAULTS, tasks_settings
from .exceptions import ImproperlyConfiguredTask
from .ids import new_id
from .messages import (
    check_compression,
    check_json,
    check_serializer,
    encode_arguments,
    safe_repr,
    text_problem,
)
from .signature import Signature
from .transports import OutgoingTask, Publishing

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
    "rate_limit": None,
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
        # Canvas membership, set by chains, groups and chords (Celery's names).
        "parent_id",
        "group_id",
        "group_index",
        "chord",
    }
)

#: The call options that say where a task stands in a canvas; stored with the task.
CANVAS_OPTIONS = ("parent_id", "group_id", "group_index", "chord")

#: The options of ``Task.retry()`` beyond ``args``/``kwargs``/``exc``/``throw``/``eta``/
#: ``countdown``/``max_retries``.
RETRY_OPTIONS = frozenset({"queue", "priority", "expires", "headers"})
#: What ``@task(retry_kwargs=...)`` may give the automatic ``retry()``.
RETRY_KWARGS = frozenset({"countdown", "eta", "max_retries", *RETRY_OPTIONS})

RETRY_POLICY_KEYS = frozenset({"max_retries", "interval_start", "interval_step", "interval_max"})
PRIORITY_RANGE = range(0, 256)

#: The longest span any option in seconds may give (a countdown, an expiry, a time limit, a
#: retry delay or interval): 100 years of 365 days. An ``eta`` or ``expires`` datetime must lie
#: within this of now. Beyond it, datetime arithmetic overflows long before anything useful.
MAX_SECONDS = 100 * 365 * 24 * 3600
MAX_SPAN = dt.timedelta(seconds=MAX_SECONDS)
#: Queue names and task ids are stored in 255-character columns.
MAX_NAME_LENGTH = 255

_SECONDS_RANGE = {
    "any": f"within 100 years either way (±{MAX_SECONDS})",
    "zero": f"from 0 to 100 years ({MAX_SECONDS})",
    "positive": f"above 0, at most 100 years ({MAX_SECONDS})",
}


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    """A number (not a bool) that is neither NaN nor infinite."""
    try:
        return is_number(value) and math.isfinite(value)
    except (TypeError, ValueError):  # a Real that float() refuses (Decimal('sNaN'))
        return False


def check_seconds(
    where: str, option: str, value: Any, *, minimum: Literal["any", "zero", "positive"] = "zero"
) -> None:
    """``ValueError`` naming ``option`` unless ``value`` is a finite number of seconds no
    further than 100 years (:data:`MAX_SECONDS`) from 0, and at least ``minimum``."""
    if (
        is_finite(value)
        and abs(value) <= MAX_SECONDS
        and (minimum == "any" or value > 0 or (minimum == "zero" and value == 0))
    ):
        return
    raise ValueError(
        f"{where}: {option} must be a finite number of seconds {_SECONDS_RANGE[minimum]}, "
        f"not {safe_repr(value)}"
    )


def check_optional_number(where: str, option: str, value: Any, *, allow_zero: bool = True) -> None:
    """:func:`check_seconds` (``>= 0``, or ``> 0`` without ``allow_zero``), or None."""
    if value is not None:
        check_seconds(where, option, value, minimum="zero" if allow_zero else "positive")


def _shown(value: str) -> str:
    """``value`` for an error message: its repr, shortened (names may be long)."""
    return safe_repr(value if len(value) <= 40 else f"{value[:37]}...")


@functools.lru_cache(maxsize=256)
def queue_name_problem(name: str) -> str | None:
    """What makes ``name`` unusable as a queue name, or None.

    A queue name is a non-empty string of at most 255 characters, without commas (``runworker
    --queues`` splits on them), whitespace, NUL characters or lone surrogates.
    """
    if not name:
        return "must not be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"must be at most {MAX_NAME_LENGTH} characters, not {len(name)}"
    problem = text_problem(name)
    if problem is not None:
        return problem
    if "," in name:
        return "must not hold a comma (runworker --queues splits on commas)"
    if any(c.isspace() for c in name):
        return "must not hold whitespace"
    return None


def check_queue(where: str, option: str, value: Any) -> str:
    """``value`` if it is a usable queue name; ``TypeError``/``ValueError`` naming ``option``."""
    if not isinstance(value, str):
        raise TypeError(f"{where}: {option} must be a string, not {type(value).__name__}")
    problem = queue_name_problem(value)
    if problem is not None:
        raise ValueError(f"{where}: {option} {_shown(value)} {problem}")
    return value


def check_task_id(where: str, value: Any) -> str:
    """``value`` if it is a usable task id: a non-empty string of at most 255 characters,
    without NUL characters or lone surrogates."""
    if not isinstance(value, str):
        raise TypeError(f"{where}: task_id must be a string, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{where}: task_id must not be empty (give None for a new UUID)")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(
            f"{where}: task_id must be at most {MAX_NAME_LENGTH} characters, not {len(value)}"
        )
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(f"{where}: task_id {_shown(value)} {problem}")
    return value


def check_canvas_option(where: str, option: str, value: Any) -> Any:
    """A canvas option: ``group_index`` a non-negative int, the others ids (as ``task_id``)."""
    if option == "group_index":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise TypeError(f"{where}: group_index must be an int >= 0, not {safe_repr(value)}")
        return value
    try:
        return check_task_id(where, value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(str(exc).replace("task_id", option, 1)) from None


def owner_key(where: str, owner: Any) -> Any:
    """The primary key to store for ``owner=``: a saved user instance, or a primary-key value
    of the user model. ``ValueError`` for an unsaved user or a malformed key, ``TypeError``
    for anything else."""
    if owner is None:
        return None
    from django.contrib.auth import get_user_model
    from django.db.models import Model

    user_model = get_user_model()
    label = user_model._meta.label
    if isinstance(owner, user_model):
        if owner.pk is None:
            raise ValueError(
                f"{where}: owner {safe_repr(owner)} is not saved (its pk is None); "
                f"save the user first"
            )
        return owner.pk
    if isinstance(owner, Model | bool) or not isinstance(owner, int | str | uuid.UUID):
        raise TypeError(
            f"{where}: owner must be a saved {label} instance or its primary key, "
            f"not {type(owner).__name__}"
        )
    pk_field = user_model._meta.pk
    assert pk_field is not None  # every concrete model has one
    try:
        key = pk_field.to_python(owner)
        pk_field.run_validators(key)
    except ValidationError as exc:
        raise ValueError(
            f"{where}: owner {_shown(str(owner))} is not a primary key of {label}: "
            f"{'; '.join(exc.messages)}"
        ) from None
    return key


RATE_LIMIT_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate_limit(where: str, value: Any) -> tuple[float, float] | None:
    """``rate_limit`` (``"10/s"``, ``"100/m"``, ``"1000/h"``, or a number per second, as in
    Celery) as (starts, period in seconds); None for no limit. ValueError names ``where``."""
    if value is None:
        return None
    shown = repr(value)[:100]
    count: Any = value
    period = 1.0
    if isinstance(value, str):
        text = value.strip()
        number, _, unit = text.partition("/")
        if unit and unit.strip().lower() not in RATE_LIMIT_PERIODS:
            count = None
        else:
            period = RATE_LIMIT_PERIODS[unit.strip().lower() or "s"]
            try:
                count = float(number)
            except ValueError:
                count = None
    if isinstance(count, bool) or not is_finite(count) or not 0 < count <= 1_000_000:
        raise ValueError(
            f"{where}: rate_limit must be like '10/s', '100/m' or '1000/h' (from above 0 to "
            f"1,000,000 per period), or a number per second, not {shown}"
        )
    return float(count), period


def check_priority(where: str, value: Any) -> None:
    if value is not None and (
        not isinstance(value, int) or isinstance(value, bool) or value not in PRIORITY_RANGE
    ):
        raise ValueError(f"{where}: priority must be an integer from 0 to 255, not {value!r}")


def check_max_retries(where: str, option: str, value: Any) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ValueError(f"{where}: {option} must be None or an integer >= 0, not {value!r}")


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
    check_max_retries(where, "retry_policy max_retries", merged["max_retries"])
    for key in ("interval_start", "interval_step", "interval_max"):
        check_seconds(where, f"retry_policy {key}", merged[key])
    return merged


def check_retry_options(
    where: str,
    options: dict[str, Any],
    *,
    countdown: Any = None,
    eta: Any = None,
    max_retries: Any = None,
) -> None:
    """Check ``Task.retry()``'s options (also ``@task(retry_kwargs=...)``), naming the one at
    fault: ``ValueError``, ``TypeError``, or ``EncodeError`` for headers."""
    now = timezone.now()
    if countdown is not None and eta is not None:
        raise ValueError(f"{where}: give countdown or eta, not both")
    if countdown is not None:
        to_datetime(where, "countdown", countdown, now)
    if eta is not None:
        if not isinstance(eta, dt.datetime):
            raise TypeError(f"{where}: eta must be a datetime, not {type(eta).__name__}")
        to_datetime(where, "eta", eta, now)
    check_max_retries(where, "max_retries", max_retries)
    check_priority(where, options.get("priority"))
    if "queue" in options:  # None too: retry() keeps the queue when the option is left out
        check_queue(where, "queue", options["queue"])
    if options.get("expires") is not None:
        to_datetime(where, "expires", options["expires"], now)
    if "headers" in options:
        if not isinstance(options["headers"], dict):
            raise TypeError(f"{where}: headers must be a dict")
        check_json(options["headers"], f"{where}: headers")


def check_exception_classes(where: str, option: str, value: Any) -> tuple[type, ...]:
    classes = tuple(value) if isinstance(value, list | tuple) else (value,)
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise ImproperlyConfiguredTask(
                f"{where}: {option} must hold exception classes, not {cls!r}"
            )
    return classes


def to_datetime(where: str, option: str, value: Any, now: dt.datetime) -> dt.datetime:
    """A datetime (naive: current time zone) or seconds from ``now``, within 100 years of
    ``now``; ``ValueError`` naming ``option`` otherwise."""
    if isinstance(value, dt.datetime):
        when: dt.datetime = value
        try:
            if timezone.is_naive(when):
                when = timezone.make_aware(when, timezone.get_current_timezone())
            in_range = abs(when - now) <= MAX_SPAN
        except (OverflowError, ValueError):  # beyond what datetime arithmetic can reach
            in_range = False
        if not in_range:
            raise ValueError(
                f"{where}: {option} must be a datetime within 100 years of now, "
                f"not {safe_repr(value)}"
            )
        return when
    if is_number(value):
        check_seconds(where, option, value, minimum="any")
        return now + dt.timedelta(seconds=float(value))
    raise TypeError(
        f"{where}: {option} must be a number of seconds or a datetime, not {type(value).__name__}"
    )


def as_signatures(where: str, option: str, value: Any) -> list[dict[str, Any]] | None:
    """The signatures given as ``link``/``link_error``, checked: each is a signature (or a
    task), with known call options and storable arguments, named ``link`` or ``link[i]``."""
    if value is None:
        return None
    listed = isinstance(value, list | tuple)
    items = value if listed else [value]
    sigs = []
    for index, item in enumerate(items):
        name = f"{option}[{index}]" if listed else option
        if not isinstance(item, dict) and callable(getattr(item, "s", None)):
            item = item.s()  # a task given as its own signature
        if not isinstance(item, dict):
            raise TypeError(
                f"{where}: {name} takes signatures (task.s(...)), not {safe_repr(item)}"
            )
        try:
            sig = dict(Signature.from_dict(item))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{where}: {name}: {exc}") from None
        check_json(sig, f"{where}: {name}")
        check_link_options(f"{where}: {name}", sig["options"])
        sigs.append(sig)
    return sigs


def check_link_options(where: str, options: dict[str, Any]) -> None:
    """Check a link's call options as far as they do not depend on its task."""
    unknown = sorted(set(options) - CALL_OPTIONS)
    if unknown:
        raise TypeError(
            f"{where}: unknown option(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(CALL_OPTIONS))}"
        )
    now = timezone.now()
    if options.get("countdown") is not None and options.get("eta") is not None:
        raise ValueError(f"{where}: give countdown or eta, not both")
    for option in ("countdown", "eta", "expires"):
        if options.get(option) is not None:
            to_datetime(where, option, options[option], now)
    if options.get("task_id") is not None:
        check_task_id(where, options["task_id"])
    if options.get("queue") is not None:
        check_queue(where, "queue", options["queue"])
    check_priority(where, options.get("priority"))
    check_time_limits(where, options.get("time_limit"), options.get("soft_time_limit"))
    if options.get("serializer") is not None:
        check_serializer(options["serializer"], option=f"{where}: serializer")
    if options.get("compression") is not None:
        check_compression(options["compression"], option=f"{where}: compression")
    if options.get("retry_policy") is not None:
        check_retry_policy(where, options["retry_policy"])
    if options.get("headers") is not None and not isinstance(options["headers"], dict):
        raise TypeError(f"{where}: headers must be a dict")


class BulkSend(Publishing):
    """What the members of one bulk send (a group) share: the time they are sent, the
    options resolved for each task and set of call options alike, and how they are
    published.

    Thousands of members of one group differ only in their id, their place in the group and
    their arguments: the queue, priority, serializer, limits and times are resolved (and
    checked) once for all of them."""

    __slots__ = ("canvas_ids", "now", "policies", "resolved")

    def __init__(self) -> None:
        super().__init__()
        self.now = timezone.now()
        self.resolved: dict[tuple[Any, ...], _Resolved] = {}
        #: Canvas ids (the group's, the chord's) checked for an earlier member.
        self.canvas_ids: set[str] = set()
        #: The retry policies checked so far, by task and policy object (kept with it, so
        #: that its id stays its own).
        self.policies: dict[tuple[str, int], tuple[Any, dict[str, Any]]] = {}


#: Call options that differ from one member of a group to the next, or that the outgoing
#: task does not depend on: left out of the key under which a bulk send shares the rest.
_PER_MEMBER = frozenset({"task_id", "retry", "retry_policy", "on_commit", *CANVAS_OPTIONS})


@dataclasses.dataclass(slots=True)
class _Resolved:
    """The options of one call resolved and checked, but for its id, arguments and place
    in a canvas."""

    run_after: dt.datetime
    expires: dt.datetime | None
    queue: str
    priority: int
    serializer: str
    compression: str | None
    extra: dict[str, Any]
    owner_id: Any


def _resolve(
    task: Task[Any, Any], where: str, options: dict[str, Any], now: dt.datetime
) -> _Resolved:
    """``options`` resolved against the task, its route and the settings, and checked."""
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

    route_key, route = route_entry(task.name)
    # The first that gives a queue: the call, the task, the route, the setting.
    if options.get("queue") is not None:
        queue = check_queue(where, "queue", options["queue"])
    elif task.queue is not None:
        queue = check_queue(where, "@task queue", task.queue)
    elif route.get("queue") is not None:
        queue = check_queue(where, f"TASK_ROUTES[{route_key!r}] queue", route["queue"])
    else:
        queue = check_queue(where, "TASK_DEFAULT_QUEUE", tasks_settings.TASK_DEFAULT_QUEUE)
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
    if headers is not None:
        if not isinstance(headers, dict):
            raise TypeError(f"{where}: headers must be a dict, not {type(headers).__name__}")
        if headers:
            extra["headers"] = check_json(headers, f"{where}: headers")
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
    return _Resolved(
        run_after=run_after,
        expires=expires,
        queue=queue,
        priority=priority or 0,
        serializer=serializer,
        compression=compression,
        extra=extra,
        owner_id=owner_key(where, options.get("owner")),
    )


def _resolved_for(
    task: Task[Any, Any], where: str, options: dict[str, Any], bulk: BulkSend
) -> _Resolved:
    """:func:`_resolve`, once per task and set of shared options in a bulk send (options
    that cannot be a key, e.g. a ``headers`` dict, are resolved for each member)."""
    key = (task.name, *((k, v) for k, v in options.items() if k not in _PER_MEMBER))
    try:
        known = bulk.resolved.get(key)
    except TypeError:  # an unhashable value
        return _resolve(task, where, options, bulk.now)
    if known is None:
        known = bulk.resolved[key] = _resolve(task, where, options, bulk.now)
    return known


def build_outgoing(
    task: Task[Any, Any],
    where: str,
    args: list[Any],
    kwargs: dict[str, Any],
    options: dict[str, Any],
    bulk: BulkSend | None = None,
) -> OutgoingTask:
    """Validate ``apply_async``'s options for ``task`` and encode the call as it will be sent:
    ``ValueError``/``TypeError``/``EncodeError`` naming the option or argument otherwise.

    ``bulk``: the send this call is a member of, which shares what members have alike."""
    task_id = options.get("task_id")
    task_id = new_id() if task_id is None else check_task_id(where, task_id)
    if bulk is None:
        now = timezone.now()
        resolved = _resolve(task, where, options, now)
    else:
        now = bulk.now
        resolved = _resolved_for(task, where, options, bulk)
    extra = dict(resolved.extra)
    for option in CANVAS_OPTIONS:
        value = options.get(option)
        if value is None:
            continue
        if bulk is not None and option != "group_index" and type(value) is str:
            if value not in bulk.canvas_ids:  # the same group id for thousands of members
                bulk.canvas_ids.add(check_canvas_option(where, option, value))
            extra[option] = value
        else:
            extra[option] = check_canvas_option(where, option, value)
    encoded = encode_arguments(
        args,
        kwargs,
        serializer=resolved.serializer,
        compression=resolved.compression,
        task_name=task.name,
    )
    if encoded.compression:
        extra["compression"] = encoded.compression
    return OutgoingTask(
        task_id=task_id,
        task_name=task.name,
        queue=resolved.queue,
        priority=resolved.priority,
        encoded=encoded,
        run_after=resolved.run_after,
        expires=resolved.expires,
        options=extra or None,
        owner_id=resolved.owner_id,
        created=now,
    )


def route_for(name: str) -> dict[str, Any]:
    """The ``TASK_ROUTES`` entry for task ``name`` (exact name first, then glob patterns)."""
    return route_entry(name)[1]


def route_entry(name: str) -> tuple[str | None, dict[str, Any]]:
    """The key and the ``TASK_ROUTES`` entry for task ``name`` (``(None, {})``: no route)."""
    routes: dict[str, dict[str, Any]] = tasks_settings.TASK_ROUTES
    route = routes.get(name)
    if route is None:
        for pattern, candidate in routes.items():
            if isinstance(pattern, str) and fnmatch.fnmatchcase(name, pattern):
                return pattern, candidate
        return None, {}
    return name, route
