"""Running one claimed task and deciding its outcome (as a :class:`StateChange`)."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial

from django.db import connection, transaction
from django.utils import timezone
from kombu.exceptions import DecodeError, EncodeError

from .. import states
from ..context import Request
from ..exceptions import NotRegistered, Retry
from ..messages import (
    accepted_content_types,
    decode_arguments,
    encode_arguments,
    encode_result,
    exception_to_dict,
    format_traceback,
    serializer_of,
)
from ..registry import tasks_registry
from ..results import StateChange, record_states, revoked_change
from ..signature import Signature
from ..transports import ClaimedTask
from .limits import Enforcer, Limits

logger = logging.getLogger("django_tasks.worker")


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


def failure_change(
    pk: int, exc: BaseException, *, detail: str = "", traceback: str | None = None
) -> StateChange:
    return StateChange(
        pk,
        states.FAILURE,
        {
            "result": exception_to_dict(exc),
            "traceback": traceback,
            "date_done": timezone.now(),
        },
        detail=detail or f"{type(exc).__name__}: {exc}",
    )


def execute(claimed: ClaimedTask, ctx: ExecutionContext) -> Outcome:
    """Run ``claimed`` (unless it is unknown, malformed, revoked or expired) -> its outcome."""
    started = time.monotonic()
    outcome = _execute(claimed, ctx)
    if not isinstance(outcome, Outcome):
        outcome = Outcome(outcome)
    change = outcome.change
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


def _execute(claimed: ClaimedTask, ctx: ExecutionContext) -> StateChange | Outcome:
    now = timezone.now()
    if claimed.revoked:
        return revoked_change(claimed.pk, "revoked", now)
    if claimed.expires is not None and claimed.expires <= now:
        return revoked_change(claimed.pk, "expired", now)
    task = tasks_registry.get(claimed.task_name)
    if task is None:
        exc = NotRegistered(claimed.task_name)
        return failure_change(claimed.pk, exc, detail=f"unknown task {claimed.task_name!r}")
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
    except (DecodeError, Exception) as exc:
        return failure_change(claimed.pk, exc, detail=f"malformed message: {exc}")

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
    try:
        # Inside a caller's transaction (run_until_empty in a test), a savepoint keeps a
        # failing query in the task from breaking that transaction for the outcome write.
        limits = Limits.of(claimed.options, task)
        with (
            transaction.atomic() if connection.in_atomic_block else nullcontext(),
            ctx.enforcer.running(claimed.pk, limits),
        ):
            value = task._run_with_request(request, args, kwargs)
        if request.pending_retry is not None:
            raise request.pending_retry
    except Retry as retry:
        try:
            return _retry_change(claimed, retry, args, kwargs)
        except EncodeError as exc:
            return _failed(claimed, request, exc)
    except Exception as exc:
        return _failed(claimed, request, exc)
    if request.ignore_result:
        change = StateChange(claimed.pk, states.SUCCESS, delete=True)
    else:
        try:
            value = encode_result(value)
        except EncodeError as exc:
            return _failed(claimed, request, exc)
        change = StateChange(
            claimed.pk,
            states.SUCCESS,
            {"result": value, "traceback": None, "date_done": timezone.now()},
        )
    callbacks = claimed.options.get("link") or []
    return Outcome(change, [partial(apply_link, sig, value) for sig in callbacks])


def _failed(claimed: ClaimedTask, request: Request, exc: Exception) -> Outcome:
    traceback = format_traceback(exc)
    errbacks = claimed.options.get("link_error") or []
    return Outcome(
        failure_change(claimed.pk, exc, traceback=traceback),
        [partial(apply_errback, sig, request, exc, traceback) for sig in errbacks],
    )


def apply_link(sig: dict, value: object) -> None:
    """Send a success callback with the result prepended (unless it is immutable)."""
    Signature.from_dict(sig).apply_async((value,))


def apply_errback(sig: dict, request: Request, exc: Exception, traceback: str) -> None:
    """Call ``errback(request, exc, traceback)`` here, or send it with the failed task's id."""
    errback = Signature.from_dict(sig)
    if _unbound_parameters(errback) == 3:
        errback(request, exc, traceback)
    else:
        errback.apply_async((request.id,))


def _unbound_parameters(sig: Signature) -> int | None:
    task = tasks_registry.get(sig.task)
    if task is None:
        return None
    params = [
        p
        for p in inspect.signature(task.run).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if task.bind:
        params = params[1:]
    return len([p for p in params[len(sig.args) :] if p.name not in sig.kwargs])


def run_followups(followups: list[Callable[[], None]]) -> None:
    """Apply links after their parent's outcome is stored; a failing link changes nothing."""
    for followup in followups:
        try:
            followup()
        except Exception:
            logger.exception("A link of a finished task failed; the task's result stands")


def _reencoded(claimed: ClaimedTask, args: list, kwargs: dict) -> dict[str, object]:
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


def _retry_change(claimed: ClaimedTask, retry: Retry, args: list, kwargs: dict) -> StateChange:
    exc = retry.exc if retry.exc is not None else retry
    fields = {
        "result": exception_to_dict(exc),
        "traceback": format_traceback(exc) if exc.__traceback__ else None,
        "retries": claimed.retries + 1,
        "run_after": retry.when or timezone.now(),
        "date_started": None,
        "dispatched": False,  # a broker transport's relay publishes it when due
    }
    new_args = getattr(retry, "args_override", None)
    new_kwargs = getattr(retry, "kwargs_override", None)
    if new_args is not None or new_kwargs is not None:
        fields.update(
            _reencoded(
                claimed,
                new_args if new_args is not None else args,
                new_kwargs if new_kwargs is not None else kwargs,
            )
        )
    options = getattr(retry, "options", None) or {}
    for name in ("queue", "priority", "expires"):
        if name in options:
            fields[name] = options[name]
    if "headers" in options:
        fields["options"] = {**claimed.options, "headers": options["headers"]}
    return StateChange(
        claimed.pk,
        states.RETRY,
        fields,
        detail=f"retry {claimed.retries + 1} at {fields['run_after']:%H:%M:%S}: "
        f"{type(exc).__name__}: {exc}",
    )
