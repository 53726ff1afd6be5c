"""The prefork parent's watch over its children's running tasks.

Each child has a :class:`TaskSlot`, a few bytes of memory shared with the parent, where it
writes the task it is running and that task's hard deadline. The supervisor's
:class:`Watchdog` reads the slots every tick: it kills a child whose task is past its
``time_limit`` (``SIGKILL``), and sends the requested signal to a child whose task was
revoked with ``terminate=True``. Once the child is dead, the task is recorded as
``FAILURE`` with :class:`TimeLimitExceeded` or as ``REVOKED`` (terminated), and the pool
replaces the child. The other tasks the child held are queued again after a time-limit kill
(a child records every finished task before it starts one with a hard limit, so those left
had not started); after a terminate, they get the usual lost-worker rule.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import signal
import struct
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

from django.utils import timezone

from .. import states, store
from ..context import Request
from ..exceptions import TimeLimitExceeded
from ..links import apply_errback, run_followups
from ..messages import exception_from_dict
from ..store import StateChange

if TYPE_CHECKING:
    from .pool import PreforkPool

logger = logging.getLogger("django_tasks.worker")

#: How often the parent looks for running tasks revoked with ``terminate=True``.
TERMINATE_CHECK_EVERY = 0.5

_LAYOUT = struct.Struct("=qddi")  # task pk (0: idle), hard deadline, hard limit, signal asked


class SlotState(NamedTuple):
    pk: int
    deadline: float  # time.monotonic() (system-wide on Linux); 0: no hard limit
    hard: float
    terminate: int  # the signal the parent sent to terminate the task; 0: none


class TaskSlot:
    """Shared memory a prefork child writes at each task's start and end, and the parent reads."""

    def __init__(self) -> None:
        self._mem = mmap.mmap(-1, _LAYOUT.size)

    def begin(self, pk: int, hard: float | None) -> None:
        deadline = time.monotonic() + hard if hard else 0.0
        # The pk goes last: a reader that sees it sees the rest.
        _LAYOUT.pack_into(self._mem, 0, 0, deadline, hard or 0.0, 0)
        _LAYOUT.pack_into(self._mem, 0, pk, deadline, hard or 0.0, 0)

    def end(self) -> None:
        state = self.read()
        _LAYOUT.pack_into(self._mem, 0, 0, 0.0, 0.0, state.terminate)

    def read(self) -> SlotState:
        return SlotState(*_LAYOUT.unpack_from(self._mem, 0))

    def ask_terminate(self, signum: int) -> None:
        state = self.read()
        _LAYOUT.pack_into(self._mem, 0, state.pk, state.deadline, state.hard, signum)


def terminate_handler(slot: TaskSlot, otherwise: Any) -> Any:
    """A child's handler for SIGTERM/SIGINT: die of it if the parent is terminating the task,
    else ``otherwise`` (e.g. a warm shutdown)."""

    def handle(signum: int, frame: Any) -> None:
        if slot.read().terminate == signum:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if callable(otherwise):
            otherwise(signum, frame)

    return handle


@dataclass(slots=True)
class _Verdict:
    """What to record for task ``pk`` once child ``pid`` is dead."""

    pid: int
    token: str
    pk: int
    slot: TaskSlot
    change: StateChange


class Watchdog:
    """Enforces hard time limits and ``revoke(terminate=True)`` on a prefork pool's children."""

    def __init__(self, pool: PreforkPool) -> None:
        self.pool = pool
        self._verdicts: dict[int, _Verdict] = {}
        self._next_terminate_check = 0.0

    def check(self) -> None:
        """Kill children past their task's hard limit; signal those whose task was terminated."""
        now = time.monotonic()
        running = {}
        for pid, token, slot in self.pool.children():
            state = slot.read()
            verdict = self._verdicts.get(pid)
            if not state.pk or (verdict is not None and verdict.change.state == states.FAILURE):
                continue  # idle, or already killed for its time limit
            if verdict is None:
                running[state.pk] = (pid, token, slot)
            # A terminate signal the task survived does not exempt it from its time limit.
            if state.deadline and now >= state.deadline:
                self._kill_for_time_limit(pid, token, slot, state)
        if running and now >= self._next_terminate_check:
            self._next_terminate_check = now + TERMINATE_CHECK_EVERY
            self._terminate_revoked(running)

    def _kill_for_time_limit(self, pid: int, token: str, slot: TaskSlot, state: SlotState) -> None:
        exc = TimeLimitExceeded(f"time limit ({state.hard:g}s) exceeded")
        change = store.failure_change(
            state.pk, exc, detail=f"time limit ({state.hard:g}s) exceeded"
        )
        logger.error(
            "Task row %d exceeded its time limit (%gs): killing worker process %d",
            state.pk,
            state.hard,
            pid,
        )
        self._verdicts[pid] = _Verdict(pid, token, state.pk, slot, change)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def _terminate_revoked(self, running: dict[int, tuple[int, str, TaskSlot]]) -> None:
        for pk, signum in store.terminate_requests(list(running)):
            pid, token, slot = running[pk]
            if slot.read().pk != pk:
                continue  # it finished meanwhile
            name = signal.Signals(signum).name
            change = store.revoked_change(pk, "terminated", timezone.now())
            change.detail = f"terminated by {name}"
            change.fields["meta"] = {"reason": "terminated", "signal": name}
            logger.warning("Terminating task row %d: sending %s to process %d", pk, name, pid)
            self._verdicts[pid] = _Verdict(pid, token, pk, slot, change)
            slot.ask_terminate(signum)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def settle(self) -> None:
        """Record the verdicts of children that are gone; forget those whose task moved on."""
        alive = {pid for pid, _, _ in self.pool.children()}
        for pid, verdict in list(self._verdicts.items()):
            still_on_it = verdict.slot.read().pk == verdict.pk
            if pid in alive:
                if not still_on_it:  # the signal did not kill it and the task ended
                    del self._verdicts[pid]
                continue
            recorded = still_on_it and store.record_states(
                [verdict.change], lease_token=verdict.token
            )
            if recorded and verdict.change.state == states.FAILURE:
                _apply_errbacks(verdict.pk, verdict.change)
            if verdict.change.state == states.FAILURE:  # killed at its time limit
                _give_back_unstarted(verdict.token, verdict.pk, pid)
            del self._verdicts[pid]


def _give_back_unstarted(token: str, killed: int, pid: int) -> None:
    """Queue again the tasks a child killed at a hard limit had claimed but not started.

    Before a task with a hard limit starts, its child records the outcomes of the tasks it
    ran before it, so the rows still leased to the child are tasks it never began. They
    are released for any worker to claim, and (broker transports) published again by the
    relay, whatever their ``acks_late``: as in Celery, where the parent hands them on.
    """
    returned = store.give_back_unstarted(token, except_pk=killed)
    if returned:
        logger.warning(
            "Queued again %d task(s) that worker process %d had claimed but not started",
            returned,
            pid,
        )


def _apply_errbacks(pk: int, change: StateChange) -> None:
    """Call the ``link_error`` of a task the parent failed (its child is gone)."""
    from ..models import TaskResult

    row = TaskResult.objects.filter(pk=pk).values("task_id", "task_name", "options").first()
    errbacks = (row and (row["options"] or {}).get("link_error")) or []
    if row is None or not errbacks:  # (no row: no errbacks)
        return
    exc = exception_from_dict(change.fields["result"], None)
    request = Request(id=row["task_id"], task=row["task_name"], called_directly=False)
    run_followups([partial(apply_errback, sig, request, exc, "") for sig in errbacks])
