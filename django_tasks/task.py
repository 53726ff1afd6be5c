"""Declaring tasks (``@task``) and calling them: ``__call__``, ``delay``, ``apply_async``."""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import inspect
import numbers
import random
import sys
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any, Generic, ParamSpec, TypeVar, overload

from django.db import transaction
from django.utils import timezone

from . import states
from .conf import tasks_settings
from .context import Request, request_stack
from .exceptions import ImproperlyConfiguredTask, MaxRetriesExceededError, Retry
from .messages import (
    EncodedArguments,
    check_compression,
    check_json,
    check_serializer,
    encode_arguments,
    json_round_trip,
)
from .registry import tasks_registry
from .signature import Signature

P = ParamSpec("P")
R = TypeVar("R")

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


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_optional_number(where: str, option: str, value: Any, *, allow_zero: bool = True) -> None:
    if value is None:
        return
    if not _is_number(value) or value < 0 or (value == 0 and not allow_zero):
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
    _check_optional_number(where, "time_limit", time_limit, allow_zero=False)
    _check_optional_number(where, "soft_time_limit", soft_time_limit, allow_zero=False)
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
    from .conf import DEFAULTS

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
        _check_optional_number(where, f"retry_policy {key}", merged[key])
        if merged[key] is None:
            raise ValueError(f"{where}: retry_policy {key} must be a number, not None")
    return merged


def _check_exception_classes(where: str, option: str, value: Any) -> tuple[type, ...]:
    classes = tuple(value) if isinstance(value, list | tuple) else (value,)
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise ImproperlyConfiguredTask(
                f"{where}: {option} must hold exception classes, not {cls!r}"
            )
    return classes


def _to_datetime(where: str, option: str, value: Any, now: dt.datetime) -> dt.datetime:
    """A datetime (naive: current time zone) or seconds from ``now``."""
    if isinstance(value, dt.datetime):
        if timezone.is_naive(value):
            value = timezone.make_aware(value, timezone.get_current_timezone())
        return value
    if _is_number(value):
        return now + dt.timedelta(seconds=float(value))
    raise TypeError(
        f"{where}: {option} must be a number of seconds or a datetime, not {type(value).__name__}"
    )


def _as_signatures(where: str, option: str, value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else [value]
    sigs = []
    for item in items:
        if isinstance(item, Task):
            item = item.s()
        if not isinstance(item, dict):
            raise TypeError(f"{where}: {option} takes signatures (task.s(...)), not {item!r}")
        sigs.append(dict(Signature.from_dict(item)))
    return sigs


class Task(Generic[P, R]):
    """A function declared with ``@task``: call it here, or send it to a worker."""

    def __init__(self, fn: Callable[..., R], **options: Any) -> None:
        unknown = sorted(set(options) - set(TASK_OPTION_DEFAULTS))
        where = f"@task on {fn.__module__}.{fn.__qualname__}"
        if unknown:
            raise ImproperlyConfiguredTask(
                f"{where}: unknown option(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(TASK_OPTION_DEFAULTS))}"
            )
        merged = {**TASK_OPTION_DEFAULTS, **options}
        self.run = fn
        self.name: str = merged["name"] or f"{fn.__module__}.{fn.__name__}"
        if not isinstance(self.name, str) or not self.name.strip():
            raise ImproperlyConfiguredTask(f"{where}: name must be a non-empty string")
        where = f"@task {self.name!r}"
        self.bind: bool = bool(merged["bind"])
        self.queue: str | None = merged["queue"]
        if self.queue is not None and (not isinstance(self.queue, str) or not self.queue):
            raise ImproperlyConfiguredTask(f"{where}: queue must be a non-empty string")
        self.priority: int | None = merged["priority"]
        self.max_retries: int | None = merged["max_retries"]
        self.default_retry_delay: float = merged["default_retry_delay"]
        self.autoretry_for = _check_exception_classes(
            where, "autoretry_for", merged["autoretry_for"]
        )
        self.dont_autoretry_for = _check_exception_classes(
            where, "dont_autoretry_for", merged["dont_autoretry_for"]
        )
        self.retry_kwargs: dict[str, Any] = dict(merged["retry_kwargs"])
        self.retry_backoff: bool | float = merged["retry_backoff"]
        self.retry_backoff_max: float = merged["retry_backoff_max"]
        self.retry_jitter: bool = bool(merged["retry_jitter"])
        self.track_started: bool | None = merged["track_started"]
        self.ignore_result: bool = bool(merged["ignore_result"])
        self.acks_late: bool | None = merged["acks_late"]
        self.expires: float | dt.datetime | None = merged["expires"]
        self.time_limit: float | None = merged["time_limit"]
        self.soft_time_limit: float | None = merged["soft_time_limit"]
        self.serializer: str | None = merged["serializer"]
        self.compression: str | None = merged["compression"]
        self.typing: bool = bool(merged["typing"])
        try:
            check_priority(where, self.priority)
            check_time_limits(where, self.time_limit, self.soft_time_limit)
            _check_optional_number(where, "default_retry_delay", self.default_retry_delay)
            _check_optional_number(where, "retry_backoff_max", self.retry_backoff_max)
            if self.max_retries is not None and (
                not isinstance(self.max_retries, int) or self.max_retries < 0
            ):
                raise ValueError(f"{where}: max_retries must be None or an integer >= 0")
            if self.expires is not None and not isinstance(self.expires, dt.datetime):
                _check_optional_number(where, "expires", self.expires)
            if self.serializer is not None:
                check_serializer(self.serializer)
            if self.compression is not None:
                check_compression(self.compression)
        except (ValueError, TypeError) as exc:
            message = str(exc) if str(exc).startswith(where) else f"{where}: {exc}"
            raise ImproperlyConfiguredTask(message) from None
        self._signature = inspect.signature(fn)
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]
        tasks_registry.register(self)

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"

    # -- the request context ----------------------------------------------------------------

    @property
    def request(self) -> Request:
        """The current call's context; a called-directly default outside a worker."""
        for task, request in reversed(request_stack()):
            if task is self:
                return request
        return Request(task=self.name, called_directly=True)

    def _run_with_request(self, request: Request, args: list[Any], kwargs: dict[str, Any]) -> R:
        stack = request_stack()
        stack.append((self, request))
        try:
            if self.bind:
                return self.run(self, *args, **kwargs)
            return self.run(*args, **kwargs)
        except Retry:
            raise
        except Exception as exc:
            if (
                self.autoretry_for
                and isinstance(exc, self.autoretry_for)
                and not isinstance(exc, self.dont_autoretry_for)
            ):
                raise self.retry(exc=exc, **self._autoretry_options(request)) from exc
            raise
        finally:
            stack.pop()

    def _autoretry_options(self, request: Request) -> dict[str, Any]:
        """``retry_kwargs``, with Celery's exponential backoff when ``retry_backoff`` is set:
        ``min(retry_backoff_max, factor * 2 ** retries)``, then uniform in ``[0, that]`` with
        ``retry_jitter``."""
        options = dict(self.retry_kwargs)
        if self.retry_backoff:
            factor = 1 if self.retry_backoff is True else self.retry_backoff
            countdown = min(self.retry_backoff_max, factor * 2**request.retries)
            if self.retry_jitter:
                countdown = random.uniform(0, countdown)
            options["countdown"] = countdown
        return options

    # -- calling ------------------------------------------------------------------------------

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task here and now, in this process; no message is sent."""
        if self.bind:
            return self.run(self, *args, **kwargs)
        return self.run(*args, **kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Send the task with these arguments; returns an ``AsyncResult``."""
        return self.apply_async(args, kwargs)

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Like :meth:`delay`, but send only when the current transaction commits."""
        return self.apply_async(args, kwargs, on_commit=True)

    def check_arguments(self, args: tuple | list, kwargs: dict[str, Any]) -> None:
        """Raise ``TypeError`` naming the task if the arguments do not fit its signature."""
        try:
            if self.bind:
                self._signature.bind(None, *args, **kwargs)
            else:
                self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}() {exc}") from None

    def apply_async(
        self, args: tuple | list | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        """Send the task; options as in Celery's ``apply_async``. Returns an ``AsyncResult``."""
        from .result import AsyncResult

        where = f"{self.name}.apply_async()"
        unknown = sorted(set(options) - CALL_OPTIONS)
        if unknown:
            raise TypeError(
                f"{where} got unknown option(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(CALL_OPTIONS))}"
            )
        if args is None:
            args = ()
        if not isinstance(args, list | tuple):
            raise TypeError(f"{where}: args must be a list or tuple, not {type(args).__name__}")
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, dict):
            raise TypeError(f"{where}: kwargs must be a dict, not {type(kwargs).__name__}")
        if self.typing:
            self.check_arguments(args, kwargs)
        if tasks_settings.TASK_ALWAYS_EAGER:
            if not options.pop("on_commit", False):
                return self.apply(args, kwargs, **options)
            # Run when the transaction commits; until then the result reads PENDING.
            from .result import EagerResult

            options["task_id"] = options.get("task_id") or str(uuid.uuid4())
            pending = EagerResult(options["task_id"], states.PENDING, None, task_name=self.name)
            transaction.on_commit(lambda: pending.take(self.apply(args, kwargs, **options)))
            return pending
        outgoing = self._build_outgoing(where, list(args), kwargs, options)
        from .transports import get_transport

        transport = get_transport()
        retry = options.get("retry")
        retry = tasks_settings.TASK_PUBLISH_RETRY if retry is None else bool(retry)
        policy = check_retry_policy(where, options.get("retry_policy") or {})
        if options.get("on_commit"):
            transport.send_on_commit(outgoing, retry=retry, retry_policy=policy)
        else:
            transport.send(outgoing, retry=retry, retry_policy=policy)
        ignore_result = bool(outgoing.options and outgoing.options.get("ignore_result"))
        return AsyncResult(outgoing.task_id, task_name=self.name, ignore_result=ignore_result)

    def _build_outgoing(
        self, where: str, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> OutgoingTask:
        now = timezone.now()
        task_id = options.get("task_id") or str(uuid.uuid4())
        if not isinstance(task_id, str) or len(task_id) > 255:
            raise ValueError(f"{where}: task_id must be a string of at most 255 characters")
        countdown, eta = options.get("countdown"), options.get("eta")
        if countdown is not None and eta is not None:
            raise ValueError(f"{where}: give countdown or eta, not both")
        if countdown is not None:
            run_after = _to_datetime(where, "countdown", countdown, now)
        elif eta is not None:
            if not isinstance(eta, dt.datetime):
                raise TypeError(f"{where}: eta must be a datetime, not {type(eta).__name__}")
            run_after = _to_datetime(where, "eta", eta, now)
        else:
            run_after = now
        expires_opt = options.get("expires", self.expires)
        expires = None if expires_opt is None else _to_datetime(where, "expires", expires_opt, now)

        route = self._route()
        queue = (
            options.get("queue")
            or self.queue
            or route.get("queue")
            or tasks_settings.TASK_DEFAULT_QUEUE
        )
        if not isinstance(queue, str):
            raise TypeError(f"{where}: queue must be a string, not {type(queue).__name__}")
        priority = options.get("priority")
        if priority is None:
            priority = self.priority if self.priority is not None else route.get("priority")
        check_priority(where, priority)
        serializer = options.get("serializer") or self.serializer or tasks_settings.TASK_SERIALIZER
        check_serializer(serializer, option=f"{where}: serializer")
        compression = (
            options.get("compression") or self.compression or tasks_settings.TASK_COMPRESSION
        )
        if compression:
            check_compression(compression, option=f"{where}: compression")
        time_limit = options.get("time_limit", self.time_limit)
        soft_time_limit = options.get("soft_time_limit", self.soft_time_limit)
        check_time_limits(where, time_limit, soft_time_limit)

        extra: dict[str, Any] = {}
        headers = options.get("headers")
        if headers:
            if not isinstance(headers, dict):
                raise TypeError(f"{where}: headers must be a dict")
            extra["headers"] = headers
        ignore_result = options.get("ignore_result")
        if ignore_result if ignore_result is not None else self.ignore_result:
            extra["ignore_result"] = True
        for option in ("link", "link_error"):
            sigs = _as_signatures(where, option, options.get(option))
            if sigs:
                extra[option] = sigs
        if time_limit is not None:
            extra["time_limit"] = time_limit
        if soft_time_limit is not None:
            extra["soft_time_limit"] = soft_time_limit
        encoded = encode_arguments(
            args, kwargs, serializer=serializer, compression=compression, task_name=self.name
        )
        if encoded.compression:
            extra["compression"] = encoded.compression
        if extra:
            check_json(extra, f"{where}: headers and links")
        owner = options.get("owner")
        owner_id = getattr(owner, "pk", owner) if owner is not None else None
        return OutgoingTask(
            task_id=task_id,
            task_name=self.name,
            queue=queue,
            priority=priority or 0,
            encoded=encoded,
            run_after=run_after,
            expires=expires,
            options=extra or None,
            owner_id=owner_id,
            created=now,
        )

    def _route(self) -> dict[str, Any]:
        routes = tasks_settings.TASK_ROUTES
        route = routes.get(self.name)
        if route is None:
            for pattern, candidate in routes.items():
                if fnmatch.fnmatchcase(self.name, pattern):
                    return candidate
            return {}
        return route

    # -- eager execution ----------------------------------------------------------------------

    def apply(
        self, args: tuple | list | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        """Run the task in this process as a worker would, returning an ``EagerResult``."""
        from .messages import encode_result, exception_to_dict, format_traceback
        from .result import EagerResult

        where = f"{self.name}.apply()"
        args, kwargs = list(args or ()), dict(kwargs or {})
        if self.typing:
            self.check_arguments(args, kwargs)
        outgoing = self._build_outgoing(where, args, kwargs, options)
        # The JSON round trip a worker's arguments go through.
        args, kwargs = json_round_trip([args, kwargs])
        retries = 0
        from .worker.execution import apply_errback, apply_link, run_followups

        extra = outgoing.options or {}
        while True:
            request = Request(
                id=outgoing.task_id,
                task=self.name,
                args=args,
                kwargs=kwargs,
                retries=retries,
                eta=None,
                expires=outgoing.expires,
                is_eager=True,
                called_directly=False,
                delivery_info={"queue": outgoing.queue, "priority": outgoing.priority},
                headers=extra.get("headers") or {},
                options=dict(extra),
            )
            try:
                value = self._run_with_request(request, args, kwargs)
                if request.pending_retry is not None:
                    raise request.pending_retry
                value = json_round_trip(encode_result(value))  # as stored by a worker
            except Retry as retry:
                retries += 1
                new_args = getattr(retry, "args_override", None)
                new_kwargs = getattr(retry, "kwargs_override", None)
                args = args if new_args is None else json_round_trip(new_args)
                kwargs = kwargs if new_kwargs is None else json_round_trip(new_kwargs)
                if "headers" in (getattr(retry, "options", None) or {}):
                    extra = {**extra, "headers": retry.options["headers"]}  # type: ignore[attr-defined]
                continue
            except Exception as exc:
                traceback = format_traceback(exc)
                run_followups(
                    [
                        partial(apply_errback, sig, request, exc, traceback)
                        for sig in extra.get("link_error", ())
                    ]
                )
                return EagerResult(
                    outgoing.task_id,
                    states.FAILURE,
                    exc,
                    traceback=traceback,
                    task_name=self.name,
                    exc_dict=exception_to_dict(exc),
                    retries=retries,
                )
            run_followups([partial(apply_link, sig, value) for sig in extra.get("link", ())])
            return EagerResult(
                outgoing.task_id, states.SUCCESS, value, task_name=self.name, retries=retries
            )

    # -- inside a running task ----------------------------------------------------------------

    def retry(
        self,
        args: tuple | list | None = None,
        kwargs: dict[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: dt.datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Schedule this task to run again, keeping its id; raises :class:`Retry`.

        Called directly (not from a worker) it re-raises ``exc`` or the exception being
        handled. After ``max_retries`` retries it raises ``exc`` or
        :class:`MaxRetriesExceededError` and the task fails.
        """
        request = self.request
        if request.called_directly:
            if exc is not None:
                raise exc
            current = sys.exception()
            if current is not None:
                raise current
            raise Retry("Task can be retried", None)
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{request.args} kwargs:{request.kwargs}"
            )
        where = f"{self.name}.retry()"
        unknown = sorted(set(options) - {"queue", "priority", "expires", "headers"})
        if unknown:
            raise TypeError(f"{where} got unknown option(s) {', '.join(map(repr, unknown))}")
        if options.get("priority", 0) is None:
            del options["priority"]  # None: keep the current priority
        check_priority(where, options.get("priority"))
        if "queue" in options and (not isinstance(options["queue"], str) or not options["queue"]):
            raise ValueError(f"{where}: queue must be a non-empty string")
        if "headers" in options and not isinstance(options["headers"], dict):
            raise TypeError(f"{where}: headers must be a dict")
        if options.get("expires") is not None:
            options["expires"] = _to_datetime(where, "expires", options["expires"], timezone.now())
        if countdown is not None and eta is not None:
            raise ValueError(f"{self.name}.retry(): give countdown or eta, not both")
        now = timezone.now()
        if eta is not None:
            when = _to_datetime(f"{self.name}.retry()", "eta", eta, now)
        else:
            delay = self.default_retry_delay if countdown is None else countdown
            when = _to_datetime(f"{self.name}.retry()", "countdown", delay, now)
        retry = Retry(exc=exc, when=when)
        retry.args_override = list(args) if args is not None else None  # type: ignore[attr-defined]
        retry.kwargs_override = dict(kwargs) if kwargs is not None else None  # type: ignore[attr-defined]
        retry.options = options  # type: ignore[attr-defined]
        if not throw:
            request.pending_retry = retry
            return retry
        raise retry

    def update_state(
        self,
        task_id: str | None = None,
        state: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Store a state (e.g. ``"PROGRESS"``) and its meta for this task, for pollers."""
        from .results import store_custom_state

        request = self.request
        own = task_id is None or task_id == request.id
        task_id = task_id or request.id
        if not task_id:
            raise RuntimeError(f"{self.name}.update_state(): no task id (not running as a task)")
        if request.is_eager:
            return
        store_custom_state(
            task_id,
            state or states.PENDING,
            meta,
            worker=request.hostname,
            pk=request.row_pk if own else None,
        )

    # -- signatures and results ---------------------------------------------------------------

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature with these arguments: ``add.s(2)``."""
        return Signature(self.name, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: a parent's result is not prepended to its args."""
        return Signature(self.name, args, kwargs, immutable=True)

    def signature(
        self, args: tuple | list | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Signature:
        """A signature with arguments and call options: ``add.signature((2,), countdown=1)``."""
        unknown = sorted(set(options) - CALL_OPTIONS - {"immutable"})
        if unknown:
            raise TypeError(
                f"{self.name}.signature() got unknown option(s) {', '.join(map(repr, unknown))}"
            )
        immutable = bool(options.pop("immutable", False))
        return Signature(self.name, args, kwargs, options, immutable=immutable)

    def AsyncResult(self, task_id: str) -> Any:
        from .result import AsyncResult

        return AsyncResult(task_id, task_name=self.name)

    @property
    def resolved_acks_late(self) -> bool:
        return tasks_settings.TASK_ACKS_LATE if self.acks_late is None else self.acks_late

    @property
    def resolved_track_started(self) -> bool:
        if self.track_started is None:
            return tasks_settings.TASK_TRACK_STARTED
        return self.track_started


class OutgoingTask:
    """A task ready to hand to a transport: id, routing, timing and encoded arguments."""

    __slots__ = (
        "created",
        "encoded",
        "expires",
        "options",
        "owner_id",
        "priority",
        "queue",
        "run_after",
        "task_id",
        "task_name",
    )

    def __init__(
        self,
        *,
        task_id: str,
        task_name: str,
        queue: str,
        priority: int,
        encoded: EncodedArguments,
        run_after: dt.datetime,
        expires: dt.datetime | None,
        options: dict[str, Any] | None,
        owner_id: Any,
        created: dt.datetime,
    ) -> None:
        self.task_id = task_id
        self.task_name = task_name
        self.queue = queue
        self.priority = priority
        self.encoded = encoded
        self.run_after = run_after
        self.expires = expires
        self.options = options
        self.owner_id = owner_id
        self.created = created


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
def task(**options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Declare a task: ``@task`` or ``@task(name=..., bind=True, queue=..., ...)``."""
    if fn is not None:
        if options or not callable(fn):
            raise ImproperlyConfiguredTask("use @task or @task(option=...), with keyword options")
        return Task(fn)

    def decorator(func: Callable[P, R]) -> Task[P, R]:
        return Task(func, **options)

    return decorator
