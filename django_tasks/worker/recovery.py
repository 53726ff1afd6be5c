"""What happens to the tasks of a consumer loop that died: a prefork child killed by the
kernel or by a task's ``os._exit()``, a loop whose database connection broke, a whole worker
whose leases ran out.

A loop that dies takes only the task it was running with it. The outcomes it had not written
yet are recorded from its journal (prefork children), the tasks it had claimed but not started
are queued again, and only the running task gets the lost-worker rule: ``acks_late`` tasks are
queued again at most ``WORKER_LOST_MAX_REDELIVERIES`` times, others fail with
``WorkerLostError``, and a failure's errbacks run.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from .. import store
from ..conf import tasks_settings
from ..context import Request
from ..links import apply_errback, apply_link, run_followups
from ..messages import exception_from_dict
from ..models import TaskResult
from ..registry import tasks_registry
from .slots import TaskSlot

logger = logging.getLogger("django_tasks.worker")


def recover_lost(lease_tokens: list[str] | None = None) -> int:
    """The lost-worker rule for leases that ran out (or, ``lease_tokens``, whose holders are
    gone), with this worker's ``acks_late`` policy; errbacks run for the failures."""
    return store.recover_lost(
        tasks_registry.acks_late,
        lease_tokens,
        max_redeliveries=int(tasks_settings.WORKER_LOST_MAX_REDELIVERIES),
        on_failed=apply_row_errbacks,
    )


def settle_lost_loop(token: str, slot: TaskSlot | None) -> None:
    """Settle the tasks of a dead loop: its journaled outcomes, then its unstarted tasks
    (queued again), then the task it was running (the lost-worker rule)."""
    if slot is not None:
        replay_journal(token, slot)
        # The slot names the task the child was running, and one that had just ended but was
        # not journaled yet: every other waiting task it held was never started. (A thread's
        # loop has no slot, so all its tasks get the rule.)
        started = [pk for pk in (slot.read().pk, slot.finished()) if pk]
        returned = store.give_back_unstarted(token, except_pks=started)
        if returned:
            logger.warning(
                "Queued again %d task(s) that a lost worker process had claimed but not started",
                returned,
            )
    recover_lost([token])


def replay_journal(token: str, slot: TaskSlot) -> None:
    """Record the outcomes a dead child had journaled but not written, and apply their
    links; an outcome already written (the child died after writing it) changes nothing."""
    entries = slot.read_journal()
    recorded = 0
    for entry in entries:
        change = store.StateChange(**entry["change"])
        if store.record_states([change], lease_token=token):
            recorded += 1
            run_followups(followups_of(entry.get("replay") or {}))
    slot.clear_journal()
    if entries:
        logger.warning("Recorded %d outcome(s) a lost worker process had not written yet", recorded)


def journal_entry(change: store.StateChange, replay: dict[str, Any] | None) -> dict[str, Any]:
    """What a prefork child journals for an outcome: the change and what to apply after it."""
    return {
        "change": {
            "pk": change.pk,
            "state": change.state,
            "fields": change.fields,
            "detail": change.detail,
            "keep_lease": change.keep_lease,
            "delete": change.delete,
            "chord": change.chord,
            "counts": change.counts,
        },
        "replay": replay,
    }


def followups_of(replay: dict[str, Any]) -> list[Any]:
    """The links (``link`` with the value) or errbacks (``link_error`` with the exception)
    a journaled outcome asks for."""
    if replay.get("link"):
        return [partial(apply_link, sig, replay.get("value")) for sig in replay["link"]]
    if replay.get("link_error"):
        exc = exception_from_dict(replay.get("exc"), None)
        request = Request(
            id=replay.get("task_id"), task=replay.get("task_name") or "", called_directly=False
        )
        traceback = replay.get("traceback") or ""
        return [
            partial(apply_errback, sig, request, exc, traceback) for sig in replay["link_error"]
        ]
    return []


def apply_row_errbacks(pk: int, exc: BaseException) -> None:
    """Call the ``link_error`` of a task failed outside its own run (its process is gone)."""
    row = TaskResult.objects.filter(pk=pk).values("task_id", "task_name", "options").first()
    if row is None:
        return
    options = row["options"]
    errbacks = options.get("link_error") if isinstance(options, dict) else None
    if not errbacks:
        return
    request = Request(id=row["task_id"], task=row["task_name"], called_directly=False)
    run_followups([partial(apply_errback, sig, request, exc, "") for sig in errbacks])


__all__ = [
    "apply_row_errbacks",
    "journal_entry",
    "recover_lost",
    "replay_journal",
    "settle_lost_loop",
]
