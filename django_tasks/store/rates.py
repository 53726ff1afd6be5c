"""Rate limits held in the database, shared by every worker.

Each rate-limited task name has a bucket row (:class:`~django_tasks.models.RateLimitBucket`).
A worker that claimed tasks of that name asks :func:`take_starts` which may start now, with
one read and one compare-and-set of that row (the generic cell rate algorithm: starts one
interval apart on average, a small burst tolerated so that late claims catch up). Those that
may not start go back to the queue due at the time they may, marked so that a task coming
back is not given a new place behind the others.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import IntegrityError, transaction

from ..models import RateLimitBucket, TaskResult
from .leases import RELEASED

#: The options key that marks a task given back to wait for its turn (epoch seconds).
RESERVED_START = "rate_limit_start"
#: How many times a take is tried again when other workers changed the row meanwhile.
MAX_ATTEMPTS = 100


def take_starts(
    task_name: str, returning: list[bool], spacing: float, tolerance: float, now: float
) -> list[float | None]:
    """For each claimed task of ``task_name`` (``returning``: whether it is back from waiting
    its turn): None if it may start now, else the time (epoch seconds) it is due again.

    A start is allowed while the bucket's ``allowed_at`` is at most ``tolerance`` ahead of now,
    and moves it on by ``spacing``. A returning task refused waits until the bucket allows;
    a new one refused gets the next free slot, one ``spacing`` after the last one handed out.
    """
    for _attempt in range(MAX_ATTEMPTS):
        row = (
            RateLimitBucket.objects.filter(task_name=task_name)
            .values_list("allowed_at", "next_slot")
            .first()
        )
        if row is None:
            try:
                with transaction.atomic():
                    RateLimitBucket.objects.create(task_name=task_name)
            except IntegrityError:
                pass  # another worker made it
            continue
        allowed_at, next_slot = row
        answers: list[float | None] = []
        at, slot = allowed_at, next_slot
        for back in returning:
            if at - now <= tolerance:
                at = max(at, now) + spacing
                answers.append(None)
            elif back:
                answers.append(at - tolerance)
            else:
                slot = max(slot, at - tolerance, now)
                answers.append(slot)
                slot += spacing
        updated = RateLimitBucket.objects.filter(
            task_name=task_name, allowed_at=allowed_at, next_slot=next_slot
        ).update(allowed_at=at, next_slot=slot)
        if updated:
            return answers
    raise RuntimeError(f"the rate limit bucket of {task_name!r} is changed too often to use")


def wait_for_turn(
    lease_token: str, waiting: list[tuple[int, float, dict[str, Any]]], *, republish: bool
) -> int:
    """Give back leased tasks ``(pk, at, options)``, due again at ``at`` (epoch seconds) and
    marked as waiting their turn; ``republish``: a broker's relay sends them again then.
    Returns how many were given back."""
    returned = 0
    with transaction.atomic():
        for pk, at, options in waiting:
            fields: dict[str, Any] = {
                **RELEASED,
                "run_after": dt.datetime.fromtimestamp(at, tz=dt.UTC),
                "options": {**options, RESERVED_START: at},
            }
            if republish:
                fields["dispatched"] = False
            returned += TaskResult.objects.filter(pk=pk, lease_token=lease_token).update(**fields)
    return returned


def is_returning(options: dict[str, Any], run_after: dt.datetime | None) -> bool:
    """Whether a claimed task is back from waiting its turn: marked so, and still due at that
    time (a retry moves the due time, and the task then lines up again)."""
    at = options.get(RESERVED_START)
    if not isinstance(at, int | float) or isinstance(at, bool) or run_after is None:
        return False
    return abs(run_after.timestamp() - at) < 0.001
