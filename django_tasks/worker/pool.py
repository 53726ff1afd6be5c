"""Execution pools: where a worker's consumer loops run (processes, threads, or inline).

Every pool runs ``concurrency`` :class:`~django_tasks.worker.consumer.Consumer` loops, each
with its own lease token, and reports the tokens in use so the supervisor can renew them
and, when a loop dies, recover its tasks at once.
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field

from django.db import connections

from .consumer import Consumer, new_lease_token
from .limits import SignalEnforcer
from .slots import TaskSlot, terminate_handler
from .tally import Tallies, Tally

logger = logging.getLogger("django_tasks.worker")

POOLS = ("prefork", "threads", "solo")


def process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class LostLoop:
    """A consumer loop that ended abnormally: its lease token, and (prefork) its slot, whose
    journal and running task say what became of the tasks it held."""

    token: str
    slot: TaskSlot | None = None


@dataclass
class PoolConfig:
    queues: list[str]
    concurrency: int
    burst: bool
    stop: threading.Event = field(default_factory=threading.Event)
    #: prefork only: a child is replaced after this many tasks, or once its resident memory
    #: is over this many KiB after a task.
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None


class Pool(abc.ABC):
    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.tallies = Tallies()
        #: Loops that ended to be replaced (a limit they reached), since the last respawn.
        self.retired = 0

    @abc.abstractmethod
    def start(self) -> None:
        """Start the consumer loops (solo: do nothing; the supervisor calls :meth:`run_inline`)."""

    @abc.abstractmethod
    def lease_tokens(self) -> list[str]:
        """Tokens of the loops alive now."""

    def tally(self) -> tuple[int, int, list[int]]:
        """``(tasks done, tasks failed, pks of the tasks running now)`` over every loop."""
        return self.tallies.totals(self.lease_tokens())

    @abc.abstractmethod
    def reap(self) -> list[LostLoop]:
        """Collect loops that ended; return those that died abnormally."""

    @abc.abstractmethod
    def alive(self) -> bool:
        """True while any loop is still running."""

    def request_stop(self) -> None:
        """Warm shutdown: finish running tasks, give back the rest."""
        self.config.stop.set()

    @abc.abstractmethod
    def kill(self) -> list[LostLoop]:
        """Cold shutdown: stop every loop now; return the loops (their tasks to settle)."""

    def respawn(self) -> None:  # noqa: B027 - only prefork replaces lost processes
        """Replace loops that died, while not stopping."""

    def run_inline(self) -> None:  # noqa: B027 - only solo runs in the caller's thread
        """Run the loop in the calling thread (solo)."""


class ThreadPool(Pool):
    """Consumer loops in threads of this process; each thread has its own DB connection."""

    def __init__(self, config: PoolConfig) -> None:
        super().__init__(config)
        self._threads: dict[str, threading.Thread] = {}
        self._failed: list[LostLoop] = []

    def _target(self, token: str, tally: Tally) -> None:
        try:
            Consumer(
                self.config.queues,
                hostname=process_name(),
                lease_token=token,
                stop=self.config.stop,
                burst=self.config.burst,
                tally=tally,
            ).run()
        except BaseException:  # SystemExit included: the thread is replaced, never silent
            logger.exception("Consumer thread crashed; it is replaced")
            self._failed.append(LostLoop(token))
        finally:
            connections.close_all()

    def start(self) -> None:
        for _ in range(self.config.concurrency):
            self._start_thread()

    def _start_thread(self) -> None:
        token = new_lease_token()
        thread = threading.Thread(
            target=self._target,
            args=(token, self.tallies.new(token)),
            daemon=True,
            name=f"django-tasks-consumer-{len(self._threads)}",
        )
        self._threads[token] = thread
        thread.start()

    def respawn(self) -> None:
        if self.config.stop.is_set() or self.config.burst:
            return
        for token in [t for t, th in self._threads.items() if not th.is_alive()]:
            del self._threads[token]
            self.tallies.retire(token)
        while len(self._threads) < self.config.concurrency:
            self._start_thread()

    def lease_tokens(self) -> list[str]:
        return [t for t, th in self._threads.items() if th.is_alive()]

    def reap(self) -> list[LostLoop]:
        failed, self._failed = self._failed, []
        return failed

    def alive(self) -> bool:
        return any(th.is_alive() for th in self._threads.values())

    def kill(self) -> list[LostLoop]:
        self.config.stop.set()
        return [LostLoop(token) for token in self.lease_tokens()]


class SoloPool(ThreadPool):
    """One consumer loop in the main thread; the supervisor runs in a helper thread."""

    def start(self) -> None:
        self._token = new_lease_token()
        self._tally = self.tallies.new(self._token)

    def respawn(self) -> None:
        """The one loop runs in the main thread; if it fails, the worker exits."""

    def run_inline(self) -> None:
        self._running = True
        try:
            Consumer(
                self.config.queues,
                hostname=process_name(),
                lease_token=self._token,
                stop=self.config.stop,
                burst=self.config.burst,
                tally=self._tally,
            ).run()
        except BaseException:
            self._failed.append(LostLoop(self._token))
            raise
        finally:
            self._running = False

    def lease_tokens(self) -> list[str]:
        return [self._token] if getattr(self, "_running", False) else []

    def alive(self) -> bool:
        return getattr(self, "_running", True)


def _stop_with_parent() -> None:
    """Ask Linux to send this child SIGTERM when the parent dies (PR_SET_PDEATHSIG): a warm
    shutdown, so that a killed worker's children finish the task they are running, record
    what they ran, and give back the tasks they had not started, instead of taking them all
    down with the parent."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)
        except Exception:  # pragma: no cover - best effort
            pass


class PreforkPool(Pool):
    """Consumer loops in forked child processes; a child that dies is replaced.

    Each child shares a :class:`TaskSlot` with the parent, saying which task it runs.
    """

    def __init__(self, config: PoolConfig) -> None:
        super().__init__(config)
        self._children: dict[int, str] = {}
        self._slots: dict[int, TaskSlot] = {}

    def children(self) -> list[tuple[int, str, TaskSlot]]:
        """``(pid, lease token, slot)`` of each child not reaped yet."""
        return [(pid, token, self._slots[pid]) for pid, token in self._children.items()]

    def _spawn(self) -> None:
        token = new_lease_token()
        slot = TaskSlot()
        tally = self.tallies.new(token)
        connections.close_all()  # never share a connection's socket across fork
        parent = os.getpid()
        pid = os.fork()
        if pid:
            self._children[pid] = token
            self._slots[pid] = slot
            return
        code = 0
        consumer = None
        try:
            _stop_with_parent()
            if os.getppid() != parent:
                os._exit(1)
            stop = threading.Event()
            # The parent decides on Ctrl-C; SIGTERM is its warm shutdown. Either kills the
            # child when the parent sends it to terminate the running task.
            signal.signal(signal.SIGINT, terminate_handler(slot, None))
            signal.signal(signal.SIGTERM, terminate_handler(slot, lambda *_: stop.set()))
            from .. import transports

            transports._local.__dict__.clear()
            consumer = Consumer(
                self.config.queues,
                hostname=process_name(),
                lease_token=token,
                stop=stop,
                burst=self.config.burst,
                enforcer=SignalEnforcer(slot),
                journal=slot,
                tally=tally,
                max_tasks=self.config.max_tasks_per_child,
                max_memory_kib=self.config.max_memory_per_child,
            )
            consumer.run()
            if consumer.retired is not None:
                slot.retire()
        except BaseException:
            logger.exception("Worker process crashed")
            code = 1
        finally:
            try:
                connections.close_all()
            finally:
                logging.shutdown()
                os._exit(code)

    def start(self) -> None:
        for _ in range(self.config.concurrency):
            self._spawn()

    def lease_tokens(self) -> list[str]:
        return list(self._children.values())

    def reap(self) -> list[LostLoop]:
        lost = []
        while self._children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            token = self._children.pop(pid, None)
            slot = self._slots.pop(pid, None)
            code = os.waitstatus_to_exitcode(status)
            if token is not None:
                self.tallies.retire(token)
            if token is not None and code == 0 and slot is not None and slot.retired():
                # A planned exit: it recorded its outcomes and gave back what it had not
                # started, so there is nothing to settle; it is replaced, even in a burst.
                self.retired += 1
            elif token is not None and code != 0:
                logger.error(
                    "Worker process %d exited with %s",
                    pid,
                    f"signal {-code}" if code < 0 else f"code {code}",
                )
                lost.append(LostLoop(token, slot))
        return lost

    def respawn(self) -> None:
        retired, self.retired = self.retired, 0
        if self.config.stop.is_set():
            return
        if self.config.burst:  # a burst replaces retired children only, not dead ones
            for _ in range(retired):
                self._spawn()
            return
        while len(self._children) < self.config.concurrency:
            self._spawn()

    def alive(self) -> bool:
        return bool(self._children)

    def request_stop(self) -> None:
        super().request_stop()
        for pid in self._children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def kill(self) -> list[LostLoop]:
        self.config.stop.set()
        lost = [LostLoop(token, self._slots.get(pid)) for pid, token in self._children.items()]
        for pid in list(self._children):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self._children.clear()
        self._slots.clear()
        return lost


def make_pool(name: str, config: PoolConfig) -> Pool:
    if name == "prefork":
        return PreforkPool(config)
    if name == "threads":
        return ThreadPool(config)
    if name == "solo":
        return SoloPool(config)
    raise ValueError(f"unknown pool {name!r}; choose one of {', '.join(POOLS)}")
