"""The scheduler that runs inside every ``runworker``: it sends each due run of the periodic
task entries exactly once, however many workers run it.

Each due run is decided and sent in one transaction: :func:`store.advance` moves the entry's
``last_due`` forward only if no scheduler recorded that due time (or a later one) yet, and the
task row is written with an id derived from the entry and the due time. A second scheduler, a
restart, or a crash between deciding and sending cannot send a run twice or lose it; a broker
message lost after the commit is sent by the relay, as for any task.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
import uuid
import zoneinfo
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .. import store
from ..conf import tasks_settings
from ..exceptions import EncodeError
from ..ids import new_id
from ..messages import check_json, safe_str
from ..models import PeriodicTask
from ..options import CALL_OPTIONS
from ..registry import tasks_registry
from ..schedules import schedule_from

logger = logging.getLogger("django_tasks.beat")

#: Due entries are read at most this often (and the scheduler then sleeps until each is due).
REFRESH = 1.0
#: The keys of a ``BEAT_SCHEDULE`` entry (Celery beat's), and the options it may not set.
ENTRY_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options", "relative"})
FORBIDDEN_OPTIONS = frozenset({"task_id", "group_id", "group_index", "chord", "parent_id"})
#: Task ids of scheduled runs are uuid5s of the entry and its due time in this namespace.
RUN_ID_NAMESPACE = uuid.UUID("6f1c1b40-7d53-4a8e-9d3a-4f1f5b7c2e10")


def beat_timezone() -> dt.tzinfo:
    """The zone crontabs are read in: ``BEAT_TIMEZONE``, else ``TIME_ZONE``."""
    return zoneinfo.ZoneInfo(tasks_settings.BEAT_TIMEZONE or settings.TIME_ZONE or "UTC")


def parse_entry(name: Any, value: Any) -> store.CodeEntry:
    """A ``BEAT_SCHEDULE`` entry, checked; ValueError saying what is wrong with it."""
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or "\x00" in name:
        raise ValueError("an entry's name must be text of 1 to 200 characters")
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a dict with 'task' and 'schedule', not {type(value).__name__}")
    unknown = sorted(set(value) - ENTRY_KEYS, key=str)
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(ENTRY_KEYS))}"
        )
    task = value.get("task")
    if not isinstance(task, str) or not task:
        raise ValueError(f"'task' must be a task name, not {task!r}")
    if task not in tasks_registry:
        raise ValueError(f"task {task!r} is not registered (no @task of that name is loaded)")
    if "schedule" not in value:
        raise ValueError("'schedule' is missing")
    schedule = schedule_from(value["schedule"])
    args = value.get("args", ())
    if not isinstance(args, list | tuple):
        raise ValueError(f"'args' must be a list or tuple, not {type(args).__name__}")
    kwargs = value.get("kwargs", {})
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError("'kwargs' must be a dict with text keys")
    options = value.get("options", {})
    if not isinstance(options, Mapping):
        raise ValueError(f"'options' must be a dict, not {type(options).__name__}")
    bad = sorted(set(options) - CALL_OPTIONS | (set(options) & FORBIDDEN_OPTIONS), key=str)
    if bad:
        raise ValueError(
            f"'options' cannot take {', '.join(map(repr, bad))}: apply_async options other "
            f"than {', '.join(sorted(FORBIDDEN_OPTIONS))}"
        )
    entry = store.CodeEntry(name, task, schedule, list(args), dict(kwargs), dict(options))
    _check_json(entry)
    return entry


def _check_json(entry: store.CodeEntry) -> None:
    for key in ("args", "kwargs", "options"):
        try:
            check_json(getattr(entry, key), key)
        except (EncodeError, RecursionError) as exc:
            raise ValueError(f"'{key}' cannot be stored as JSON: {safe_str(exc)}") from None


def code_entries() -> dict[str, store.CodeEntry]:
    """``BEAT_SCHEDULE``, checked (the system checks report what is wrong first)."""
    configured = tasks_settings.BEAT_SCHEDULE or {}
    return {name: parse_entry(name, value) for name, value in configured.items()}


def run_task_id(entry: PeriodicTask, due: dt.datetime) -> str:
    """The task id of ``entry``'s run due at ``due``: the same in every scheduler."""
    return str(uuid.uuid5(RUN_ID_NAMESPACE, f"{entry.pk}:{entry.name}:{due.isoformat()}"))


def send_run(
    entry: PeriodicTask, *, task_id: str, due: dt.datetime | None, period: dt.timedelta | None
) -> Any:
    """Send one run of ``entry``; raises what ``apply_async`` raises."""
    options = dict(entry.options or {})
    headers = dict(options.get("headers") or {})
    headers.setdefault("periodic_task_name", entry.name)
    if due is not None:
        headers.setdefault("periodic_due", due.isoformat())
    options["headers"] = headers
    if due is not None and period is not None:
        # A run nobody started by the time the next is due is not run: a backlog of
        # one entry's runs does not pile up.
        options.setdefault("expires", due + period)
    task = tasks_registry.get_task(entry.task)
    return task.apply_async(entry.args or [], entry.kwargs or {}, task_id=task_id, **options)


def run_now(entry: PeriodicTask) -> Any:
    """The admin's "run now": send one run at once, outside the schedule."""
    task_id = new_id()
    result = send_run(entry, task_id=task_id, due=None, period=None)
    store.record_manual_run(entry.pk, task_id, timezone.now())
    return result


class Scheduler:
    """Sends the due runs of every enabled entry; call :meth:`tick` often (the supervisor
    does, every 0.1 s). It reads the entries due within :data:`REFRESH` at most once per
    :data:`REFRESH`, so an idle scheduler costs one indexed query a second."""

    def __init__(self) -> None:
        self.tz = beat_timezone()
        self._due_soon: list[PeriodicTask] = []
        self._next_read = 0.0

    def sync(self) -> None:
        """Write ``BEAT_SCHEDULE`` into the entry rows (at worker start)."""
        created, updated, deleted = store.sync_code_entries(code_entries(), timezone.now(), self.tz)
        if created or updated or deleted:
            logger.info(
                "Periodic tasks from BEAT_SCHEDULE: %d new, %d changed, %d removed",
                created,
                updated,
                deleted,
            )

    def next_due_monotonic(self) -> float:
        """When (on the monotonic clock) the soonest entry read is due; inf if none."""
        dues = [e.next_due for e in self._due_soon if e.next_due is not None]
        if not dues:
            return math.inf
        return time.monotonic() + (min(dues) - timezone.now()).total_seconds()

    def tick(self) -> None:
        now = timezone.now()
        if time.monotonic() >= self._next_read:
            self._due_soon = store.entries_due_by(now + dt.timedelta(seconds=REFRESH))
            self._next_read = time.monotonic() + REFRESH
        for entry in [e for e in self._due_soon if e.next_due is not None and e.next_due <= now]:
            self._send_due(entry, now)

    def _send_due(self, entry: PeriodicTask, now: dt.datetime) -> None:
        assert entry.next_due is not None
        try:
            schedule = entry.get_schedule()
        except ValueError as exc:
            store.record_send_error(entry.pk, f"not sent: the schedule is not valid: {exc}")
            store.reschedule(entry.pk, None)
            self._due_soon.remove(entry)
            return
        due, following = schedule.latest_due(entry.next_due, now, self.tz)
        task_id = run_task_id(entry, due)
        sent = False
        with transaction.atomic():
            if not store.advance(entry, due, following, task_id, now):
                # Another scheduler sent it (or the entry changed): read it again later.
                self._due_soon.remove(entry)
                return
            try:
                with transaction.atomic():
                    send_run(entry, task_id=task_id, due=due, period=following - due)
                sent = True
            except Exception as exc:  # a bad admin-made entry must not stop the scheduler
                reason = f"{type(exc).__name__}: {safe_str(exc)}"
                logger.error(
                    "Periodic task %r: its run due at %s was not sent: %s", entry.name, due, reason
                )
                store.record_send_error(
                    entry.pk, f"run due at {due.isoformat()} not sent: {reason}"
                )
        if sent:  # committed
            late = (timezone.now() - due).total_seconds()
            logger.info(
                "Periodic task %r: sent its run due at %s (%.3f s late)", entry.name, due, late
            )
        entry.last_due, entry.next_due = due, following
