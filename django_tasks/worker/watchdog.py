"""The prefork parent's watch over its children's running tasks.

Each child has a :class:`TaskSlot`, a few bytes of memory shared with the parent, where it
writes the task it is running and that task's hard deadline. The supervisor's
:class:`Watchdog` reads the slots every tick: it kills a child whose task is past its
``time_limit`` (``SIGKILL``), and sends the requested signal to a child whose task was
revoked with ``terminate=True``. Once the child is dead, the task is recorded as
``FAILURE`` with :class:`TimeLimitExceeded` or as ``REVOKED`` (terminated), and the pool
replaces the child. The child's other tasks are settled as for any lost loop
(:func:`~django_tasks.worker.recovery.settle_lost_loop`): its journaled outcomes are
recorded and the tasks it had not started are queued again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.db.models import Q
from django.utils import timezone

from .. import states, store
from ..exceptions import TimeLimitExceeded
from ..messages import exception_from_dict
from ..store import StateChange
from .recovery import apply_row_errbacks
from .slots import SlotState, TaskSlot

if TYPE_CHECKING:
    from .pool import PreforkPool

logger = logging.getLogger("django_tasks.worker")

#: How often the parent looks for running tasks revoked with ``terminate=True``.
TERMINATE_CHECK_EVERY = 0.5


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
            "Task %s exceeded its time limit (%gs): killing worker process %d",
            store.task_label(state.pk),
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
            logger.warning(
                "Terminating task %s: sending %s to process %d", store.task_label(pk), name, pid
            )
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
            # The guard (the row itself) marks a write from outside the task's own run: the
            # store looks up whether the task is in a chord's header, to count it there.
            recorded = still_on_it and store.record_states(
                [verdict.change], lease_token=verdict.token, guard=Q(pk=verdict.pk)
            )
            if recorded and verdict.change.state == states.FAILURE:
                apply_row_errbacks(verdict.pk, exception_from_dict(verdict.change.fields["result"]))
            del self._verdicts[pid]
