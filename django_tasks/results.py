"""The one place that records state changes: the task row and its history, together.

Workers, revoke, expiry and the lease reaper all call :func:`record_states`, which
writes a batch of changes with one ``UPDATE`` per kind of change and one ``INSERT`` of
history rows, in one transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from . import states
from .exceptions import TaskRevokedError
from .messages import exception_to_dict
from .models import CLAIMABLE_STATES, TaskResult, TaskStateChange

logger = logging.getLogger("django_tasks.results")

LEASE_RELEASED = {"lease_token": None, "lease_expires": None}


@dataclass(slots=True)
class StateChange:
    """A task (by row ``pk``) moving to ``state``, with the columns that change with it."""

    pk: int
    state: str
    fields: dict[str, Any] = field(default_factory=dict)
    detail: str = ""
    #: Keep the worker's lease (STARTED, custom states) instead of releasing it.
    keep_lease: bool = False
    #: Delete the row instead (a successful ``ignore_result`` task).
    delete: bool = False


def record_states(
    changes: list[StateChange],
    *,
    worker: str = "",
    lease_token: str | None = None,
    guard: Q | None = None,
) -> int:
    """Write ``changes`` and their history rows; return how many tasks changed.

    With ``lease_token``, only tasks still leased under that token change (a worker whose
    lease was recovered by another does not overwrite the outcome). ``guard`` narrows it
    further.
    """
    if not changes:
        return 0
    now = timezone.now()
    base = TaskResult.objects.all()
    if lease_token is not None:
        base = base.filter(lease_token=lease_token)
    if guard is not None:
        base = base.filter(guard)
    applied: list[StateChange] = []
    with transaction.atomic():
        groups: dict[tuple[Any, ...], list[StateChange]] = {}
        deletes: list[StateChange] = []
        for change in changes:
            if change.delete:
                deletes.append(change)
            else:
                groups.setdefault((tuple(sorted(change.fields)), change.keep_lease), []).append(
                    change
                )
        for (field_names, keep_lease), group in groups.items():
            names = ["state", *field_names] + ([] if keep_lease else list(LEASE_RELEASED))
            objs = [
                TaskResult(
                    pk=c.pk, state=c.state, **c.fields, **({} if keep_lease else LEASE_RELEASED)
                )
                for c in group
            ]
            updated = base.bulk_update(objs, names)
            if updated == len(group):
                applied.extend(group)
            else:  # Rare: some leases were lost meanwhile; find which rows did change.
                for change, obj in zip(group, objs, strict=True):
                    values = {name: getattr(obj, name) for name in names}
                    if base.filter(pk=change.pk).update(**values):
                        applied.append(change)
        if deletes:
            pks = list(base.filter(pk__in=[c.pk for c in deletes]).values_list("pk", flat=True))
            TaskResult.objects.filter(pk__in=pks).delete()
        history = [
            TaskStateChange(task_id=c.pk, state=c.state, at=now, worker=worker, detail=c.detail)
            for c in applied
        ]
        if history:
            TaskStateChange.objects.bulk_create(history)
    lost = len(changes) - len(applied) - len(deletes)
    if lost:
        logger.warning(
            "%d outcome(s) not recorded: their lease had been recovered by another worker", lost
        )
    return len(applied) + len(deletes)


def store_custom_state(
    task_id: str, state: str, meta: dict[str, Any] | None, worker: str | None = None
) -> None:
    """Store a state of the task's own choosing (``update_state``) with its meta."""
    if state in states.READY_STATES:
        raise ValueError(
            f"update_state(): {state!r} is a ready state; return or raise from the task instead"
        )
    pk = TaskResult.objects.filter(task_id=task_id).values_list("pk", flat=True).first()
    if pk is None:
        raise ValueError(f"update_state(): no task with id {task_id!r} is stored")
    record_states([StateChange(pk, state, {"meta": meta}, keep_lease=True)], worker=worker or "")


def revoke(task_id: str, *, reason: str = "revoked") -> bool:
    """Revoke a task: a waiting one becomes ``REVOKED`` now; a claimed one is marked.

    Returns False for an id that is not stored or already finished.
    """
    row = TaskResult.objects.filter(task_id=task_id).values("pk", "state").first()
    if row is None or row["state"] in states.READY_STATES:
        return False
    now = timezone.now()
    waiting = Q(lease_token__isnull=True, state__in=CLAIMABLE_STATES)
    if record_states([revoked_change(row["pk"], reason, now)], guard=waiting):
        return True
    # Claimed by a worker: it checks the mark before it starts the task.
    return bool(
        TaskResult.objects.filter(pk=row["pk"])
        .exclude(state__in=states.READY_STATES)
        .update(revoked=True)
    )


def revoked_change(pk: int, reason: str, now: dt.datetime) -> StateChange:
    exc = TaskRevokedError(reason)
    return StateChange(
        pk,
        states.REVOKED,
        {
            "result": exception_to_dict(exc),
            "traceback": None,
            "date_done": now,
            "meta": {"reason": reason},
        },
        detail=reason,
    )


def forget(task_id: str) -> None:
    """Delete a task's stored result and history."""
    TaskResult.objects.filter(task_id=task_id).delete()
