"""Leases: which worker holds which task, for how long, and what happens when it is gone.

* A claim leases a batch of due rows in one statement: ``UPDATE … WHERE id IN (SELECT … FOR
  UPDATE SKIP LOCKED) RETURNING …`` on PostgreSQL, the same without row locks on SQLite
  (one statement is one short write transaction there), and ``SELECT … FOR UPDATE SKIP
  LOCKED`` then ``UPDATE`` in a transaction on MySQL/MariaDB.
* A lease is a token and an expiry; workers renew theirs, and any worker recovers the ones
  that ran out with the lost-worker rule, whose ``acks_late`` policy the worker passes in.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from .. import states
from ..exceptions import WorkerLostError
from ..models import CLAIMABLE_STATES, TaskResult, TaskStateChange
from .changes import StateChange, failure_change, record_states, revoked_change
from .sql import convert_leniently, finish_value

logger = logging.getLogger("django_tasks.transport")

#: The columns a claim reads, in :class:`ClaimedTask`'s order.
CLAIM_COLUMNS = (
    "id",
    "task_id",
    "task_name",
    "state",
    "args",
    "kwargs",
    "body",
    "content_type",
    "options",
    "retries",
    "queue",
    "priority",
    "run_after",
    "expires",
    "revoked",
    "owner_id",
)
#: What a broker message is built from: the claimed columns, less those only a worker needs.
RELAY_COLUMNS = tuple(
    c for c in CLAIM_COLUMNS if c not in ("state", "run_after", "revoked", "owner_id")
)
#: Decides, by task name, whether a lost task is queued again (``acks_late``) or fails.
AcksLatePolicy = Callable[[str], bool]
#: The options key that marks a task a rate limit held back: its turn (epoch seconds).
RESERVED_START = "rate_limit_start"
#: How long after its turn the relay leaves a task a rate limit held back to the worker that
#: held it (which claims it from its row at its turn) before publishing it: a message would
#: queue behind the broker's backlog and come back late.
HELD_GRACE = 1.0


@dataclass(slots=True)
class ClaimedTask:
    """A task a worker holds a lease on, as read from its row."""

    pk: int
    task_id: str
    task_name: str
    state: str
    args: Any
    kwargs: Any
    body: bytes | None
    content_type: str
    options: dict[str, Any]
    retries: int
    queue: str
    priority: int
    run_after: dt.datetime
    expires: dt.datetime | None
    revoked: bool
    owner_id: Any
    #: The broker message it came in, while it is still to be acknowledged (broker transports).
    delivery: Any = None
    #: Why the row cannot be run as stored (e.g. its options are not a JSON object), if so.
    problem: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.options, dict):
            self.problem = (
                f"malformed row: options is a {type(self.options).__name__}, not a JSON object"
            )
            self.options = {}


@dataclass(frozen=True, slots=True)
class Claim:
    """What one claim asks for: due tasks of ``queues``, or those of ``task_ids`` (the tasks
    a broker delivered, or a rate limit held back); ``unpublished``: only due tasks that
    wait without a message (broker transports), oldest first."""

    queues: list[str]
    limit: int
    token: str
    lease_seconds: float
    worker: str
    task_ids: list[str] | None = None
    unpublished: bool = False


def claim(request: Claim) -> list[ClaimedTask]:
    """Lease up to ``request.limit`` due, unleased tasks; best first."""
    now = timezone.now()
    if connection.vendor in ("postgresql", "sqlite"):
        claimed = _claim_returning(request, now)
    else:
        claimed = [_to_claimed(row) for row in _claim_select_then_update(request, now)]
    claimed.sort(key=lambda c: (-c.priority, c.run_after, c.pk))
    return claimed


def _claim_returning(c: Claim, now: dt.datetime) -> list[ClaimedTask]:
    """One ``UPDATE … WHERE id IN (SELECT … [FOR UPDATE SKIP LOCKED]) RETURNING``."""
    table = connection.ops.quote_name(TaskResult._meta.db_table)
    adapt = connection.ops.adapt_datetimefield_value
    values: list[str]
    if c.task_ids is None:
        column, values, order = "queue", c.queues, "priority DESC, run_after, id"
        lock = " FOR UPDATE SKIP LOCKED"
    else:
        # Rows a broker delivered: wait for a lock held by the relay that is publishing
        # them (skipping would drop the delivery); lock in id order, so claimers of
        # duplicate deliveries cannot deadlock.
        column, values, order = "task_id", c.task_ids, "id"
        lock = " FOR UPDATE"
    unpublished = ""
    if c.unpublished:
        unpublished, order = " AND NOT dispatched", "run_after, id"  # the relay's index
    if connection.vendor != "postgresql":
        lock = ""
    marks = ", ".join(["%s"] * len(values))
    sql = (
        f"UPDATE {table} SET lease_token = %s, lease_expires = %s, worker = %s, "
        f"date_started = %s WHERE id IN (SELECT id FROM {table} "
        f"WHERE state IN (%s, %s) AND lease_token IS NULL AND {column} IN ({marks}) "
        f"AND run_after <= %s{unpublished} ORDER BY {order} LIMIT %s{lock}) "
        f"RETURNING {', '.join(CLAIM_COLUMNS)}"
    )
    params = [
        c.token,
        adapt(now + dt.timedelta(seconds=c.lease_seconds)),
        c.worker,
        adapt(now),
        *CLAIMABLE_STATES,
        *values,
        adapt(now),
        c.limit,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [_claimed_from_row(row) for row in rows]


def _claimed_from_row(row: Any) -> ClaimedTask:
    """A claimed row as a :class:`ClaimedTask`; a row that cannot be read whole is still
    claimed, with its :attr:`~ClaimedTask.problem` saying why, so that it fails alone."""
    values, problems = convert_leniently(CLAIM_COLUMNS, row)
    claimed = ClaimedTask(*values)
    if problems:
        claimed.problem = "malformed row: " + "; ".join(
            f"{column} cannot be read ({why})" for column, why in problems.items()
        )
    return claimed


def _claim_select_then_update(c: Claim, now: dt.datetime) -> list[TaskResult]:
    """MySQL/MariaDB (no UPDATE … RETURNING): lock the rows, then lease them."""
    skip_locked = connection.features.has_select_for_update_skip_locked
    with transaction.atomic():
        if c.task_ids is None:
            waiting = TaskResult.objects.claimable(c.queues, now)
            if c.unpublished:
                waiting = waiting.filter(dispatched=False).order_by("run_after", "id")
        else:
            skip_locked = False  # as on PostgreSQL: wait for the relay, in id order
            waiting = TaskResult.objects.filter(
                task_id__in=c.task_ids,
                state__in=CLAIMABLE_STATES,
                lease_token__isnull=True,
                run_after__lte=now,
            ).order_by("id")
        rows = list(
            waiting.select_for_update(skip_locked=skip_locked).only(
                *[col for col in CLAIM_COLUMNS if col != "owner_id"], "owner"
            )[: c.limit]
        )
        if rows:
            TaskResult.objects.filter(pk__in=[r.pk for r in rows]).update(
                lease_token=c.token,
                lease_expires=now + dt.timedelta(seconds=c.lease_seconds),
                worker=c.worker,
                date_started=now,
            )
    return rows


def _to_claimed(row: TaskResult) -> ClaimedTask:
    return ClaimedTask(*(finish_value(c, getattr(row, c)) for c in CLAIM_COLUMNS))


def renew(lease_tokens: list[str], lease_seconds: float) -> int:
    """Extend every lease held under ``lease_tokens``; returns how many tasks that kept."""
    if not lease_tokens:
        return 0
    until = timezone.now() + dt.timedelta(seconds=lease_seconds)
    if connection.vendor != "postgresql":
        return TaskResult.objects.filter(lease_token__in=lease_tokens).update(lease_expires=until)
    # Rows being written right now (an outcome, a retry) are skipped, not waited for: their
    # lease is being released, and waiting in another lock order than that write's could
    # deadlock with it.
    table = connection.ops.quote_name(TaskResult._meta.db_table)
    marks = ", ".join(["%s"] * len(lease_tokens))
    sql = (
        f"UPDATE {table} SET lease_expires = %s WHERE id IN (SELECT id FROM {table} "
        f"WHERE lease_token IN ({marks}) ORDER BY id FOR UPDATE SKIP LOCKED)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [connection.ops.adapt_datetimefield_value(until), *lease_tokens])
        return int(cursor.rowcount)


def give_back(lease_token: str, pks: list[int], *, republish: bool, **changes: Any) -> int:
    """Release leased, unstarted tasks for any worker to claim, with ``changes`` to their
    fields; returns how many.

    ``republish``: their message is gone (acknowledged), so a broker transport's relay
    publishes them again.
    """
    if not pks:
        return 0
    rows = TaskResult.objects.filter(pk__in=pks, lease_token=lease_token)
    return _give_back(rows, republish, **changes)


def give_back_unstarted(lease_token: str, *, except_pks: list[int]) -> int:
    """Release every waiting task still leased under ``lease_token`` but ``except_pks`` (the
    tasks a dead process had claimed and never began)."""
    unstarted = TaskResult.objects.filter(lease_token=lease_token, state__in=CLAIMABLE_STATES)
    return _give_back(unstarted.exclude(pk__in=except_pks), republish=True)


#: The fields of a task given back unstarted: no lease, no worker, not started.
RELEASED: dict[str, Any] = {
    "lease_token": None,
    "lease_expires": None,
    "worker": "",
    "date_started": None,
}


def _give_back(rows: Any, republish: bool, **changes: Any) -> int:
    released = {**RELEASED, **changes}
    if republish:
        released["dispatched"] = False
    return int(rows.update(**released))


def recover_lost(
    acks_late: AcksLatePolicy,
    lease_tokens: list[str] | None = None,
    *,
    max_redeliveries: int | None = None,
    on_failed: Callable[[int, BaseException], None] | None = None,
) -> int:
    """Apply the lost-worker rule to tasks whose lease ran out, or (``lease_tokens``) whose
    holders are gone: ``acks_late`` tasks are queued again, at most ``max_redeliveries``
    times (each one a ``PENDING`` history row), and fail with ``WorkerLostError`` after that;
    others fail at once. ``on_failed`` is told of each failure recorded (for its errbacks).
    Returns how many were recovered."""
    now = timezone.now()
    if lease_tokens is None:
        guard = Q(lease_expires__lt=now)
        rows = TaskResult.objects.leased_until_before(now)
    else:
        guard = Q(lease_token__in=lease_tokens)
        rows = TaskResult.objects.filter(guard)
    recovered = 0
    for pk, task_name, task_id, token, worker in rows.values_list(
        "pk", "task_name", "task_id", "lease_token", "worker"
    ):
        exc: WorkerLostError | None = None
        if acks_late(task_name):
            lost_before = redeliveries(pk)
            if max_redeliveries is None or lost_before < max_redeliveries:
                change = StateChange(
                    pk,
                    states.PENDING,
                    {"date_started": None, "worker": "", "dispatched": False},
                    detail=f"worker {worker} lost; queued again (acks_late, "
                    f"redelivery {lost_before + 1})",
                )
            else:
                exc = WorkerLostError(
                    f"Worker {worker} exited while running the task, which had been queued "
                    f"again {lost_before} time(s) after lost workers already "
                    f"(WORKER_LOST_MAX_REDELIVERIES): not queued again"
                )
        else:
            exc = WorkerLostError(
                f"Worker {worker} exited before recording the outcome of the task"
            )
        if exc is not None:
            change = failure_change(pk, exc, detail=f"worker {worker} lost")
            change.fields["date_done"] = now
        applied = record_states([change], lease_token=token, guard=guard)
        recovered += applied
        logger.warning(
            "Recovered task %s[%s] from lost worker %s: %s",
            task_name,
            task_id,
            worker,
            change.state,
        )
        if applied and exc is not None and on_failed is not None:
            on_failed(pk, exc)
    return recovered


def redeliveries(pk: int) -> int:
    """How often task row ``pk`` was queued again after a lost worker (its ``PENDING``
    history rows: sending implies the first ``PENDING`` and writes none)."""
    return TaskStateChange.objects.filter(task_id=pk, state=states.PENDING).count()


def revoke_expired(limit: int = 1000) -> int:
    """Mark waiting tasks whose ``expires`` has passed ``REVOKED`` (expired); how many.

    Catches tasks nobody claims, e.g. in a queue no worker reads."""
    now = timezone.now()
    waiting = Q(state__in=CLAIMABLE_STATES, lease_token__isnull=True, expires__lt=now)
    pks = list(TaskResult.objects.filter(waiting).values_list("pk", flat=True)[:limit])
    if not pks:
        return 0
    return record_states([revoked_change(pk, "expired", now) for pk in pks], guard=waiting)


def seconds_until_due(queues: list[str], cap: float) -> float:
    """Seconds until the next waiting task of ``queues`` is due, at most ``cap``."""
    now = timezone.now()
    next_due = (
        TaskResult.objects.filter(
            state__in=CLAIMABLE_STATES,
            lease_token__isnull=True,
            queue__in=queues,
            run_after__lte=now + dt.timedelta(seconds=cap),
        )
        .order_by("run_after")
        .values_list("run_after", flat=True)
        .first()
    )
    if next_due is None:
        return cap
    return max(0.0, min(cap, (next_due - now).total_seconds()))


def has_due_rows(queues: list[str]) -> bool:
    """Whether due, unleased tasks of ``queues`` wait in the database."""
    return TaskResult.objects.claimable(queues, timezone.now()).exists()


def revoked_among(pks: list[int]) -> set[int]:
    """Those of ``pks`` whose revoke was asked for after they were claimed."""
    return set(TaskResult.objects.filter(pk__in=pks, revoked=True).values_list("pk", flat=True))


def terminate_requests(pks: list[int]) -> list[tuple[int, int]]:
    """``(pk, signal)`` for those of ``pks`` revoked with ``terminate=True``."""
    rows = TaskResult.objects.filter(
        pk__in=pks, revoked=True, terminate_signal__isnull=False
    ).values_list("pk", "terminate_signal")
    # terminate_signal__isnull=False: no signal is None (the field's type allows it).
    return list(cast("QuerySet[TaskResult, tuple[int, int]]", rows))


def publish_due(publish: Callable[[dict[str, Any]], None], limit: int) -> tuple[int, float | None]:
    """Hand due rows that have no message to ``publish`` (one dict of
    :data:`RELAY_COLUMNS` each) and mark them dispatched; the relay of broker transports.

    Returns how many were published, and the seconds until the next such row is due (None
    when none waits; 0 when ``limit`` was reached).
    """
    now = timezone.now()
    waiting = TaskResult.objects.filter(
        state__in=CLAIMABLE_STATES, lease_token__isnull=True, dispatched=False
    )
    skip_locked = connection.features.has_select_for_update_skip_locked
    # Row locks keep two relays apart; SQLite has none, and a read transaction there
    # could not be upgraded to write once a worker has written.
    locking = connection.vendor != "sqlite"
    # Tasks a rate limit held back are left to the workers that held them for a while.
    held = Q(options__has_key=RESERVED_START)
    left_to_their_worker = held & Q(run_after__gt=now - dt.timedelta(seconds=HELD_GRACE))
    with transaction.atomic() if locking else contextlib.nullcontext():
        rows = list(
            waiting.filter(run_after__lte=now)
            .exclude(left_to_their_worker)
            .select_for_update(skip_locked=skip_locked)
            .order_by("run_after", "id")
            .values_list(*RELAY_COLUMNS)[:limit]
        )
        for row in rows:
            publish(dict(zip(RELAY_COLUMNS, row, strict=True)))
        if rows:
            TaskResult.objects.filter(pk__in=[r[0] for r in rows]).update(dispatched=True)
    if len(rows) == limit:
        return len(rows), 0.0
    # Held tasks come into it only at the relay's next regular look.
    next_due = (
        waiting.exclude(held).order_by("run_after").values_list("run_after", flat=True).first()
    )
    if next_due is None:
        return len(rows), None
    return len(rows), max((next_due - timezone.now()).total_seconds(), 0.0)
