"""Declaring tasks (``@task``) and calling them: ``__call__``, ``delay``, ``apply_async``."""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import keyword
import sys
from collections.abc import Callable, Iterable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from django.db import transaction
from django.utils import timezone

from . import result as _result
from . import states
from .conf import tasks_settings
from .context import Request, request_stack
from .exceptions import ImproperlyConfiguredTask, MaxRetriesExceededError, Retry
from .execution import run_task
from .links import run_followups
from .messages import (
    check_compression,
    check_json,
    check_serializer,
    exception_to_dict,
    json_round_trip,
)
from .options import (
    CALL_OPTIONS,
    RETRY_KWARGS,
    RETRY_OPTIONS,
    TASK_OPTION_DEFAULTS,
    BulkSend,
    build_outgoing,
    check_exception_classes,
    check_max_retries,
    check_optional_number,
    check_priority,
    check_queue,
    check_retry_options,
    check_retry_policy,
    check_time_limits,
    is_finite,
    parse_rate_limit,
    to_datetime,
)
from .registry import tasks_registry
from .result import AsyncResult, EagerResult
from .signature import Signature
from .transports import OutgoingTask, get_transport

P = ParamSpec("P")
R = TypeVar("R")


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
        self.priority: int | None = merged["priority"]
        self.max_retries: int | None = merged["max_retries"]
        self.default_retry_delay: float = merged["default_retry_delay"]
        self.autoretry_for = check_exception_classes(
            where, "autoretry_for", merged["autoretry_for"]
        )
        self.dont_autoretry_for = check_exception_classes(
            where, "dont_autoretry_for", merged["dont_autoretry_for"]
        )
        self.retry_kwargs: dict[str, Any] = (
            dict(merged["retry_kwargs"]) if isinstance(merged["retry_kwargs"], dict) else {}
        )
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
        self.rate_limit: str | float | None = merged["rate_limit"]
        #: ``rate_limit`` as (starts, period in seconds), across all workers; or None.
        self.rate_limit_parsed: tuple[float, float] | None = None
        try:
            self.rate_limit_parsed = parse_rate_limit(where, self.rate_limit)
            if self.queue is not None:
                check_queue(where, "queue", self.queue)
            check_priority(where, self.priority)
            check_time_limits(where, self.time_limit, self.soft_time_limit)
            check_optional_number(where, "default_retry_delay", self.default_retry_delay)
            if self.default_retry_delay is None:
                raise ValueError(f"{where}: default_retry_delay must be a number, not None")
            check_optional_number(where, "retry_backoff_max", self.retry_backoff_max)
            if not isinstance(self.retry_backoff, bool) and not (
                is_finite(self.retry_backoff) and self.retry_backoff > 0
            ):
                raise ValueError(
                    f"{where}: retry_backoff must be True, False or a positive finite number "
                    f"(the factor), not {self.retry_backoff!r}"
                )
            check_max_retries(where, "max_retries", self.max_retries)
            if self.expires is not None and not isinstance(self.expires, dt.datetime):
                check_optional_number(where, "expires", self.expires)
            self._check_retry_kwargs(where, merged["retry_kwargs"])
            if self.serializer is not None:
                check_serializer(self.serializer)
            if self.compression is not None:
                check_compression(self.compression)
        except (ValueError, TypeError) as exc:
            message = str(exc) if str(exc).startswith(where) else f"{where}: {exc}"
            raise ImproperlyConfiguredTask(message) from None
        self._signature = inspect.signature(fn)
        self._fits = _signature_checker(self._signature)
        functools.update_wrapper(self, fn)
        tasks_registry.register(self)

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"

    @staticmethod
    def _check_retry_kwargs(where: str, retry_kwargs: Any) -> None:
        """``retry_kwargs`` are ``retry()``'s keyword arguments: checked as ``retry()`` would."""
        if not isinstance(retry_kwargs, dict):
            raise TypeError(
                f"{where}: retry_kwargs must be a dict, not {type(retry_kwargs).__name__}"
            )
        unknown = sorted(set(retry_kwargs) - RETRY_KWARGS)
        if unknown:
            raise ValueError(
                f"{where}: retry_kwargs: unknown option(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(RETRY_KWARGS))}"
            )
        options = {k: v for k, v in retry_kwargs.items() if k in RETRY_OPTIONS}
        check_retry_options(
            f"{where}: retry_kwargs",
            options,
            countdown=retry_kwargs.get("countdown"),
            eta=retry_kwargs.get("eta"),
            max_retries=retry_kwargs.get("max_retries"),
        )

    # -- the request context ----------------------------------------------------------------

    @property
    def request(self) -> Request:
        """The current call's context; a called-directly default outside a worker."""
        for task, request in reversed(request_stack()):
            if task is self:
                return request
        return Request(task=self.name, called_directly=True)

    # -- calling ------------------------------------------------------------------------------

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task here and now, in this process; no message is sent."""
        if self.bind:
            return self.run(self, *args, **kwargs)
        return self.run(*args, **kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> _result.AsyncResult:
        """Send the task with these arguments; returns an ``AsyncResult``."""
        return self.apply_async(args, kwargs)

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> _result.AsyncResult:
        """Like :meth:`delay`, but send only when the current transaction commits."""
        return self.apply_async(args, kwargs, on_commit=True)

    def check_arguments(self, args: tuple | list, kwargs: dict[str, Any]) -> None:
        """Raise ``TypeError`` naming the task if the arguments do not fit its signature."""
        if self.bind:
            args = (None, *args)
        if self._fits is not None:
            try:
                self._fits(*args, **kwargs)
                return
            except TypeError:  # a misfit: inspect's bind says why, in the docs' words
                pass
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}() {exc}") from None

    def _check_call(
        self, where: str, args: Any, kwargs: Any, options: dict[str, Any]
    ) -> tuple[tuple[Any, ...] | list[Any], dict[str, Any]]:
        """The call's ``args`` and ``kwargs``, once the option names, their types and (unless
        ``typing=False``) the function's signature accept them; ``TypeError`` otherwise."""
        if not CALL_OPTIONS.issuperset(options):
            unknown = sorted(set(options) - CALL_OPTIONS)
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
        return args, kwargs

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> _result.AsyncResult:
        """Send the task; options as in Celery's ``apply_async``. Returns an ``AsyncResult``."""
        where = f"{self.name}.apply_async()"
        args, kwargs = self._check_call(where, args, kwargs, options)
        if tasks_settings.TASK_ALWAYS_EAGER:
            if not options.pop("on_commit", False):
                return self.apply(args, kwargs, **options)
            # Run when the transaction commits; until then the result reads PENDING. The
            # call is checked now, as a sent one would be.
            options["task_id"] = build_outgoing(self, where, list(args), kwargs, options).task_id
            check_retry_policy(where, options.get("retry_policy") or {})
            pending = EagerResult(options["task_id"], states.PENDING, None, task_name=self.name)
            transaction.on_commit(lambda: pending.take(self.apply(args, kwargs, **options)))
            return pending
        outgoing, retry, policy = self._prepare_send(where, args, kwargs, options)
        transport = get_transport()
        if options.get("on_commit"):
            transport.send_on_commit(outgoing, retry=retry, retry_policy=policy)
        else:
            transport.send(outgoing, retry=retry, retry_policy=policy)
        ignore_result = bool(outgoing.options and outgoing.options.get("ignore_result"))
        return AsyncResult(outgoing.task_id, task_name=self.name, ignore_result=ignore_result)

    def _prepare_send(
        self, where: str, args: tuple | list, kwargs: dict[str, Any], options: dict[str, Any]
    ) -> tuple[OutgoingTask, bool, dict[str, Any]]:
        """The checked, encoded task to send, and the publish ``retry`` and policy."""
        outgoing = build_outgoing(self, where, list(args), kwargs, options)
        retry = options.get("retry")
        retry = tasks_settings.TASK_PUBLISH_RETRY if retry is None else bool(retry)
        policy = check_retry_policy(where, options.get("retry_policy") or {})
        return outgoing, retry, policy

    def prepare_member(
        self,
        args: tuple | list,
        kwargs: dict[str, Any],
        options: dict[str, Any],
        bulk: BulkSend,
    ) -> OutgoingTask:
        """A member of the bulk send ``bulk`` (a group), checked and encoded as
        ``apply_async`` would (its publish ``retry`` and policy set on ``bulk``); what
        members have alike is resolved and checked once."""
        where = f"{self.name}.apply_async()"
        args, kwargs = self._check_call(where, args, kwargs, options)
        outgoing = build_outgoing(self, where, list(args), kwargs, options, bulk)
        retry = options.get("retry")
        retry = tasks_settings.TASK_PUBLISH_RETRY if retry is None else bool(retry)
        given = options.get("retry_policy")
        key = (self.name, id(given))
        if key not in bulk.policies:
            bulk.policies[key] = (given, check_retry_policy(where, given or {}))
        bulk.retry, bulk.retry_policy = retry, bulk.policies[key][1]
        return outgoing

    # -- eager execution ----------------------------------------------------------------------

    def apply(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> EagerResult:
        """Run the task in this process as a worker would, returning an ``EagerResult``."""
        where = f"{self.name}.apply()"
        args, kwargs = self._check_call(where, args, kwargs, options)
        call_args, call_kwargs = list(args), dict(kwargs)
        outgoing = build_outgoing(self, where, call_args, call_kwargs, options)
        check_retry_policy(where, options.get("retry_policy") or {})  # as sending would
        # The JSON round trip a worker's arguments go through.
        call_args, call_kwargs = json_round_trip([call_args, call_kwargs])
        retries = 0
        extra = outgoing.options or {}
        while True:
            request = Request(
                id=outgoing.task_id,
                task=self.name,
                args=call_args,
                kwargs=call_kwargs,
                retries=retries,
                eta=None,
                expires=outgoing.expires,
                is_eager=True,
                called_directly=False,
                delivery_info={"queue": outgoing.queue, "priority": outgoing.priority},
                headers=extra.get("headers") or {},
                options=dict(extra),
            )
            run = run_task(self, request, call_args, call_kwargs)
            if run.retry is not None:
                retry = run.retry
                retries += 1
                if retry.args_override is not None:
                    call_args = json_round_trip(retry.args_override)
                if retry.kwargs_override is not None:
                    call_kwargs = json_round_trip(retry.kwargs_override)
                if "headers" in retry.options:
                    extra = {**extra, "headers": retry.options["headers"]}
                continue
            run_followups(run.followups)
            if run.exc is not None:
                return EagerResult(
                    outgoing.task_id,
                    states.FAILURE,
                    run.exc,
                    traceback=run.traceback,
                    task_name=self.name,
                    exc_dict=exception_to_dict(run.exc),
                    retries=retries,
                )
            value = json_round_trip(run.value)  # as stored by a worker
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
        where = f"{self.name}.retry()"
        unknown = sorted(set(options) - RETRY_OPTIONS)
        if unknown:
            raise TypeError(f"{where} got unknown option(s) {', '.join(map(repr, unknown))}")
        if options.get("priority", 0) is None:
            del options["priority"]  # None: keep the current priority
        if "queue" in options and options["queue"] is None:
            raise ValueError(f"{where}: queue must not be None (leave it out to keep the queue)")
        # Checked before the limit, so that a bad call is an error even on the last retry.
        check_retry_options(where, options, countdown=countdown, eta=eta, max_retries=max_retries)
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{request.args} kwargs:{request.kwargs}"
            )
        now = timezone.now()
        if options.get("expires") is not None:
            options["expires"] = to_datetime(where, "expires", options["expires"], now)
        if eta is not None:
            when = to_datetime(where, "eta", eta, now)
        else:
            delay = self.default_retry_delay if countdown is None else countdown
            when = to_datetime(where, "countdown", delay, now)
        retry = Retry(
            exc=exc,
            when=when,
            args_override=list(args) if args is not None else None,
            kwargs_override=dict(kwargs) if kwargs is not None else None,
            options=options,
        )
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
        from .store import store_custom_state  # models: not importable with the package

        request = self.request
        own = task_id is None or task_id == request.id
        task_id = task_id or request.id
        if not task_id:
            raise RuntimeError(f"{self.name}.update_state(): no task id (not running as a task)")
        check_json(meta, f"{self.name}.update_state() meta")
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

    def map(self, it: Iterable[Any]) -> Signature:
        """One task that calls this one on each item: ``add.map([1, 2])``."""
        from .canvas import xmap

        return xmap(self.s(), it)

    def starmap(self, it: Iterable[Any]) -> Signature:
        """One task that calls this one with each item's arguments: ``add.starmap([(1, 2)])``."""
        from .canvas import xstarmap

        return xstarmap(self.s(), it)

    def chunks(self, it: Iterable[Any], n: int) -> Signature:
        """``it`` (argument tuples) split into a group of ``starmap`` tasks of ``n`` each."""
        from .canvas import chunks

        return chunks(self.s(), it, n)

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

    # In this class's annotations ``AsyncResult`` could name this method, not the class:
    # they name the class through its module.
    def AsyncResult(self, task_id: str) -> _result.AsyncResult:
        """The result of a call of this task, by its id."""
        return AsyncResult(task_id, task_name=self.name)

    @property
    def resolved_acks_late(self) -> bool:
        return tasks_settings.TASK_ACKS_LATE if self.acks_late is None else self.acks_late

    @property
    def resolved_track_started(self) -> bool:
        if self.track_started is None:
            default: bool = tasks_settings.TASK_TRACK_STARTED
            return default
        return self.track_started


def _signature_checker(signature: inspect.Signature) -> Callable[..., None] | None:
    """A no-op function with ``signature``'s parameters (defaults and annotations left out):
    calling it checks arguments as the interpreter does, some 50 times faster than
    ``signature.bind``, which matters for groups of thousands. None where the parameters
    cannot be written out as source."""
    kinds = inspect.Parameter
    parts: list[str] = []
    positional_only = starred = False
    for param in signature.parameters.values():
        if not param.name.isidentifier() or keyword.iskeyword(param.name):
            return None
        default = "=None" if param.default is not param.empty else ""
        if param.kind is kinds.POSITIONAL_ONLY:
            positional_only = True
            parts.append(param.name + default)
            continue
        if positional_only:
            parts.append("/")
            positional_only = False
        if param.kind is kinds.VAR_POSITIONAL:
            parts.append(f"*{param.name}")
            starred = True
        elif param.kind is kinds.KEYWORD_ONLY:
            if not starred:
                parts.append("*")
                starred = True
            parts.append(param.name + default)
        elif param.kind is kinds.VAR_KEYWORD:
            parts.append(f"**{param.name}")
        else:
            parts.append(param.name + default)
    if positional_only:
        parts.append("/")
    namespace: dict[str, Any] = {}
    try:
        # Only parameter names go into the source, each checked to be an identifier above.
        exec(f"def fits({', '.join(parts)}):\n    pass", namespace)
    except SyntaxError:
        return None
    checker: Callable[..., None] = namespace["fits"]
    return checker


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
