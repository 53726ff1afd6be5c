"""State changes: a task row and its history row, written together.

Workers, revoke, expiry and the lease reaper all describe what happened as
:class:`StateChange` values and hand them to :func:`record_states`, which writes a batch
with one ``UPDATE`` per kind of change and one ``INSERT`` of history rows, in one
transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import Q
from django.utils import timezone
from kombu.exceptions import EncodeError

from .. import states
from ..exceptions import TaskRevokedError
from ..messages import exception_to_dict, safe_str, storable_text
from ..models import TaskResult, TaskStateChange
from .canvas import Ended, advance_chords, chord_members
from .sql import column_of, concrete_field

logger = logging.getLogger("django_tasks.results")

LEASE_RELEASED = {"lease_token": None, "lease_expires": None}
READY = sorted(states.READY_STATES)


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
    #: The chord whose header the task is in (its outcome counts there), if known; other
    #: ready changes are looked up when ``record_states`` is given a ``guard``.
    chord: str | None = None
    #: Its success fills a slot of the chord's header (not an earlier step of a chain).
    counts: bool = False


#: Told of a change that could not be stored, and of the failure recorded in its place.
Unstorable = Callable[[StateChange, BaseException], None]
#: Errors of the connection, not of the data: the caller retries or reconnects.
CONNECTION_ERRORS = (OperationalError, InterfaceError)


class _LeaseLost(Exception):
    """A batched write matched fewer rows than it had changes: redo it row by row."""


def task_label(pk: int) -> str:
    """``name[task id]`` of task row ``pk``, for log lines (users know tasks by id, not by
    row); ``row <pk>`` when it cannot be read."""
    try:
        found = TaskResult.objects.filter(pk=pk).values_list("task_name", "task_id").first()
    except Exception:  # a log line must not fail (the database may be why we log)
        found = None
    return f"{found[0]}[{found[1]}]" if found else f"row {pk}"


def record_states(
    changes: list[StateChange],
    *,
    worker: str = "",
    lease_token: str | None = None,
    guard: Q | None = None,
    on_unstorable: Unstorable | None = None,
) -> int:
    """Write ``changes`` and their history rows in one transaction; return how many applied.

    With ``lease_token``, only tasks still leased under that token change (a worker whose
    lease was recovered by another does not overwrite the outcome). ``guard`` narrows it
    further. Unguarded batches take one ``executemany``; if any row no longer matches, the
    transaction is rolled back and redone row by row to find out which.

    A batch never shares fate: if the database refuses it for its data (not its connection),
    each change is written on its own, and one the database still refuses is recorded as
    ``FAILURE`` with an ``EncodeError`` saying why (``on_unstorable`` is told), so that its
    batch-mates are recorded as they ended.
    """
    if not changes:
        return 0
    try:
        for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
            try:
                applied = _record_batch(changes, worker, lease_token, guard)
                break
            except CONNECTION_ERRORS as exc:
                if not _is_deadlock(exc) or attempt == DEADLOCK_ATTEMPTS:
                    raise
                logger.warning("Writing %d state change(s) met a deadlock; retrying", len(changes))
    except CONNECTION_ERRORS:
        raise
    except Exception as exc:
        logger.warning(
            "A batch of %d state change(s) could not be stored (%s); storing them one by one",
            len(changes),
            safe_str(exc),
        )
        applied = _record_one_by_one(changes, worker, lease_token, guard, on_unstorable)
    lost = len(changes) - applied
    if lost and guard is None:
        logger.warning(
            "%d state change(s) not recorded: the task had moved on (e.g. its lease "
            "was recovered by another worker)",
            lost,
        )
    return applied


#: A batch that loses a deadlock (another writer locked the same rows in another order) is
#: written again, up to this many times in all.
DEADLOCK_ATTEMPTS = 3


def _record_batch(
    changes: list[StateChange], worker: str, lease_token: str | None, guard: Q | None
) -> int:
    # A guarded write is row by row, to know which rows it changed (revoke, expiry and the
    # lost-worker rule write few rows). A batch tells which applied as well: on PostgreSQL
    # its statement returns their ids; elsewhere it applies whole or is redone row by row.
    batched = guard is None
    # Inside a caller's transaction a savepoint keeps a refused batch from breaking it; in
    # autocommit a refused statement changes nothing.
    with transaction.atomic() if connection.in_atomic_block else nullcontext():
        try:
            return _record(changes, worker, lease_token, guard, batched=batched)
        except _LeaseLost:
            return _record(changes, worker, lease_token, guard, batched=False)


def _is_deadlock(exc: BaseException) -> bool:
    """A deadlock or serialization failure (SQLSTATE 40P01 / 40001, MySQL 1213): the
    statement was rolled back and may simply be run again."""
    cause = exc.__cause__
    if getattr(cause, "sqlstate", None) in ("40P01", "40001"):
        return True
    args: tuple[Any, ...] = getattr(cause, "args", ())
    return bool(args) and args[0] == 1213


def _record_one_by_one(
    changes: list[StateChange],
    worker: str,
    lease_token: str | None,
    guard: Q | None,
    on_unstorable: Unstorable | None,
) -> int:
    applied = 0
    for change in changes:
        try:
            with transaction.atomic():
                applied += _record([change], worker, lease_token, guard, batched=False)
            continue
        except CONNECTION_ERRORS:
            raise
        except Exception as exc:
            refused = exc
        substitute = unstorable_change(change, refused)
        try:
            with transaction.atomic():
                applied += _record([substitute], worker, lease_token, guard, batched=False)
        except CONNECTION_ERRORS:
            raise
        except Exception as again:
            logger.error(
                "Task %s: neither its %s nor a FAILURE could be stored (%s); the lease "
                "recovery will settle it",
                task_label(change.pk),
                change.state,
                safe_str(again),
            )
            continue
        logger.error(
            "Task %s: its %s could not be stored (%s); recorded FAILURE instead",
            task_label(change.pk),
            change.state,
            safe_str(refused),
        )
        if on_unstorable is not None:
            on_unstorable(change, substitute_error(change, refused))
    return applied


def substitute_error(change: StateChange, refused: BaseException) -> EncodeError:
    """The error recorded for a change the database refused."""
    return EncodeError(f"the task's {change.state} could not be stored: {safe_str(refused)}"[:2000])


def unstorable_change(change: StateChange, refused: BaseException) -> StateChange:
    """``FAILURE`` with an ``EncodeError`` in place of a change the database refused."""
    exc = substitute_error(change, refused)
    return StateChange(
        change.pk,
        states.FAILURE,
        {"result": exception_to_dict(exc), "traceback": None, "date_done": timezone.now()},
        detail=storable_text(f"EncodeError: {exc}")[:2000],
        chord=change.chord,
        counts=change.counts,
    )


def _record(
    changes: list[StateChange],
    worker: str,
    lease_token: str | None,
    guard: Q | None,
    *,
    batched: bool,
) -> int:
    now = timezone.now()
    deletes = [c.pk for c in changes if c.delete]
    groups: dict[tuple[Any, ...], list[StateChange]] = {}
    for change in changes:
        if not change.delete:
            groups.setdefault((tuple(sorted(change.fields)), change.keep_lease), []).append(change)
    one_statement = batched and connection.vendor == "postgresql"
    in_chords = any(c.chord for c in changes)
    if one_statement and len(groups) == 1 and not deletes and not in_chords:
        # The common case (a batch of alike outcomes) is a single autocommit statement.
        (((names, keep_lease), group),) = groups.items()
        return len(_update_and_log(group, names, keep_lease, lease_token, worker, now))
    applied: list[StateChange] = []
    #: PostgreSQL's statements returned which rows changed: their chords count them.
    counted: list[StateChange] = []
    recorded = 0
    with transaction.atomic():
        for (names, keep_lease), group in groups.items():
            if one_statement:
                done = _update_and_log(group, names, keep_lease, lease_token, worker, now)
                recorded += len(done)
                counted.extend(c for c in group if c.chord and c.pk in done)
            elif batched:
                _update_batch(group, names, keep_lease, lease_token)
                applied.extend(group)
            else:
                applied.extend(_update_each(group, keep_lease, lease_token, guard))
        if deletes:
            doomed = TaskResult.objects.filter(pk__in=deletes)
            if lease_token is not None:
                doomed = doomed.filter(lease_token=lease_token)
            recorded += doomed.delete()[1].get(TaskResult._meta.label, 0)
        if applied:
            TaskStateChange.objects.bulk_create(
                TaskStateChange(
                    task_id=c.pk,
                    state=c.state,
                    at=now,
                    worker=worker,
                    detail=c.detail,
                    meta=history_meta(c),
                )
                for c in applied
            )
            _settle_chords(applied, look_up=guard is not None)
        if counted:
            # Once for the whole batch, so that its chords are locked in the order of their
            # ids whatever group of alike changes their outcomes were in.
            _settle_chords(counted, look_up=False)
    return recorded + len(applied)


def _settle_chords(applied: list[StateChange], *, look_up: bool) -> None:
    """Count the ready ones among ``applied`` into their chords (this transaction). The
    worker marks its changes; other writers (revoke, the lost-worker rule, expiry) pass a
    ``guard``, and their rows are looked up."""
    ready = [c for c in applied if c.state in states.READY_STATES]
    if not ready:
        return
    known: dict[int, tuple[str, bool]] = {}
    if look_up:
        unknown = [c.pk for c in ready if c.chord is None]
        if unknown:
            known = chord_members(unknown)
    ended = []
    for change in ready:
        chord, counts = (
            (change.chord, change.counts) if change.chord else known.get(change.pk, (None, False))
        )
        if chord:
            ended.append(Ended(change.pk, change.state, change.fields.get("result"), chord, counts))
    if ended:
        advance_chords(ended)


def history_meta(change: StateChange) -> Any:
    """What a history row keeps for ``on_message``: a retry's exception, a custom state's
    meta. Ready states keep nothing here (the task row has their result)."""
    if change.state == states.RETRY:
        return change.fields.get("result")
    if change.state not in states.READY_STATES:
        return change.fields.get("meta")
    return None


def _update_and_log(
    group: list[StateChange],
    names: tuple[str, ...],
    keep_lease: bool,
    lease_token: str | None,
    worker: str,
    now: Any,
    *,
    unfinished_only: bool = False,
) -> set[int]:
    """PostgreSQL: update the rows and insert their history rows in one statement; the
    pks of the rows it changed.

    ``UPDATE … RETURNING`` feeds the history ``INSERT``, so only rows still leased under
    ``lease_token`` (and, with ``unfinished_only``, not in a ready state) get history, and
    the ``INSERT``'s own ``RETURNING`` says exactly which changed (a chord counts those).
    """
    fields = [concrete_field(name) for name in ("state", *names)]
    qn = connection.ops.quote_name
    columns = [qn(column_of(f)) for f in fields]
    meta_field = TaskStateChange._meta.get_field("meta")
    # One array per column, so the statement's text is the same whatever the batch size
    # (psycopg parses a long, ever-different VALUES list anew on every call).
    typed = [f"%s::{f.db_type(connection)}[]" for f in fields]
    arrays = ", ".join(["%s::bigint[]", *typed, "%s::text[]", "%s::jsonb[]"])
    assignments = [f"{c} = v.{c}" for c in columns]
    if not keep_lease:
        assignments.append("lease_token = NULL, lease_expires = NULL")
    history = TaskStateChange._meta.db_table
    ready_marks = ", ".join(["%s"] * len(READY))
    unfinished = f" AND t.state NOT IN ({ready_marks})" if unfinished_only else ""
    sql = (
        f"WITH v (id, {', '.join(columns)}, detail, history_meta) AS "
        f"(SELECT * FROM unnest({arrays})), "
        f"u AS (UPDATE {qn(TaskResult._meta.db_table)} AS t SET {', '.join(assignments)} "
        f"FROM v WHERE t.id = v.id{' AND t.lease_token = %s' if lease_token else ''}"
        f"{unfinished} "
        f"RETURNING t.id) "
        f"INSERT INTO {qn(history)} (task_id, state, at, worker, detail, meta) "
        f"SELECT u.id, v.state, %s, %s, v.detail, v.history_meta FROM u JOIN v ON v.id = u.id "
        f"RETURNING task_id"
    )
    params: list[Any] = [[change.pk for change in group]]
    for field_, name in zip(fields, ("state", *names), strict=True):
        params.append(
            [
                field_.get_db_prep_save(
                    change.state if name == "state" else change.fields[name], connection
                )
                for change in group
            ]
        )
    params.append([change.detail for change in group])
    params.append(
        [meta_field.get_db_prep_save(history_meta(change), connection) for change in group]
    )
    if lease_token:
        params.append(lease_token)
    if unfinished_only:
        params.extend(READY)
    params.extend([now, worker])
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {pk for (pk,) in cursor.fetchall()}


def _update_batch(
    group: list[StateChange], names: tuple[str, ...], keep_lease: bool, lease_token: str | None
) -> None:
    """One parameterised UPDATE for the whole group, sent with ``executemany``.

    psycopg 3 pipelines ``executemany`` into one round trip and sqlite3 runs it natively,
    where ``bulk_update`` would spend milliseconds compiling ``CASE WHEN`` expressions.
    """
    fields = [concrete_field(name) for name in ("state", *names)]
    qn = connection.ops.quote_name
    assignments = [f"{qn(column_of(f))} = %s" for f in fields]
    if not keep_lease:
        assignments.append("lease_token = NULL, lease_expires = NULL")
    sql = f"UPDATE {qn(TaskResult._meta.db_table)} SET {', '.join(assignments)} WHERE id = %s" + (
        " AND lease_token = %s" if lease_token is not None else ""
    )
    rows = []
    for change in group:
        values = (change.state, *(change.fields[name] for name in names))
        row = [f.get_db_prep_save(v, connection) for f, v in zip(fields, values, strict=True)]
        row.append(change.pk)
        if lease_token is not None:
            row.append(lease_token)
        rows.append(row)
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)
        if cursor.rowcount != len(group):
            raise _LeaseLost


def _update_each(
    group: list[StateChange], keep_lease: bool, lease_token: str | None, guard: Q | None
) -> list[StateChange]:
    base = TaskResult.objects.all()
    if guard is not None:
        base = base.filter(guard)
    if lease_token is not None:
        base = base.filter(lease_token=lease_token)
    applied = []
    for change in group:
        values = {"state": change.state, **change.fields, **({} if keep_lease else LEASE_RELEASED)}
        if base.filter(pk=change.pk).update(**values):
            applied.append(change)
    return applied


def store_custom_state(
    task_id: str,
    state: str,
    meta: dict[str, Any] | None,
    worker: str | None = None,
    *,
    pk: int | None = None,
) -> None:
    """Store a state of the task's own choosing (``update_state``) with its meta.

    ``pk`` (the row's key, known to the running task) saves looking it up by ``task_id``.
    On PostgreSQL it is one statement, so a task can report progress often.
    """
    if state in states.READY_STATES:
        raise ValueError(
            f"update_state(): {state!r} is a ready state; return or raise from the task instead"
        )
    if pk is None:
        pk = TaskResult.objects.filter(task_id=task_id).values_list("pk", flat=True).first()
    if pk is None:
        raise ValueError(f"update_state(): no task with id {task_id!r} is stored")
    change = StateChange(pk, state, {"meta": meta}, keep_lease=True)
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        applied = len(
            _update_and_log(
                [change], ("meta",), True, None, worker or "", timezone.now(), unfinished_only=True
            )
        )
    else:
        unfinished = ~Q(state__in=states.READY_STATES)
        applied = record_states([change], worker=worker or "", guard=unfinished)
    if not applied:
        raise ValueError(f"update_state(): task {task_id!r} has already finished")


def revoked_change(pk: int, reason: str, now: dt.datetime) -> StateChange:
    """A task (waiting, or claimed and not started) ending ``REVOKED`` for ``reason``."""
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


def failure_change(
    pk: int, exc: BaseException, *, detail: str = "", traceback: str | None = None
) -> StateChange:
    """A task ending ``FAILURE`` with ``exc`` (stored as Celery stores exceptions)."""
    return StateChange(
        pk,
        states.FAILURE,
        {
            "result": exception_to_dict(exc),
            "traceback": traceback,
            "date_done": timezone.now(),
        },
        detail=detail or f"{type(exc).__name__}: {safe_str(exc)}",
    )
