"""Groups and chords in the database: the group row, and a chord's counter.

A chord is decided where its header tasks' outcomes are written: :func:`advance_chords` runs
inside :func:`~django_tasks.store.changes.record_states`'s transaction, so the write that
records the last header success is the one that brings the counter to zero and sends the
body, and the two commit or roll back together. No task polls for the header (Celery's
``chord_unlock``), two workers cannot both send the body, and a worker killed after the
commit has sent it already (through the transport's send path: the outbox on brokers).

Sending the body and applying its errbacks belong to the calling layer above: it registers
them with :func:`set_chord_handlers` (``AppConfig.ready``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from .. import states
from ..exceptions import ChordError
from ..messages import exception_from_dict, exception_to_dict, safe_str
from ..models import TaskGroup, TaskJSONDecoder, TaskResult, TaskStateChange

logger = logging.getLogger("django_tasks.results")

#: ``send_body(body, results)``: send a chord's body (a signature dict) with its header's
#: results, inside the caller's transaction.
SendBody = Callable[[dict[str, Any], list[Any]], None]
#: ``body_failed(body, body_task_id, exc)``: apply the errbacks of a body that failed.
BodyFailed = Callable[[dict[str, Any], str, BaseException], None]

_handlers: dict[str, Any] = {}


def set_chord_handlers(send_body: SendBody, body_failed: BodyFailed) -> None:
    """Register how a decided chord sends its body, and how a failed one applies errbacks."""
    _handlers["send_body"] = send_body
    _handlers["body_failed"] = body_failed


@dataclass(slots=True)
class Ended:
    """A task that ended (in ``state``, with ``result``) and may be in a chord's header."""

    pk: int
    state: str
    result: Any
    chord: str | None
    #: Its result fills a slot of the header (else it is an earlier step of a header chain).
    counts: bool


# -- groups ---------------------------------------------------------------------------------


def create_group(
    group_id: str,
    task_ids: list[str],
    body: dict[str, Any] | None = None,
    body_task_id: str | None = None,
) -> None:
    """Store a group as it is sent (and, with ``body``, a chord waiting for its header)."""
    chord = body is not None
    TaskGroup.objects.create(
        group_id=group_id,
        task_ids=task_ids,
        size=len(task_ids),
        date_created=timezone.now(),
        body=body,
        body_task_id=body_task_id,
        remaining=len(task_ids) if chord else None,
        chord_state=(TaskGroup.CHORD_PENDING if task_ids else TaskGroup.CHORD_SENT)
        if chord
        else None,
    )


def group_task_ids(group_id: str) -> list[str] | None:
    """The task ids of group ``group_id`` in order, or None for an unknown group."""
    row = TaskGroup.objects.filter(group_id=group_id).values_list("task_ids", flat=True).first()
    return None if row is None else list(row)


def forget_group(group_id: str) -> None:
    """Delete a group's row (its tasks are forgotten one by one)."""
    TaskGroup.objects.filter(group_id=group_id).delete()


def purge_groups(cutoff: dt.datetime) -> int:
    """Delete groups sent before ``cutoff`` none of whose tasks (nor chord body) is left."""
    members = TaskResult.objects.filter(group_id=OuterRef("group_id"))
    body = TaskResult.objects.filter(task_id=OuterRef("body_task_id"))
    doomed = TaskGroup.objects.filter(date_created__lt=cutoff).exclude(
        Exists(members) | Exists(body)
    )
    deleted, _ = doomed.delete()
    return int(deleted)


# -- chords ---------------------------------------------------------------------------------


def advance_chords(ended: Iterable[Ended]) -> None:
    """Count header outcomes into their chords, in the caller's transaction: a success takes
    one off the counter (the last sends the body); a failure or revoke fails the chord.

    A chord's successes in one batch are counted with one write of its counter. Chords are
    locked in the order of their ids, so two writers whose batches hold tasks of the same
    chords cannot deadlock on their rows."""
    by_chord: dict[str, list[Ended]] = {}
    for task in ended:
        if task.chord is not None:
            by_chord.setdefault(task.chord, []).append(task)
    for chord in sorted(by_chord):
        successes = 0
        for task in by_chord[chord]:
            if task.state == states.SUCCESS:
                successes += 1 if task.counts else 0
            elif task.state in states.PROPAGATE_STATES:
                # The successes before it count first; the first failure decides the chord
                # (the rest of its batch-mates would find it decided already).
                if successes:
                    _count_success(chord, successes)
                _fail(chord, task.pk, task.state, task.result)
                break
        else:
            if successes:
                _count_success(chord, successes)


def chord_members(pks: list[int]) -> dict[int, tuple[str, bool]]:
    """For task rows ``pks``: those in a chord's header, with their chord and whether their
    result fills a slot of it."""
    rows = TaskResult.objects.filter(pk__in=pks, chord_id__isnull=False).values_list(
        "pk", "chord_id", "group_index"
    )
    return {pk: (chord, index is not None) for pk, chord, index in rows if chord}


def _count_success(chord: str, count: int = 1) -> None:
    """Take ``count`` header successes off the chord's counter; the one that brings it to
    zero sends the body."""
    table = connection.ops.quote_name(TaskGroup._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET remaining = remaining - %s "
            f"WHERE group_id = %s AND chord_state = %s",
            [count, chord, TaskGroup.CHORD_PENDING],
        )
        if cursor.rowcount != 1:
            return  # failed or revoked already (or an unknown chord)
    row = TaskGroup.objects.filter(group_id=chord).values("remaining", "size", "body").first()
    if row is None or (row["remaining"] or 0) > 0:
        return
    TaskGroup.objects.filter(group_id=chord).update(
        chord_state=TaskGroup.CHORD_SENT, date_done=timezone.now()
    )
    results = _header_results(chord, row["size"])
    if results is None:
        _fail_body(chord, None, ChordError(f"Chord {chord}: a header result is missing"))
        return
    try:
        with transaction.atomic():  # a body that cannot be sent must not undo the outcome
            _handlers["send_body"](row["body"], results)
    except Exception as exc:
        logger.exception("Chord %s: its body could not be sent", chord)
        _fail_body(chord, None, ChordError(f"The chord's body could not be sent: {safe_str(exc)}"))


def _header_results(chord: str, size: int) -> list[Any] | None:
    """The results of the chord's header in order, or None unless all ``size`` succeeded.

    The ORM would build a JSON decoder per value, which was most of the time a chord of 1,000
    took to send its body: PostgreSQL aggregates the results into one JSON array, decoded
    once; elsewhere the rows are read raw and decoded with one decoder.
    """
    qn = connection.ops.quote_name
    table = qn(TaskResult._meta.db_table)
    decoder = TaskJSONDecoder()
    if connection.vendor == "postgresql":
        # No locking read: every other header success committed with its decrement before
        # the counter's row lock let this write bring it to zero, and a statement sees what
        # committed before it began (under REPEATABLE READ or SERIALIZABLE the counter's
        # UPDATE fails with a serialization error instead, and the batch is written again).
        sql = (
            "SELECT count(*), count(DISTINCT group_index), min(group_index), max(group_index), "
            "count(*) FILTER (WHERE state <> %s), "
            "coalesce(json_agg(result ORDER BY group_index), '[]') "
            f"FROM {table} WHERE group_id = %s AND group_index IS NOT NULL"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [states.SUCCESS, chord])
            count, distinct, low, high, unfinished, array = cursor.fetchone()
        if (count, distinct, unfinished) != (size, size, 0) or (
            size and (low, high) != (0, size - 1)
        ):
            return None
        results: list[Any] = decoder.decode(array) if isinstance(array, str) else array
        return results
    sql = (
        f"SELECT group_index, state, result FROM {table} "
        f"WHERE group_id = %s AND group_index IS NOT NULL ORDER BY group_index"
    )
    if connection.features.has_select_for_update:
        # A locking read sees every committed header row (MySQL's snapshot might not).
        sql += " FOR UPDATE"
    with connection.cursor() as cursor:
        cursor.execute(sql, [chord])
        rows = cursor.fetchall()
    if [index for index, _, _ in rows] != list(range(size)) or any(
        state != states.SUCCESS for _, state, _ in rows
    ):
        return None
    return [decoder.decode(result) if isinstance(result, str) else result for _, _, result in rows]


def _fail(chord: str, pk: int, state: str, result: Any) -> None:
    task_id = TaskResult.objects.filter(pk=pk).values_list("task_id", flat=True).first() or pk
    if state == states.REVOKED:
        exc = ChordError(f"Dependency {task_id} was revoked")
    else:
        raised = exception_from_dict(result, None) if isinstance(result, dict) else result
        exc = ChordError(f"Dependency {task_id} raised {raised!r}")
    updated = TaskGroup.objects.filter(group_id=chord, chord_state=TaskGroup.CHORD_PENDING).update(
        chord_state=TaskGroup.CHORD_FAILED, failed_task_id=str(task_id), date_done=timezone.now()
    )
    if updated:
        _fail_body(chord, str(task_id), exc, decided=True)


def _fail_body(
    chord: str, failed_task_id: str | None, exc: ChordError, *, decided: bool = False
) -> None:
    """Store the body's ``FAILURE`` (``exc``), fail an outer chord it belongs to, and apply
    its errbacks once this commits."""
    if not decided:
        TaskGroup.objects.filter(group_id=chord).update(
            chord_state=TaskGroup.CHORD_FAILED,
            failed_task_id=failed_task_id,
            date_done=timezone.now(),
        )
    group = TaskGroup.objects.filter(group_id=chord).values("body", "body_task_id").first()
    if group is None or not group["body_task_id"]:
        return
    body: dict[str, Any] = group["body"] or {}
    body_task_id: str = group["body_task_id"]
    pk = _store_body_outcome(body, body_task_id, states.FAILURE, exc)
    options = body.get("options") or {}
    outer = options.get("chord")
    if pk is not None and isinstance(outer, str) and outer:
        _fail(outer, pk, states.FAILURE, exception_to_dict(exc))
    body_failed = _handlers.get("body_failed")
    if body_failed is not None:
        transaction.on_commit(lambda: body_failed(body, body_task_id, exc), robust=True)


def _store_body_outcome(
    body: dict[str, Any], body_task_id: str, state: str, exc: BaseException
) -> int | None:
    """The row of a body that will never run, ending in ``state``; its pk (None if the id
    is taken already)."""
    if TaskResult.objects.filter(task_id=body_task_id).exists():
        return None
    now = timezone.now()
    options = body.get("options") or {}
    task = body.get("task")
    name = task if isinstance(task, str) and task else "(chord body)"
    row = TaskResult.objects.create(
        task_id=body_task_id,
        task_name=name,
        state=state,
        queue=str(options.get("queue") or ""),
        args=body.get("args") or [],
        kwargs=body.get("kwargs") or {},
        options={k: v for k, v in options.items() if k in ("group_id", "group_index", "chord")},
        result=exception_to_dict(exc),
        date_created=now,
        run_after=now,
        date_done=now,
        dispatched=True,
        group_id=options.get("group_id"),
        group_index=options.get("group_index"),
        chord_id=options.get("chord"),
    )
    TaskStateChange.objects.create(
        task=row, state=state, at=now, detail=f"{type(exc).__name__}: {safe_str(exc)}"[:2000]
    )
    return row.pk


def chord_state(chord: str) -> dict[str, Any] | None:
    """A chord's row as a dict (``chord_state``, ``remaining``, ``size``, …), or None."""
    row = (
        TaskGroup.objects.filter(group_id=chord)
        .values("group_id", "chord_state", "remaining", "size", "body_task_id", "failed_task_id")
        .first()
    )
    return None if row is None else dict(row)


def revoke_chord_body(body_task_id: str) -> bool:
    """Revoke a chord by its body's id, before the body was sent: the body is stored
    ``REVOKED`` and never sent, and the header's tasks that have not run are revoked."""
    from .tasks import revoke

    with transaction.atomic():
        chord = (
            TaskGroup.objects.select_for_update()
            .filter(body_task_id=body_task_id, chord_state=TaskGroup.CHORD_PENDING)
            .values("group_id", "task_ids", "body")
            .first()
        )
        if chord is None:
            return False
        TaskGroup.objects.filter(group_id=chord["group_id"]).update(
            chord_state=TaskGroup.CHORD_REVOKED, date_done=timezone.now()
        )
        from ..exceptions import TaskRevokedError

        _store_body_outcome(
            chord["body"] or {}, body_task_id, states.REVOKED, TaskRevokedError("revoked")
        )
    for task_id in chord["task_ids"]:
        revoke(task_id)
    return True
