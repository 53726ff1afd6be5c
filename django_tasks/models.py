"""Stored tasks: one :class:`TaskResult` row per task id, and its state history.

The row is both the result *and*, on the database transport, the queue entry: a task
is claimable while it is ``PENDING`` or ``RETRY``, due (``run_after`` has passed) and
holds no lease. Every state change also adds a :class:`TaskStateChange` row; the
initial ``PENDING`` is implied by ``date_created`` so that sending stays one statement.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Count, F, Min, Q, Value
from django.db.models.functions import Concat
from kombu.utils.json import JSONEncoder as KombuJSONEncoder
from kombu.utils.json import object_hook as kombu_object_hook

from . import states
from .schedules import CRONTAB_FIELDS, Schedule, crontab, interval, schedule_from

STATE_CHOICES = sorted((s, s) for s in states.ALL_STATES)
CLAIMABLE_STATES = (states.PENDING, states.RETRY)


class TaskJSONEncoder(KombuJSONEncoder):
    """kombu's JSON encoder: dates, UUIDs and decimals survive the round trip."""


class TaskJSONDecoder(json.JSONDecoder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("object_hook", kombu_object_hook)
        super().__init__(*args, **kwargs)


def _json_field(**kwargs: Any) -> models.JSONField:
    return models.JSONField(
        null=True, blank=True, encoder=TaskJSONEncoder, decoder=TaskJSONDecoder, **kwargs
    )


def unindexed(field: str) -> Concat:
    """``field`` as an expression no index covers, to group by: so that SQLite's planner
    reads the rows the WHERE picks through its index (``date_done``'s), instead of walking a
    whole-table index (``queue``'s, ``task_name``'s) for the grouping's order."""
    return Concat(F(field), Value(""), output_field=models.CharField())


def _by_queue(row: dict[str, Any]) -> str:
    return str(row["queue"])


class TaskResultQuerySet(models.QuerySet["TaskResult"]):
    def ready(self) -> TaskResultQuerySet:
        return self.filter(state__in=states.READY_STATES)

    def unready(self) -> TaskResultQuerySet:
        return self.exclude(state__in=states.READY_STATES)

    def claimable(self, queues: list[str], now: Any) -> TaskResultQuerySet:
        """Due, unleased, waiting tasks of ``queues``, best first."""
        return self.filter(
            state__in=CLAIMABLE_STATES,
            lease_token__isnull=True,
            queue__in=queues,
            run_after__lte=now,
        ).order_by("-priority", "run_after", "id")

    def leased_until_before(self, when: Any) -> TaskResultQuerySet:
        return self.filter(lease_token__isnull=False, lease_expires__lt=when)

    def queue_overview(self, now: dt.datetime) -> list[dict[str, Any]]:
        """Per queue: ``due``, ``scheduled``, ``running``, ``failed``/``succeeded`` in the
        last hour, and ``oldest_due`` (the earliest ``run_after`` of a due task), in one query.

        Reads only unfinished rows and rows finished in the last hour (``date_done`` index).
        """
        hour_ago = now - dt.timedelta(hours=1)
        waiting = Q(state__in=CLAIMABLE_STATES, lease_token__isnull=True)
        due = waiting & Q(run_after__lte=now)
        recent = Q(date_done__gte=hour_ago)
        rows = (
            self.filter(Q(date_done__isnull=True) | recent)
            .order_by()
            .values(queue_key=unindexed("queue"))
            .annotate(
                due=Count("pk", filter=due),
                scheduled=Count("pk", filter=waiting & Q(run_after__gt=now)),
                running=Count("pk", filter=Q(lease_token__isnull=False, date_done__isnull=True)),
                failed=Count("pk", filter=recent & Q(state=states.FAILURE)),
                succeeded=Count("pk", filter=recent & Q(state=states.SUCCESS)),
                oldest_due=Min("run_after", filter=due),
            )
        )
        return sorted(({"queue": row.pop("queue_key"), **row} for row in rows), key=_by_queue)


class TaskResult(models.Model):
    """A task: what to run, where it is in its life, and its outcome."""

    # Unique through Meta.constraints: one index serves lookups and the admin's prefix search.
    task_id = models.CharField("task id", max_length=255)
    task_name = models.CharField("task name", max_length=255)
    state = models.CharField(max_length=50, default=states.PENDING, choices=STATE_CHOICES)
    queue = models.CharField(max_length=255, default="default")
    priority = models.SmallIntegerField(default=0, help_text="Higher runs first.")
    # Arguments: in ``args``/``kwargs`` for plain JSON, else encoded in ``body``.
    args = _json_field()
    kwargs = _json_field()
    body = models.BinaryField(null=True, blank=True, editable=False)
    content_type = models.CharField(
        max_length=100,
        blank=True,
        default="",
        help_text="Media type of body; empty for plain JSON args.",
    )
    options = _json_field(help_text="Call options: headers, links, ignore_result, ...")
    result = _json_field()
    traceback = models.TextField(null=True, blank=True)  # noqa: DJ001 - None as in Celery
    meta = _json_field()
    retries = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=255, blank=True, default="")
    # The foreign keys are indexed by partial indexes (Meta.indexes): most rows have neither.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )
    rerun_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="reruns",
        db_index=False,
        verbose_name="re-run of",
        help_text="The task this one re-runs (the admin's re-run action).",
    )
    date_created = models.DateTimeField("created")
    run_after = models.DateTimeField("run after", help_text="Not run before this time (eta).")
    expires = models.DateTimeField(null=True, blank=True)
    date_started = models.DateTimeField("started", null=True, blank=True)
    date_done = models.DateTimeField("done", null=True, blank=True, db_index=True)
    revoked = models.BooleanField(default=False, help_text="Revoke requested while running.")
    terminate_signal = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="revoke(terminate=True): the signal to stop it with."
    )
    # Broker transports: a message for this waiting task is with the broker. Rows that wait
    # without one (countdown/eta, retries, the on-commit outbox) are published by the relay.
    dispatched = models.BooleanField(default=False, editable=False)
    # NULL, not "", marks an unleased row: the claim index is partial on it.
    lease_token = models.CharField(max_length=32, null=True, blank=True, editable=False)  # noqa: DJ001
    lease_expires = models.DateTimeField(null=True, blank=True, editable=False)
    # The canvas: the chain step before this one, the group it belongs to (and its place in
    # it), and the chord whose header it is part of. Ids, not keys: each may be sent later.
    parent_id = models.CharField("parent id", max_length=255, null=True, blank=True)  # noqa: DJ001
    group_id = models.CharField("group id", max_length=255, null=True, blank=True)  # noqa: DJ001
    group_index = models.PositiveIntegerField("group index", null=True, blank=True)
    chord_id = models.CharField("chord id", max_length=255, null=True, blank=True)  # noqa: DJ001

    objects = TaskResultQuerySet.as_manager()

    class Meta:
        verbose_name = "task result"
        ordering = ["-date_created", "-id"]
        constraints = [
            # On PostgreSQL with the pattern operator class, so that the same index serves
            # equality and the admin's "start of an id" search (LIKE 'abc%') in any collation:
            # the default unique index would need a second, varchar_pattern_ops one.
            models.UniqueConstraint(
                fields=["task_id"],
                name="django_tasks_task_id_uniq",
                opclasses=["varchar_pattern_ops"],
            ),
        ]
        indexes = [
            # What a worker claims next, on the database transport.
            models.Index(
                fields=["queue", "-priority", "run_after"],
                condition=Q(state__in=CLAIMABLE_STATES, lease_token__isnull=True),
                name="django_tasks_due_idx",
            ),
            # Leases the reaper recovers.
            models.Index(
                fields=["lease_expires"],
                condition=Q(lease_token__isnull=False),
                name="django_tasks_lease_idx",
            ),
            # Waiting tasks a broker transport's relay publishes when due.
            models.Index(
                fields=["run_after"],
                condition=Q(state__in=CLAIMABLE_STATES, lease_token__isnull=True, dispatched=False),
                name="django_tasks_relay_idx",
            ),
            # The admin's list and the API's list: newest first, whole or filtered by state,
            # task name or queue (each also serves equality lookups on its first column).
            models.Index(fields=["-date_created", "-id"], name="django_tasks_created_idx"),
            models.Index(fields=["state", "-date_created"], name="django_tasks_state_idx"),
            models.Index(fields=["task_name", "-date_created"], name="django_tasks_name_idx"),
            models.Index(fields=["queue", "-date_created"], name="django_tasks_queue_idx"),
            # Waiting tasks that expire.
            models.Index(
                fields=["expires"],
                condition=Q(expires__isnull=False, state__in=CLAIMABLE_STATES),
                name="django_tasks_expires_idx",
            ),
            # The foreign keys, for deleting a user or a task that others point at. Partial:
            # a row without an owner or an original writes no entry at send, claim or finish.
            models.Index(
                fields=["owner"], condition=Q(owner__isnull=False), name="django_tasks_owner_idx"
            ),
            models.Index(
                fields=["rerun_of"],
                condition=Q(rerun_of__isnull=False),
                name="django_tasks_rerun_of_idx",
            ),
            # A group's tasks in order (progress, a chord's results); only canvas rows.
            models.Index(
                fields=["group_id", "group_index"],
                condition=Q(group_id__isnull=False),
                name="django_tasks_group_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_name}[{self.task_id}] {self.state}"

    @property
    def runtime(self) -> float | None:
        """Seconds from start to finish, when both are known."""
        if self.date_started and self.date_done:
            return (self.date_done - self.date_started).total_seconds()
        return None

    def state_history(self) -> list[tuple[str, Any]]:
        """``[(state, at), ...]`` oldest first, starting with the implied ``PENDING``."""
        rows = [(states.PENDING, self.date_created)]
        rows.extend((change.state, change.at) for change in self.history.all())  # prefetchable
        return rows


class TaskStateChange(models.Model):
    """One state transition of a task, in order."""

    task = models.ForeignKey(TaskResult, on_delete=models.CASCADE, related_name="history")
    state = models.CharField(max_length=50)
    at = models.DateTimeField()
    worker = models.CharField(max_length=255, blank=True, default="")
    detail = models.TextField(blank=True, default="")
    #: What ``on_message`` reports as ``result`` for this change: a custom state's meta,
    #: a retry's exception. Ready states read their result from the task row.
    meta = _json_field()

    class Meta:
        verbose_name = "state change"
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.state} at {self.at:%Y-%m-%d %H:%M:%S}"


class TaskGroup(models.Model):
    """A group as sent: its tasks' ids in order; for a chord, its body and its counter.

    A chord's ``remaining`` counts the header tasks that have not succeeded yet. The write
    that records a header task's success decrements it in the same transaction, and the one
    that brings it to zero sends the body there too: the body is sent exactly once.
    """

    #: Chord states: waiting for its header, body sent, failed (a header task did not
    #: succeed), revoked.
    CHORD_PENDING = "PENDING"
    CHORD_SENT = "SENT"
    CHORD_FAILED = "FAILURE"
    CHORD_REVOKED = "REVOKED"
    CHORD_STATES = [(s, s) for s in (CHORD_PENDING, CHORD_SENT, CHORD_FAILED, CHORD_REVOKED)]

    group_id = models.CharField("group id", max_length=255, unique=True)
    task_ids = models.JSONField("task ids", default=list, help_text="In the group's order.")
    size = models.PositiveIntegerField(default=0)
    date_created = models.DateTimeField("created")
    # Chords only.
    body = _json_field(help_text="The chord's body: a signature.")
    body_task_id = models.CharField(  # noqa: DJ001
        "body task id", max_length=255, null=True, blank=True, db_index=True
    )
    remaining = models.IntegerField(null=True, blank=True)
    chord_state = models.CharField(  # noqa: DJ001
        "chord state", max_length=20, null=True, blank=True, choices=CHORD_STATES
    )
    failed_task_id = models.CharField(  # noqa: DJ001
        "failed task id", max_length=255, null=True, blank=True
    )
    date_done = models.DateTimeField("done", null=True, blank=True)

    class Meta:
        verbose_name = "task group"
        ordering = ["-date_created", "-id"]

    def __str__(self) -> str:
        kind = "chord" if self.chord_state else "group"
        return f"{kind} {self.group_id} ({self.size} tasks)"

    @property
    def is_chord(self) -> bool:
        return self.chord_state is not None


class PeriodicTask(models.Model):
    """A schedule entry: ``DJANGO_TASKS["BEAT_SCHEDULE"]``'s (synced at worker start) or
    one made in the admin. Every scheduler sends a due run only by moving ``last_due``
    forward in one conditional update, so each due time is sent once."""

    SOURCE_CODE = "code"
    SOURCE_ADMIN = "admin"
    SOURCES = [(SOURCE_CODE, "settings (BEAT_SCHEDULE)"), (SOURCE_ADMIN, "admin")]
    #: How many of its latest runs' task ids an entry keeps, newest first.
    RECENT_RUNS = 10

    name = models.CharField(max_length=200, unique=True)
    task = models.CharField("task name", max_length=255)
    source = models.CharField(max_length=10, choices=SOURCES, default=SOURCE_ADMIN, editable=False)
    interval_seconds = models.FloatField(
        "every (seconds)", null=True, blank=True, help_text="An interval, or a crontab below."
    )
    minute = models.CharField(max_length=200, blank=True, default="")
    hour = models.CharField(max_length=200, blank=True, default="")
    day_of_week = models.CharField(
        "day of week", max_length=200, blank=True, default="", help_text="0 or sun … 6 or sat."
    )
    day_of_month = models.CharField("day of month", max_length=200, blank=True, default="")
    month_of_year = models.CharField("month of year", max_length=200, blank=True, default="")
    args = _json_field(default=list)
    kwargs = _json_field(default=dict)
    options = _json_field(
        default=dict, help_text="apply_async options: queue, priority, expires, …"
    )
    enabled = models.BooleanField(default=True)
    next_due = models.DateTimeField("next run", null=True, blank=True, editable=False)
    last_due = models.DateTimeField("last due", null=True, blank=True, editable=False)
    last_run_at = models.DateTimeField("last run", null=True, blank=True, editable=False)
    total_runs = models.PositiveIntegerField("total runs", default=0, editable=False)
    last_error = models.TextField(
        "last error",
        blank=True,
        default="",
        editable=False,
        help_text="Why the last due run could not be sent, if it could not.",
    )
    recent_task_ids = models.JSONField("recent task ids", default=list, blank=True, editable=False)
    date_changed = models.DateTimeField("changed", auto_now=True)

    class Meta:
        verbose_name = "periodic task"
        ordering = ["name"]
        indexes = [models.Index(fields=["enabled", "next_due"], name="django_tasks_beat_due")]

    def __str__(self) -> str:
        return self.name

    @property
    def is_crontab(self) -> bool:
        return self.interval_seconds is None

    def get_schedule(self) -> Schedule:
        """The entry's schedule; ValueError if its fields do not make one."""
        if self.interval_seconds is not None:
            if any(getattr(self, name) for name in CRONTAB_FIELDS):
                raise ValueError("give an interval or crontab fields, not both")
            return schedule_from(self.interval_seconds)
        fields = {name: getattr(self, name) or "*" for name in CRONTAB_FIELDS}
        if all(value == "*" for value in fields.values()) and not self.minute:
            raise ValueError("give an interval in seconds or at least a crontab minute")
        return schedule_from(crontab(**fields))

    def set_schedule(self, schedule: Schedule) -> None:
        """Store ``schedule`` in the entry's fields."""
        if isinstance(schedule, interval):
            self.interval_seconds = float(schedule.seconds)
            for name in CRONTAB_FIELDS:
                setattr(self, name, "")
        else:
            assert isinstance(schedule, crontab)
            self.interval_seconds = None
            for name in CRONTAB_FIELDS:
                setattr(self, name, schedule.field_text(name))


class RateLimitBucket(models.Model):
    """A rate-limited task's budget, shared by every worker (epoch seconds).

    ``allowed_at`` is the generic cell rate algorithm's "theoretical arrival time": a task may
    start while it is at most the tolerance ahead of now, and each start moves it on by one
    interval. A task held back is given the turn it would have had, and moves it on the same:
    tasks held back by every worker line up one interval apart instead of racing."""

    task_name = models.CharField("task name", max_length=255, primary_key=True)
    allowed_at = models.FloatField("allowed at", default=0.0)

    class Meta:
        verbose_name = "rate limit bucket"

    def __str__(self) -> str:
        return self.task_name


class WorkerRecordQuerySet(models.QuerySet["WorkerRecord"]):
    def live(self, now: dt.datetime, lease_seconds: float) -> WorkerRecordQuerySet:
        """Workers not stopped whose last heartbeat is within ``lease_seconds`` of ``now``."""
        cutoff = now - dt.timedelta(seconds=lease_seconds)
        return self.filter(stopped__isnull=True, last_heartbeat__gte=cutoff)

    def stale(self, now: dt.datetime, lease_seconds: float) -> WorkerRecordQuerySet:
        """Workers not stopped cleanly whose heartbeat is older than the lease (killed)."""
        cutoff = now - dt.timedelta(seconds=lease_seconds)
        return self.filter(stopped__isnull=True, last_heartbeat__lt=cutoff)

    def purgeable(self, cutoff: dt.datetime) -> WorkerRecordQuerySet:
        """Workers stopped before ``cutoff``, or silent since before it."""
        return self.filter(
            Q(stopped__lt=cutoff) | Q(stopped__isnull=True, last_heartbeat__lt=cutoff)
        )


class WorkerRecord(models.Model):
    """One ``runworker`` process: written by its supervisor at start, on each heartbeat
    (one UPDATE whatever the concurrency) and at a clean stop."""

    LIVE = "live"
    STALE = "stale"
    STOPPED = "stopped"

    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    queues = models.JSONField(default=list)
    pool = models.CharField(max_length=20)
    concurrency = models.PositiveIntegerField()
    started = models.DateTimeField()
    last_heartbeat = models.DateTimeField("last heartbeat")
    stopped = models.DateTimeField(null=True, blank=True)
    tasks_done = models.PositiveBigIntegerField(
        "tasks done", default=0, help_text="Tasks this worker ran to a final state."
    )
    tasks_failed = models.PositiveBigIntegerField(
        "tasks failed", default=0, help_text="Of the tasks done, those that ended in FAILURE."
    )
    #: ``[{"id": pk, "task_id": ..., "task_name": ...}, ...]`` as of the last heartbeat.
    running = models.JSONField(default=list, blank=True)

    objects = WorkerRecordQuerySet.as_manager()

    class Meta:
        verbose_name = "worker"
        ordering = ["hostname", "pid", "-started"]
        indexes = [models.Index(fields=["last_heartbeat"], name="django_tasks_worker_beat_idx")]

    def __str__(self) -> str:
        return f"{self.hostname}:{self.pid}"

    def status(self, now: dt.datetime, lease_seconds: float) -> str:
        """``live``, ``stale`` (no heartbeat within the lease: killed or hung) or ``stopped``."""
        if self.stopped is not None:
            return self.STOPPED
        age = (now - self.last_heartbeat).total_seconds()
        return self.LIVE if age <= lease_seconds else self.STALE
