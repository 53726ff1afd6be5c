"""Rate limits held in the database, shared by every worker.

Each rate-limited task name has a bucket row holding the next free start time (the generic
cell rate algorithm's "theoretical arrival time"). A worker that claimed ``n`` tasks of that
name reserves ``n`` consecutive start times, one every ``period / limit`` seconds, with one
compare-and-set on that row: the first may start now if its time has come; the others go back
to the queue due at their reserved times, marked so that they do not reserve again.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from ..models import RateLimitBucket, TaskResult

#: The options key that marks a task given back to wait for its reserved start time.
RESERVED_START = "rate_limit_start"
#: How many times a reservation is tried again when other workers changed the row meanwhile.
MAX_ATTEMPTS = 100


def reserve_starts(task_name: str, count: int, spacing: float, now: float) -> list[float]:
    """Reserve ``count`` start times of ``task_name``, ``spacing`` seconds apart, from the
    bucket's next free time or now, whichever is later (epoch seconds)."""
    for _attempt in range(MAX_ATTEMPTS):
        current = (
            RateLimitBucket.objects.filter(task_name=task_name)
            .values_list("next_free", flat=True)
            .first()
        )
        if current is None:
            try:
                with transaction.atomic():
                    RateLimitBucket.objects.create(task_name=task_name, next_free=0.0)
            except IntegrityError:
                pass  # another worker made it
            continue
        first = max(current, now)
        if RateLimitBucket.objects.filter(task_name=task_name, next_free=current).update(
            next_free=first + count * spacing
        ):
            return [first + k * spacing for k in range(count)]
    raise RuntimeError(f"the rate limit bucket of {task_name!r} is changed too often to reserve")


def wait_for_reserved_start(
    lease_token: str, waiting: list[tuple[int, float, dict[str, Any]]], *, republish: bool
) -> int:
    """Give back leased tasks ``(pk, start, options)`` due at their reserved start time
    (epoch seconds), marked as holding it; ``republish``: a broker's relay sends them again
    then. Returns how many were given back."""
    returned = 0
    with transaction.atomic():
        for pk, start, options in waiting:
            fields: dict[str, Any] = {
                "run_after": dt.datetime.fromtimestamp(start, tz=dt.UTC),
                "options": {**options, RESERVED_START: start},
                "lease_token": None,
                "lease_expires": None,
                "worker": "",
                "date_started": None,
            }
            if republish:
                fields["dispatched"] = False
            returned += TaskResult.objects.filter(pk=pk, lease_token=lease_token).update(**fields)
    return returned


def holds_reserved_start(options: dict[str, Any], run_after: dt.datetime | None) -> bool:
    """Whether a claimed task was given back for a start time it reserved, and that time is
    still its due time (a retry moves the due time, and then reserves again)."""
    start = options.get(RESERVED_START)
    if not isinstance(start, int | float) or isinstance(start, bool) or run_after is None:
        return False
    return abs(run_after.timestamp() - start) < 0.001 and run_after <= timezone.now()
