"""Task rows as a whole: sending (the ``INSERT``), revoking, forgetting, purging, and the
rows a worker records for messages it cannot run."""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from django.db import IntegrityError, InterfaceError, connection, transaction
from django.db import OperationalError as DjangoOperationalError
from django.db.models import Q, QuerySet
from django.utils import timezone
from kombu.exceptions import OperationalError

from .. import states
from ..exceptions import TaskError
from ..messages import EncodedArguments, exception_to_dict
from ..models import CLAIMABLE_STATES, TaskResult, TaskStateChange
from .canvas import purge_groups, revoke_chord_body
from .changes import StateChange, record_states, revoked_change
from .sql import CANVAS_COLUMNS, copy_preparers, copy_statement, insert_statement

logger = logging.getLogger("django_tasks.transport")

CONNECTION_ERRORS = (DjangoOperationalError, InterfaceError)


class NewTask(Protocol):
    """What sending stores: an ``OutgoingTask`` (named here without importing the layer
    above)."""

    task_id: str
    task_name: str
    queue: str
    priority: int
    encoded: EncodedArguments
    run_after: dt.datetime
    expires: dt.datetime | None
    options: dict[str, Any] | None
    owner_id: Any
    created: dt.datetime


def publish_delays(policy: dict[str, Any]) -> Iterator[float]:
    """Sleeps between publish attempts: start, start+step, ... capped at ``interval_max``."""
    max_retries = policy["max_retries"]
    attempt = 0
    while max_retries is None or attempt < max_retries:
        yield min(
            policy["interval_start"] + attempt * policy["interval_step"], policy["interval_max"]
        )
        attempt += 1


def insert_task(
    outgoing: NewTask, *, dispatched: bool, retry: bool, retry_policy: dict[str, Any]
) -> None:
    """Store ``outgoing`` as a ``PENDING`` row in one ``INSERT``, retrying per the policy
    when the database is unreachable (``OperationalError`` naming the task when it stays so).

    ``dispatched``: a message for it is on its way (broker transports); rows stored with
    False are published by the relay when due.
    """
    sql, fields = insert_statement()
    if connection.vendor == "postgresql":
        params = next(_prepared_rows([outgoing], fields, dispatched))
    else:
        params = [
            field.get_db_prep_save(value, connection)
            for field, value in _row(outgoing, fields, dispatched)
        ]
    delays = publish_delays(retry_policy) if retry else iter(())
    tombstone_replaced = False
    while True:
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
            return
        except IntegrityError as exc:
            if "task_id" in str(exc):  # the unique constraint, named on every backend
                # (Inside the caller's transaction the failed INSERT has broken it.)
                replaceable = not (tombstone_replaced or connection.in_atomic_block)
                if replaceable and _replace_tombstone(outgoing.task_id):
                    tombstone_replaced = True
                    continue  # a send of this id raised before: this one replaces it
                raise ValueError(
                    f"task_id {outgoing.task_id!r} is already used by another task"
                ) from exc
            raise
        except CONNECTION_ERRORS as exc:
            # Inside the caller's transaction a lost connection cannot be retried.
            delay = None if connection.in_atomic_block else next(delays, None)
            if delay is None:
                raise OperationalError(
                    f"Could not send task {outgoing.task_name!r}: the "
                    f"database is unreachable: {exc}"
                ) from exc
            logger.warning(
                "Sending %s failed (%s); retrying in %.2fs", outgoing.task_name, exc, delay
            )
            connection.close()
            time.sleep(delay)


#: A group's tasks are written with one multi-row ``INSERT`` per this many rows (fewer where
#: the database takes fewer parameters per statement).
INSERT_BATCH = 1000


Sent = TypeVar("Sent", bound=NewTask)


def insert_tasks(outgoing: Iterable[Sent], *, dispatched: bool) -> list[Sent]:
    """Store many tasks as ``PENDING`` rows: one multi-row ``INSERT`` per
    :data:`INSERT_BATCH` rows, in one transaction (all or nothing); the tasks stored, in
    order. An id already used is a ``ValueError`` naming it.

    ``outgoing`` is consumed as it is written: on PostgreSQL each ``COPY`` takes its rows
    as they come, so preparing the next rows overlaps the server's work on the last ones."""
    stored: list[Sent] = []
    tasks = iter(outgoing)
    with transaction.atomic():
        if connection.vendor == "postgresql":
            sql, fields = copy_statement()
            while _copy_batch(sql, fields, tasks, stored, dispatched):
                pass
            return stored
        sql, fields = insert_statement()
        head, _, row_marks = sql.partition(" VALUES ")
        batch = max(1, min(INSERT_BATCH, _max_parameters() // len(fields)))
        while chunk := list(itertools.islice(tasks, batch)):
            stored += chunk
            params = [
                field.get_db_prep_save(value, connection)
                for task in chunk
                for field, value in _row(task, fields, dispatched)
            ]
            statement = f"{head} VALUES {', '.join([row_marks] * len(chunk))}"
            _execute_insert(chunk, functools.partial(_execute, statement, params))
    return stored


def _copy_batch(
    sql: str, fields: list[Any], tasks: Iterator[Sent], stored: list[Sent], dispatched: bool
) -> bool:
    """PostgreSQL: one ``COPY … FROM STDIN`` of up to :data:`INSERT_BATCH` of ``tasks``
    (added to ``stored``); False when there were none. No statement text to parse, values
    dumped by psycopg's C code, rows sent while the next ones are prepared."""
    first = next(tasks, None)
    if first is None:
        return False
    chunk = [first]
    taken: Iterator[Sent] = _kept(itertools.islice(tasks, INSERT_BATCH - 1), chunk)
    rows = _prepared_rows(itertools.chain([first], taken), fields, dispatched)

    def copy(cursor: Any) -> None:
        started = time.monotonic()
        with connection.wrap_database_errors, cursor.cursor.copy(sql) as writer:
            for row in rows:
                writer.write_row(row)
        if connection.queries_logged:  # as execute() logs (DEBUG, test captures)
            connection.queries_log.append(
                {
                    "sql": f"{sql} -- {len(chunk)} rows",
                    "time": f"{time.monotonic() - started:.3f}",
                }
            )

    _execute_insert(chunk, copy)
    stored += chunk
    return True


def _execute(statement: str, params: list[Any], cursor: Any) -> None:
    cursor.execute(statement, params)


def _kept(tasks: Iterator[Sent], into: list[Sent]) -> Iterator[Sent]:
    """``tasks``, each appended to ``into`` as it is taken."""
    for task in tasks:
        into.append(task)
        yield task


def _prepared_rows(
    outgoing: Iterable[NewTask], fields: list[Any], dispatched: bool
) -> Iterator[list[Any]]:
    """PostgreSQL: the values of ``fields`` for each task, as ``get_db_prep_save`` would
    give them (:func:`~.sql.copy_preparers`), the arguments' JSON taken from the check made
    at call time rather than encoded again."""
    names = [field.name for field in fields]
    at_args, at_kwargs = names.index("args"), names.index("kwargs")
    prepare = [(i, prep) for i, prep in enumerate(copy_preparers()) if prep is not None]
    others = [(i, prep) for i, prep in prepare if i not in (at_args, at_kwargs)]
    for task in outgoing:
        row = _row_values(task, fields, dispatched)
        texts = task.encoded.json  # encoded already when the call was checked
        if texts is None:
            steps = prepare
        else:
            row[at_args], row[at_kwargs] = texts
            steps = others
        for i, prep in steps:
            row[i] = prep(row[i])
        yield row


def _execute_insert(chunk: Sequence[NewTask], insert: Any) -> None:
    """Run ``insert(cursor)``, which stores ``chunk``: a reused id is a ``ValueError``
    naming it."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            insert(cursor)
    except IntegrityError as exc:
        if "task_id" not in str(exc):
            raise
        taken = existing_task_ids([t.task_id for t in chunk])
        ids = [t.task_id for t in chunk]
        duplicate = next(iter(taken), None) or next((i for i in ids if ids.count(i) > 1), "?")
        raise ValueError(f"task_id {duplicate!r} is already used by another task") from exc
    except CONNECTION_ERRORS as exc:
        raise OperationalError(
            f"Could not send a group's tasks: the database is unreachable: {exc}"
        ) from exc


def _max_parameters() -> int:
    """How many parameters one statement may carry on this database."""
    if connection.vendor == "sqlite":
        import sqlite3

        connection.ensure_connection()
        raw = connection.connection
        getlimit = getattr(raw, "getlimit", None)
        if getlimit is not None:
            return int(getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
        return 999
    return int(connection.features.max_query_params or 65535)


def mark_dispatched(task_ids: list[str]) -> None:
    """Their messages are with the broker now (the on-commit publish went through)."""
    for start in range(0, len(task_ids), 1000):
        TaskResult.objects.filter(
            task_id__in=task_ids[start : start + 1000], dispatched=False
        ).update(dispatched=True)


def _row(outgoing: NewTask, fields: list[Any], dispatched: bool) -> list[tuple[Any, Any]]:
    """The send ``INSERT``'s fields and values for ``outgoing``."""
    return list(zip(fields, _row_values(outgoing, fields, dispatched), strict=True))


def _row_values(outgoing: NewTask, fields: list[Any], dispatched: bool) -> list[Any]:
    """The send ``INSERT``'s values for ``outgoing``, in the order of ``fields``."""
    encoded = outgoing.encoded
    options = outgoing.options or {}
    values = {
        "task_id": outgoing.task_id,
        "task_name": outgoing.task_name,
        "state": states.PENDING,
        "queue": outgoing.queue,
        "priority": outgoing.priority,
        "args": encoded.args,
        "kwargs": encoded.kwargs,
        "body": encoded.body,
        "content_type": encoded.content_type,
        "options": outgoing.options,
        "retries": 0,
        "worker": "",
        "owner": outgoing.owner_id,
        "date_created": outgoing.created,
        "run_after": outgoing.run_after,
        "expires": outgoing.expires,
        "revoked": False,
        "dispatched": dispatched,
    }
    for column, option in CANVAS_COLUMNS.items():
        values[column] = options.get(option)
    return [values[field.name] for field in fields]


#: The reason a send that raised leaves on its row (``REVOKED``).
NOT_SENT = "not sent"


def mark_unsent(task_id: str) -> bool:
    """Keep a tombstone for a send whose publish raised: the row becomes ``REVOKED`` ("not
    sent"), unless a worker has claimed it already (the message got through after all).

    Returns True when the tombstone is down: the caller is told the task was not sent, and a
    message that reached the broker anyway (its confirm was lost) finds its task finished
    and is dropped. False: a worker holds it, so it was sent. Sending again with the same
    ``task_id`` replaces the tombstone.
    """
    row = TaskResult.objects.filter(task_id=task_id).values_list("pk", flat=True).first()
    if row is None:
        return True
    change = revoked_change(row, NOT_SENT, timezone.now())
    change.detail = "not sent: publishing the message failed"
    waiting = Q(state=states.PENDING, lease_token__isnull=True)
    return bool(record_states([change], guard=waiting))


def _replace_tombstone(task_id: str) -> bool:
    """Delete the "not sent" tombstone of ``task_id``, if that is what holds the id."""
    deleted, _ = TaskResult.objects.filter(
        task_id=task_id, state=states.REVOKED, meta__reason=NOT_SENT
    ).delete()
    return bool(deleted)


def redispatch_waiting(*, queue: str | None = None, due_before: dt.datetime | None = None) -> int:
    """Mark waiting tasks whose message is with the broker as not dispatched, for the relay
    to publish again (the broker lost their messages); all of them, or those of ``queue``
    due before ``due_before``. Returns how many."""
    rows = TaskResult.objects.filter(
        state__in=CLAIMABLE_STATES, lease_token__isnull=True, dispatched=True
    )
    if queue is not None:
        rows = rows.filter(queue=queue)
    if due_before is not None:
        rows = rows.filter(run_after__lt=due_before)
    return int(rows.update(dispatched=False))


def queues_with_overdue_messages(due_before: dt.datetime) -> list[str]:
    """Queues holding waiting tasks whose message went to the broker and that were due
    before ``due_before``, yet nobody has claimed them."""
    return list(
        TaskResult.objects.filter(
            state__in=CLAIMABLE_STATES,
            lease_token__isnull=True,
            dispatched=True,
            run_after__lt=due_before,
        )
        .order_by()
        .values_list("queue", flat=True)
        .distinct()
    )


def link_rerun(task_id: str, original_pk: int) -> None:
    """Record that ``task_id`` re-runs the task stored as ``original_pk``."""
    TaskResult.objects.filter(task_id=task_id).update(rerun_of_id=original_pk)


def existing_task_ids(task_ids: list[str]) -> set[str]:
    """Those of ``task_ids`` that have a row."""
    return set(TaskResult.objects.filter(task_id__in=task_ids).values_list("task_id", flat=True))


def revoke(task_id: str, *, reason: str = "revoked", terminate_signal: int | None = None) -> bool:
    """Revoke a task: a waiting one becomes ``REVOKED`` now; a claimed one is marked.

    With ``terminate_signal``, a prefork worker running the task sends that signal to the
    process running it. Returns False for an id that is not stored or already finished.
    """
    row = TaskResult.objects.filter(task_id=task_id).values("pk", "state").first()
    if row is None:
        return revoke_chord_body(task_id)  # a chord's body, not sent yet: the whole chord
    if row["state"] in states.READY_STATES:
        return False
    now = timezone.now()
    waiting = Q(lease_token__isnull=True, state__in=CLAIMABLE_STATES)
    if record_states([revoked_change(row["pk"], reason, now)], guard=waiting):
        return True
    # Claimed by a worker: it checks the mark before it starts the task.
    return bool(
        TaskResult.objects.filter(pk=row["pk"])
        .exclude(state__in=states.READY_STATES)
        .update(revoked=True, terminate_signal=terminate_signal)
    )


def forget(task_id: str) -> None:
    """Delete a task's stored result and history."""
    TaskResult.objects.filter(task_id=task_id).delete()


def finished_before(cutoff: dt.datetime) -> QuerySet[TaskResult]:
    """Finished (ready) results whose ``date_done`` is before ``cutoff``."""
    return TaskResult.objects.ready().filter(date_done__lt=cutoff)


def purge_finished(older_than: dt.timedelta, *, batch_size: int = 1000) -> int:
    """Delete finished results (and their history) done more than ``older_than`` ago.

    Unfinished tasks are never touched. Deletes in batches of ``batch_size`` rows, each in
    its own transaction, so a large purge never holds long locks. Groups (and chords) go with
    their last task. Returns how many task rows went.
    """
    cutoff = timezone.now() - older_than
    deleted = 0
    while True:
        pks = list(finished_before(cutoff).order_by().values_list("pk", flat=True)[:batch_size])
        if not pks:
            purge_groups(cutoff)
            return deleted
        with transaction.atomic():
            # History rows go with one DELETE and re-runs lose their link with one UPDATE.
            counts = TaskResult.objects.filter(pk__in=pks).only("pk").delete()[1]
        deleted += counts.get(TaskResult._meta.label, 0)


def record_bad_message(
    task_id: str | None, task_name: Any, queue: str, reason: str, worker: str
) -> None:
    """Record ``FAILURE`` for a message no worker can run, if its task id is readable.

    A waiting row of that id fails (with its history row); an id without a row gets a new
    ``FAILURE`` row, with its history row, so the admin shows what came in and why.
    """
    if not task_id:
        return
    exc = TaskError(f"Bad message: {reason}")
    now = timezone.now()
    fields = {"result": exception_to_dict(exc), "traceback": None, "date_done": now}
    row = TaskResult.objects.filter(task_id=task_id).values_list("pk", "state").first()
    if row is None:
        with transaction.atomic():
            created = TaskResult.objects.create(
                task_id=task_id[:255],
                task_name=task_name[:255]
                if isinstance(task_name, str) and task_name
                else "(unknown)",
                state=states.FAILURE,
                queue=queue[:255],
                date_created=now,
                run_after=now,
                worker=worker,
                dispatched=True,
                **fields,
            )
            TaskStateChange.objects.create(
                task=created,
                state=states.FAILURE,
                at=now,
                worker=worker,
                detail=f"bad message: {reason}",
            )
    elif row[1] in CLAIMABLE_STATES:
        record_states(
            [StateChange(row[0], states.FAILURE, fields, detail=f"bad message: {reason}")],
            worker=worker,
            guard=Q(pk=row[0], state__in=CLAIMABLE_STATES, lease_token__isnull=True),
        )
