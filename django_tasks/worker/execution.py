"""Running one claimed task and deciding its outcome (as a :class:`StateChange`).

The task's own run goes through :func:`django_tasks.execution.run_task`, as in eager mode;
what is worker-only is here: revoked and expired tasks, unknown task names, arguments that
cannot be decoded, time limits, ``track_started``, and turning the run into a state change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import django
from django.db import connection, transaction
from django.utils import timezone
from kombu.exceptions import DecodeError, EncodeError

from .. import states
from ..context import Request
from ..exceptions import NotRegistered, Retry, TaskError
from ..execution import Run, run_task
from ..messages import (
    accepted_content_types,
    decode_arguments,
    encode_arguments,
    exception_to_dict,
    format_traceback,
    safe_str,
    serializer_of,
)
from ..registry import tasks_registry
from ..store import (
    RESERVED_START,
    ClaimedTask,
    StateChange,
    failure_change,
    record_states,
    revoked_change,
)
from .limits import Enforcer, Limits

logger = logging.getLogger("django_tasks.worker")

#: Why a worker may not know a task its caller knows.
UNKNOWN_TASK_HINT = (
    "the worker that claimed it does not know it; if the task is newer than the worker, "
    "restart the workers"
)


@dataclass(slots=True)
class ExecutionContext:
    """What a consumer loop tells the executor about itself."""

    hostname: str
    lease_token: str
    accept: set[str]
    enforcer: Enforcer

    @classmethod
    def build(
        cls, hostname: str, lease_token: str, accept: list[str], enforcer: Enforcer
    ) -> ExecutionContext:
        return cls(hostname, lease_token, accepted_content_types(accept), enforcer)


@dataclass(slots=True)
class Outcome:
    """A task's state change, and the links to apply once it is recorded."""

    change: StateChange
    followups: list[Callable[[], None]] = field(default_factory=list)
    #: The followups as data, for the journal: ``link`` and ``value``, or ``link_error``
    #: with the exception, its traceback, and the task's id and name.
    replay: dict[str, Any] | None = None
    #: The errbacks to apply instead, should the database refuse ``change``.
    errbacks: Callable[[BaseException], list[Callable[[], None]]] | None = None

    def on_refused(self, exc: BaseException) -> list[Callable[[], None]]:
        """What to apply when ``change`` was refused and ``exc`` recorded in its place."""
        return self.errbacks(exc) if self.errbacks is not None else []


def execute(claimed: ClaimedTask, ctx: ExecutionContext) -> Outcome:
    """Run ``claimed`` (unless it is unknown, malformed, revoked or expired) -> its outcome.

    Never raises: whatever goes wrong with one task is that task's outcome alone.
    """
    started = time.monotonic()
    try:
        outcome = _execute(claimed, ctx)
    except BaseException as exc:  # a bug of ours, or a task that outwits run_task
        logger.exception(
            "Task %s[%s]: the worker failed to run it", claimed.task_name, claimed.task_id
        )
        outcome = Outcome(failure_change(claimed.pk, exc, traceback=format_traceback(exc)))
    change = outcome.change
    chord = claimed.options.get("chord")
    if isinstance(chord, str) and chord and change.state in states.READY_STATES:
        # Its outcome counts in a chord, in the transaction that records it.
        change.chord = chord
        change.counts = claimed.options.get("group_index") is not None
    runtime = time.monotonic() - started
    logger.info(
        "Task %s[%s] %s in %.4fs%s",
        claimed.task_name,
        claimed.task_id,
        change.state,
        runtime,
        f": {change.detail}" if change.state != states.SUCCESS and change.detail else "",
    )
    return outcome


def _execute(claimed: ClaimedTask, ctx: ExecutionContext) -> Outcome:
    now = timezone.now()
    if claimed.problem is not None:
        return Outcome(failure_change(claimed.pk, TaskError(claimed.problem)))
    if claimed.revoked:
        return Outcome(revoked_change(claimed.pk, "revoked", now))
    if claimed.expires is not None and claimed.expires <= now:
        return Outcome(revoked_change(claimed.pk, "expired", now))
    task = tasks_registry.get(claimed.task_name) or _django_task(claimed)
    if task is None:
        exc = NotRegistered(claimed.task_name, f"{UNKNOWN_TASK_HINT} ({ctx.hostname})")
        return Outcome(
            failure_change(
                claimed.pk, exc, detail=f"unknown task {claimed.task_name!r}: {UNKNOWN_TASK_HINT}"
            )
        )
    try:
        compression = claimed.options.get("compression")
        args, kwargs = decode_arguments(
            claimed.args,
            claimed.kwargs,
            claimed.body,
            claimed.content_type,
            compression,
            ctx.accept,
        )
        limits = Limits.of(claimed.options, task)
    except (DecodeError, Exception) as exc:
        return Outcome(
            failure_change(claimed.pk, exc, detail=f"malformed message: {safe_str(exc)}")
        )

    request = Request(
        id=claimed.task_id,
        task=claimed.task_name,
        args=args,
        kwargs=kwargs,
        retries=claimed.retries,
        eta=claimed.run_after,
        expires=claimed.expires,
        delivery_info={"queue": claimed.queue, "priority": claimed.priority},
        headers=claimed.options.get("headers") or {},
        options=claimed.options,
        hostname=ctx.hostname,
        is_eager=False,
        called_directly=False,
        ignore_result=bool(claimed.options.get("ignore_result")),
        row_pk=claimed.pk,
    )
    if task.resolved_track_started:
        record_states(
            [StateChange(claimed.pk, states.STARTED, {"date_started": now}, keep_lease=True)],
            worker=ctx.hostname,
            lease_token=ctx.lease_token,
        )
    guard = _guard(ctx.enforcer, claimed.pk, limits)
    run = run_task(task, request, args, kwargs, guard=guard)
    return _outcome(claimed, request, run, args, kwargs)


def _django_task(claimed: ClaimedTask) -> Any:
    """A ``django.tasks`` task's row (Django 6): our task that runs it, imported by its module
    path; None for any other row."""
    headers = claimed.options.get("headers")
    if not isinstance(headers, dict) or "django_task" not in headers or django.VERSION < (6,):
        return None
    from ..backend import resolve

    return resolve(claimed.task_name, headers["django_task"])


@contextmanager
def _guard(enforcer: Enforcer, pk: int, limits: Limits) -> Iterator[None]:
    """Around the task's own code: its time limits and, inside a caller's transaction
    (run_until_empty in a test), a savepoint, so that a failing query in the task does not
    break that transaction for the outcome write."""
    savepoint = transaction.atomic() if connection.in_atomic_block else nullcontext()
    with savepoint, enforcer.running(pk, limits):
        yield


def _outcome(
    claimed: ClaimedTask, request: Request, run: Run, args: list[Any], kwargs: dict[str, Any]
) -> Outcome:
    """The state change a run comes to, and what to apply once it is stored."""
    if run.retry is not None:
        try:
            return Outcome(_retry_change(claimed, run.retry, args, kwargs))
        except EncodeError as exc:
            run = Run.failure(request, exc)
    replay: dict[str, Any] | None = None
    if run.exc is not None:
        change = failure_change(claimed.pk, run.exc, traceback=run.traceback)
        if request.options.get("link_error"):
            replay = {
                "link_error": request.options["link_error"],
                "exc": change.fields["result"],
                "traceback": run.traceback,
                "task_id": claimed.task_id,
                "task_name": claimed.task_name,
            }
    else:
        if request.ignore_result and not request.options.get("chord"):
            # (A chord's header task keeps its result: the body gets it.)
            change = StateChange(claimed.pk, states.SUCCESS, delete=True)
        else:
            change = StateChange(
                claimed.pk,
                states.SUCCESS,
                {"result": run.value, "traceback": None, "date_done": timezone.now()},
            )
        if request.options.get("link"):
            replay = {"link": request.options["link"], "value": run.value}
    return Outcome(
        change,
        run.followups,
        replay,
        errbacks=lambda exc: Run.failure(request, exc).followups,
    )


def _reencoded(claimed: ClaimedTask, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """New arguments for a retry, encoded as the original call's were (EncodeError if not)."""
    plain = claimed.body is None
    encoded = encode_arguments(
        list(args),
        dict(kwargs),
        serializer="json" if plain else serializer_of(claimed.content_type),
        compression=None if plain else claimed.options.get("compression"),
        task_name=claimed.task_name,
    )
    return {"args": encoded.args, "kwargs": encoded.kwargs} if plain else {"body": encoded.body}


def _retry_change(
    claimed: ClaimedTask, retry: Retry, args: list[Any], kwargs: dict[str, Any]
) -> StateChange:
    exc: BaseException = retry.exc if retry.exc is not None else retry
    fields = {
        "result": exception_to_dict(exc),
        "traceback": format_traceback(exc) if exc.__traceback__ else None,
        "retries": claimed.retries + 1,
        "run_after": retry.when or timezone.now(),
        "date_started": None,
        "dispatched": False,  # a broker transport's relay publishes it when due
    }
    if retry.args_override is not None or retry.kwargs_override is not None:
        fields.update(
            _reencoded(
                claimed,
                retry.args_override if retry.args_override is not None else args,
                retry.kwargs_override if retry.kwargs_override is not None else kwargs,
            )
        )
    for name in ("queue", "priority", "expires"):
        if name in retry.options:
            fields[name] = retry.options[name]
    # A rate limit's turn is for this run: the retry lines up again.
    options = {k: v for k, v in claimed.options.items() if k != RESERVED_START}
    if "headers" in retry.options:
        options["headers"] = retry.options["headers"]
    if options != claimed.options:
        fields["options"] = options
    return StateChange(
        claimed.pk,
        states.RETRY,
        fields,
        detail=f"retry {claimed.retries + 1} at {fields['run_after']:%H:%M:%S}: "
        f"{type(exc).__name__}: {safe_str(exc)}",
    )
