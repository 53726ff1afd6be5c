"""Time limits inside the process that runs a task.

* In a process's main thread (prefork children, the solo pool, ``run_until_empty``), a
  ``SIGALRM`` timer raises :class:`SoftTimeLimitExceeded` in the task at the soft limit.
  At the hard limit a prefork child is killed by its parent (see :mod:`.watchdog`);
  elsewhere the timer raises :class:`TimeLimitExceeded` in the task.
* In other threads (the threads pool), both are raised in the task's thread as
  asynchronous exceptions. Python delivers those between bytecodes only, so a thread
  blocked in C (``time.sleep``, a socket read, a long query) sees it when the call returns,
  and nothing can stop a thread that never returns from C.
"""

from __future__ import annotations

import abc
import ctypes
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

if TYPE_CHECKING:
    from .slots import TaskSlot


@dataclass(frozen=True, slots=True)
class Limits:
    """A task's soft and hard time limits in seconds (None: none)."""

    soft: float | None = None
    hard: float | None = None

    @classmethod
    def of(cls, options: dict[str, Any], task: Any) -> Limits:
        """The call's limits, else the task's declared ones (as Celery resolves them);
        ``ValueError`` naming a limit that is not a finite number of seconds above 0 (a row
        written by something else than ``apply_async``)."""
        soft = options.get("soft_time_limit")
        hard = options.get("time_limit")
        limits = cls(
            soft if soft is not None else task.soft_time_limit,
            hard if hard is not None else task.time_limit,
        )
        for name, value in (("soft_time_limit", limits.soft), ("time_limit", limits.hard)):
            if value is not None and not (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and 0 < value < MAX_LIMIT  # NaN fails this too
            ):
                raise ValueError(f"malformed row: {name} is {value!r}, not seconds above 0")
        return limits


NO_LIMITS = Limits()
#: The longest time limit a worker arms (about 100 years; setitimer takes no more).
MAX_LIMIT = 3_153_600_000


class Enforcer(abc.ABC):
    """Arms a task's limits while it runs."""

    @abc.abstractmethod
    @contextmanager
    def running(self, pk: int, limits: Limits) -> Iterator[None]:
        """Run the body under ``limits``; task row ``pk`` is the task running."""


class SignalEnforcer(Enforcer):
    """Main thread: ``setitimer(ITIMER_REAL)`` and a ``SIGALRM`` handler.

    With a ``slot`` (a prefork child) the parent enforces the hard limit by killing this
    process, so only the soft limit is armed here; the slot tells the parent which task
    runs and until when.
    """

    def __init__(self, slot: TaskSlot | None = None) -> None:
        self.slot = slot

    @contextmanager
    def running(self, pk: int, limits: Limits) -> Iterator[None]:
        if self.slot is not None:
            self.slot.begin(pk, limits.hard)
        hard_here = limits.hard if self.slot is None else None
        if limits.soft is None and hard_here is None:
            try:
                yield
            finally:
                if self.slot is not None:
                    self.slot.end()
            return
        soft, hard = limits.soft, hard_here
        pending = ["soft" if soft is not None else "hard"]
        first = soft if soft is not None else hard
        assert first is not None  # with neither limit, the body ran above

        def on_alarm(signum: int, frame: Any) -> None:
            if pending[0] == "soft":
                assert soft is not None  # "soft" is pending only with a soft limit
                pending[0] = "hard"
                if hard is not None:
                    signal.setitimer(signal.ITIMER_REAL, max(hard - soft, 0.001))
                raise SoftTimeLimitExceeded(f"soft time limit ({soft}s) exceeded")
            raise TimeLimitExceeded(f"time limit ({hard}s) exceeded")

        previous = signal.signal(signal.SIGALRM, on_alarm)
        armed_at = time.monotonic()
        outer = 0.0
        try:
            outer, _ = signal.setitimer(signal.ITIMER_REAL, first)
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if outer:  # someone else's alarm (a test runner's timeout, say): put it back
                left = outer - (time.monotonic() - armed_at)
                signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))
            if self.slot is not None:
                self.slot.end()


def _async_raise(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Raise ``exc_type`` in thread ``thread_id`` at its next bytecode (None: cancel)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type else None
    )


class ThreadEnforcer(Enforcer):
    """Any thread: timers raise the limit's exception in the task's thread."""

    @contextmanager
    def running(self, pk: int, limits: Limits) -> Iterator[None]:
        if limits.soft is None and limits.hard is None:
            yield
            return
        thread_id = threading.get_ident()
        lock = threading.Lock()
        active = [True]

        def fire(exc_type: type[BaseException]) -> None:
            with lock:
                if active[0]:
                    _async_raise(thread_id, exc_type)

        timers = [
            threading.Timer(seconds, fire, (exc_type,))
            for seconds, exc_type in (
                (limits.soft, SoftTimeLimitExceeded),
                (limits.hard, TimeLimitExceeded),
            )
            if seconds is not None
        ]
        for timer in timers:
            timer.daemon = True
            timer.start()
        try:
            yield
        finally:
            with lock:
                active[0] = False
                for timer in timers:
                    timer.cancel()
                _async_raise(thread_id, None)  # one fired but not delivered yet


def enforcer_for_this_thread(slot: TaskSlot | None = None) -> Enforcer:
    """Signals in the main thread, asynchronous exceptions elsewhere."""
    if threading.current_thread() is threading.main_thread():
        return SignalEnforcer(slot)
    return ThreadEnforcer()
