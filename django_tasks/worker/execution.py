"""Running one claimed task and deciding its outcome (as a :class:`StateChange`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from django.utils import timezone
from kombu.exceptions import DecodeError, EncodeError

from .. import states
from ..context import Request
from ..exceptions import NotRegistered, Retry
from ..messages import (
    accepted_content_types,
    decode_arguments,
    encode_result,
    exception_to_dict,
    format_traceback,
)
from ..registry import tasks_registry
from ..results import StateChange, record_states, revoked_change
from ..transports import ClaimedTask

logger = logging.getLogger("django_tasks.worker")


@dataclass(slots=True)
class ExecutionContext:
    """What a consumer loop tells the executor about itself."""

    hostname: str
    lease_token: str
    accept: set[str]

    @classmethod
    def build(cls, hostname: str, lease_token: str, accept: list[str]) -> ExecutionContext:
        return cls(hostname, lease_token, accepted_content_types(accept))


def failure_change(
    claimed: ClaimedTask, exc: BaseException, *, detail: str = "", traceback: str | None = None
) -> StateChange:
    return StateChange(
        claimed.pk,
        states.FAILURE,
        {
            "result": exception_to_dict(exc),
            "traceback": traceback,
            "date_done": timezone.now(),
        },
        detail=detail or f"{type(exc).__name__}: {exc}",
    )


def execute(claimed: ClaimedTask, ctx: ExecutionContext) -> StateChange:
    """Run ``claimed`` (unless it is unknown, malformed, revoked or expired) -> its outcome."""
    started = time.monotonic()
    change = _execute(claimed, ctx)
    runtime = time.monotonic() - started
    logger.info(
        "Task %s[%s] %s in %.4fs%s",
        claimed.task_name,
        claimed.task_id,
        change.state,
        runtime,
        f": {change.detail}" if change.state != states.SUCCESS and change.detail else "",
    )
    return change


def _execute(claimed: ClaimedTask, ctx: ExecutionContext) -> StateChange:
    now = timezone.now()
    if claimed.revoked:
        return revoked_change(claimed.pk, "revoked", now)
    if claimed.expires is not None and claimed.expires <= now:
        return revoked_change(claimed.pk, "expired", now)
    task = tasks_registry.get(claimed.task_name)
    if task is None:
        exc = NotRegistered(claimed.task_name)
        return failure_change(claimed, exc, detail=f"unknown task {claimed.task_name!r}")
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
        return failure_change(claimed, exc, detail=f"malformed message: {exc}")

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
    )
    if task.resolved_track_started:
        record_states(
            [StateChange(claimed.pk, states.STARTED, {"date_started": now}, keep_lease=True)],
            worker=ctx.hostname,
            lease_token=ctx.lease_token,
        )
    try:
        value = task._run_with_request(request, args, kwargs)
        if request.pending_retry is not None:
            raise request.pending_retry
    except Retry as retry:
        return _retry_change(claimed, retry, args, kwargs)
    except Exception as exc:
        return failure_change(claimed, exc, traceback=format_traceback(exc))
    if request.ignore_result:
        return StateChange(claimed.pk, states.SUCCESS, delete=True)
    try:
        value = encode_result(value)
    except EncodeError as exc:
        return failure_change(claimed, exc, traceback=format_traceback(exc))
    return StateChange(
        claimed.pk,
        states.SUCCESS,
        {
            "result": value,
            "traceback": None,
            "date_done": timezone.now(),
        },
    )


def _retry_change(claimed: ClaimedTask, retry: Retry, args: list, kwargs: dict) -> StateChange:
    exc = retry.exc if retry.exc is not None else retry
    fields = {
        "result": exception_to_dict(exc),
        "traceback": format_traceback(exc) if exc.__traceback__ else None,
        "retries": claimed.retries + 1,
        "run_after": retry.when or timezone.now(),
        "date_started": None,
    }
    new_args = getattr(retry, "args_override", None)
    new_kwargs = getattr(retry, "kwargs_override", None)
    if (new_args is not None or new_kwargs is not None) and claimed.body is None:
        fields["args"] = new_args if new_args is not None else args
        fields["kwargs"] = new_kwargs if new_kwargs is not None else kwargs
    options = getattr(retry, "options", None) or {}
    if "queue" in options:
        fields["queue"] = options["queue"]
    if "priority" in options:
        fields["priority"] = options["priority"]
    return StateChange(
        claimed.pk,
        states.RETRY,
        fields,
        detail=f"retry {claimed.retries + 1} at {fields['run_after']:%H:%M:%S}: "
        f"{type(exc).__name__}: {exc}",
    )
