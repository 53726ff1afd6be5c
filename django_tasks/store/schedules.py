"""Periodic task entries: the rows every scheduler shares.

* A scheduler sends a due run only after :func:`advance` moved the entry's ``last_due`` to
  that due time in one conditional ``UPDATE``, in the transaction that sends the task: of any
  number of schedulers, exactly one succeeds for each due time, and a crash before commit
  leaves nothing decided.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, Q

from ..models import PeriodicTask
from ..schedules import Schedule


@dataclass(frozen=True, slots=True)
class CodeEntry:
    """A ``BEAT_SCHEDULE`` entry, checked."""

    name: str
    task: str
    schedule: Schedule
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]


def sync_code_entries(
    entries: Mapping[str, CodeEntry], now: dt.datetime, tz: dt.tzinfo
) -> tuple[int, int, int]:
    """Make the code entries' rows match ``entries``: create new ones, update changed ones
    (keeping ``enabled``, and the next due time unless the schedule changed), delete code
    rows no longer in settings. Returns (created, updated, deleted)."""
    created = updated = 0
    for entry in entries.values():
        for _attempt in range(3):  # workers starting together create the same rows
            try:
                with transaction.atomic():
                    row = PeriodicTask.objects.select_for_update().filter(name=entry.name).first()
                    if row is None:
                        row = PeriodicTask(name=entry.name, source=PeriodicTask.SOURCE_CODE)
                        _fill(row, entry)
                        row.next_due = entry.schedule.next_after(now, tz)
                        row.save()
                        created += 1
                    elif _differs(row, entry):
                        schedule_changed = _schedule_of(row) != entry.schedule
                        row.source = PeriodicTask.SOURCE_CODE
                        _fill(row, entry)
                        if schedule_changed or row.next_due is None:
                            row.next_due = entry.schedule.next_after(now, tz)
                        row.save()
                        updated += 1
                break
            except IntegrityError:
                continue
    gone = PeriodicTask.objects.filter(source=PeriodicTask.SOURCE_CODE).exclude(
        name__in=list(entries)
    )
    deleted, _ = gone.delete()
    return created, updated, deleted


def _fill(row: PeriodicTask, entry: CodeEntry) -> None:
    row.task = entry.task
    row.set_schedule(entry.schedule)
    row.args = entry.args
    row.kwargs = entry.kwargs
    row.options = entry.options


def _schedule_of(row: PeriodicTask) -> Schedule | None:
    try:
        return row.get_schedule()
    except ValueError:
        return None


def _differs(row: PeriodicTask, entry: CodeEntry) -> bool:
    return (
        row.source != PeriodicTask.SOURCE_CODE
        or row.task != entry.task
        or _schedule_of(row) != entry.schedule
        or row.args != entry.args
        or row.kwargs != entry.kwargs
        or row.options != entry.options
    )


def entries_due_by(when: dt.datetime) -> list[PeriodicTask]:
    """Enabled entries due by ``when`` (one indexed query), soonest first."""
    return list(
        PeriodicTask.objects.filter(enabled=True, next_due__lte=when).order_by("next_due", "pk")
    )


def advance(
    entry: PeriodicTask, due: dt.datetime, following: dt.datetime, task_id: str, now: dt.datetime
) -> bool:
    """Record that ``entry``'s run due at ``due`` is being sent as ``task_id``, unless a run due
    then or later was recorded already, or the entry was changed (the admin, a worker's
    sync) since it was read; True when this call recorded it.

    Call it in the transaction that sends the task."""
    assert transaction.get_connection().in_atomic_block, (
        "advance() belongs in the send's transaction"
    )
    moved = PeriodicTask.objects.filter(
        Q(last_due__isnull=True) | Q(last_due__lt=due),
        pk=entry.pk,
        enabled=True,
        date_changed=entry.date_changed,  # not edited since it was read
    ).update(
        last_due=due,
        next_due=following,
        last_run_at=now,
        total_runs=F("total_runs") + 1,
        last_error="",
    )
    if moved:
        remember_run(entry.pk, task_id)
    return bool(moved)


def remember_run(pk: int, task_id: str) -> None:
    """Put ``task_id`` first in the entry's recent runs."""
    recent = PeriodicTask.objects.filter(pk=pk).values_list("recent_task_ids", flat=True).first()
    kept = [task_id, *[t for t in (recent or []) if t != task_id]][: PeriodicTask.RECENT_RUNS]
    PeriodicTask.objects.filter(pk=pk).update(recent_task_ids=kept)


def record_manual_run(pk: int, task_id: str, now: dt.datetime) -> None:
    """A "run now": count it, without touching the due times."""
    with transaction.atomic():
        PeriodicTask.objects.filter(pk=pk).update(
            last_run_at=now, total_runs=F("total_runs") + 1, last_error=""
        )
        remember_run(pk, task_id)


def record_send_error(pk: int, error: str) -> None:
    """Why the entry's last due run could not be sent (the admin shows it)."""
    PeriodicTask.objects.filter(pk=pk).update(last_error=error[:2000])


def reschedule(pk: int, next_due: dt.datetime | None) -> None:
    """Set the entry's next due time (None: not scheduled until it is saved again)."""
    PeriodicTask.objects.filter(pk=pk).update(next_due=next_due)
