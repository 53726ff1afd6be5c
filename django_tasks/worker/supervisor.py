"""The worker process: banner, signals, lease heartbeat and reaper around a pool."""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
from typing import Any

from django.db import DatabaseError, connections
from kombu.exceptions import OperationalError as BrokerError

from .. import store
from ..conf import tasks_settings
from ..registry import tasks_registry
from ..transports import Transport, get_transport
from .beat import Scheduler
from .consumer import refresh_connections
from .pool import LostLoop, PoolConfig, PreforkPool, make_pool, process_name
from .recovery import recover_lost, settle_lost_loop
from .startup import database_label, wait_until_ready
from .watchdog import Watchdog

logger = logging.getLogger("django_tasks.worker")

#: How often the supervisor looks at its pool and its signals.
TICK = 0.1
#: The relay looks for due tasks without a message at least this often (sooner when the
#: next one is due sooner).
RELAY_INTERVAL = 1.0


class Worker:
    """``runworker``: run consumer loops in a pool until stopped (or, with burst, drained)."""

    def __init__(
        self,
        *,
        queues: list[str],
        concurrency: int,
        pool: str,
        burst: bool,
        beat: bool = True,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
    ) -> None:
        self.queues = queues
        self.concurrency = concurrency
        self.pool_name = pool
        self.burst = burst
        self.lease_seconds = float(tasks_settings.WORKER_LEASE_SECONDS)
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        self.pool = make_pool(
            pool,
            PoolConfig(
                queues=queues,
                concurrency=concurrency,
                burst=burst,
                max_tasks_per_child=max_tasks_per_child,
                max_memory_per_child=max_memory_per_child,
            ),
        )
        self._signals = 0
        self._woken = threading.Event()
        self._exit_code: int | None = None
        self._lost: list[LostLoop] = []
        self.watchdog = Watchdog(self.pool) if isinstance(self.pool, PreforkPool) else None
        #: The periodic task scheduler (not in a burst, which exits once drained).
        self.scheduler = Scheduler() if beat and not burst else None
        #: This worker's row (WorkerRecord), once registered.
        self.record_pk: int | None = None

    # -- start-up ------------------------------------------------------------------------------

    def wait_until_ready(self) -> None:
        """Wait for the database and the broker to answer; StartupError if the worker
        cannot start (e.g. the database is not migrated)."""
        wait_until_ready(get_transport())

    def banner(self) -> str:
        transport = get_transport()
        names = sorted(tasks_registry)
        broker = transport.broker_uri()
        lines = [
            f"django_tasks worker {process_name()}",
            f"  transport:   {transport.describe()}",
            f"  database:    {database_label()}",
            f"  broker:      {broker or 'none (the database is the queue)'}",
            f"  queues:      {', '.join(self.queues)}",
            f"  concurrency: {self.concurrency} ({self.pool_name})"
            + ("  [burst: exits when no task is due]" if self.burst else ""),
            f"  beat:        {'on' if self.scheduler else 'off'}",
            *self._recycle_line(),
            f"  tasks ({len(names)}):",
            *[f"    . {name}" for name in names],
        ]
        return "\n".join(lines)

    def _recycle_line(self) -> list[str]:
        limits = []
        if self.max_tasks_per_child is not None:
            limits.append(f"{self.max_tasks_per_child} tasks")
        if self.max_memory_per_child is not None:
            limits.append(f"{self.max_memory_per_child} KiB resident")
        return [f"  children:    replaced after {' or '.join(limits)}"] if limits else []

    def request_stop(self) -> None:
        """What a signal does: a warm shutdown the first time, a cold one the second."""
        self._signals += 1
        self._woken.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # under --reload: the reloader owns the main thread and its signals

        def handle(signum: int, _frame: Any) -> None:
            self.request_stop()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    # -- running -------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; return the process exit code (0 after a warm shutdown)."""
        prepare_database()
        self._install_signal_handlers()
        recover_lost()
        store.revoke_expired()
        if self.scheduler is not None:
            self.scheduler.sync()
        self.record_pk = store.register_worker(
            hostname=socket.gethostname(),
            pid=os.getpid(),
            queues=self.queues,
            pool=self.pool_name,
            concurrency=self.concurrency,
        )
        connections.close_all()
        self.pool.start()
        if self.pool_name == "solo":
            helper = threading.Thread(
                target=self._supervise, name="django-tasks-supervisor", daemon=True
            )
            helper.start()
            try:
                self.pool.run_inline()
            except BaseException:
                logger.exception("The worker's consumer loop failed; stopping")
                self._exit_code = 1
            self._woken.set()
            helper.join()
        else:
            self._supervise()
        self._heartbeat(stopped=True)
        return self._exit_code or 0

    def _heartbeat(self, *, stopped: bool = False) -> None:
        """Write the worker's row: one UPDATE (and a read of its running tasks by key)."""
        if self.record_pk is None:
            return
        done, failed, pks = self.pool.tally()
        if stopped:
            try:
                store.heartbeat_worker(
                    self.record_pk, done=done, failed=failed, running=[], stopped=True
                )
            except DatabaseError as exc:
                logger.warning("Could not mark the worker's row stopped (%s)", exc)
            finally:
                connections.close_all()
            return
        running = store.running_tasks(pks)
        store.heartbeat_worker(self.record_pk, done=done, failed=failed, running=running)

    def _supervise(self) -> None:
        transport: Transport = get_transport()
        renew_every = max(self.lease_seconds / 3, TICK)
        reap_every = max(self.lease_seconds / 2, TICK)
        next_renew = time.monotonic() + renew_every
        next_reap = time.monotonic() + reap_every
        next_relay = 0.0
        warm_requested = False
        try:
            while True:
                # Wake for the relay's next due task, or the scheduler's next due run, when
                # sooner than a tick: their lateness is what this wait adds.
                wake_at = next_relay if transport.needs_relay else math.inf
                if self.scheduler is not None:
                    wake_at = min(wake_at, self.scheduler.next_due_monotonic())
                self._woken.wait(min(TICK, max(0.0, wake_at - time.monotonic())))
                self._woken.clear()
                if self._signals >= 2:
                    self._cold_shutdown()
                    return
                if self._signals == 1 and not warm_requested:
                    warm_requested = True
                    logger.warning(
                        "Warm shutdown: finishing running tasks (signal again to stop at once)"
                    )
                    self.pool.request_stop()
                lost = self.pool.reap()
                if lost or self.pool.retired:
                    self._lost.extend(lost)
                    self.pool.respawn()
                if not self.pool.alive():
                    self._settle()
                    if not (warm_requested or self.burst or self._exit_code):
                        # Nobody asked it to stop: a supervisor must not read this as a
                        # clean exit.
                        logger.error("Every consumer loop has stopped; the worker exits with 1")
                        self._exit_code = 1
                    return
                now = time.monotonic()
                try:
                    if self.watchdog is not None:
                        self.watchdog.check()
                    self._settle()
                    if now >= next_renew:
                        store.renew(self.pool.lease_tokens(), self.lease_seconds)
                        self._heartbeat()
                        next_renew = now + renew_every
                    if transport.needs_relay and now >= next_relay:  # due tasks with no message
                        due_in = transport.relay()
                        wait = RELAY_INTERVAL if due_in is None else min(RELAY_INTERVAL, due_in)
                        next_relay = now + wait
                    if self.scheduler is not None:
                        self.scheduler.tick()
                    if now >= next_reap:
                        recover_lost()
                        store.revoke_expired()
                        next_reap = now + reap_every
                    refresh_connections()
                except (DatabaseError, BrokerError) as exc:
                    logger.warning("Error in the worker supervisor (%s); retrying", exc)
                    connections.close_all()
                    self._woken.wait(1.0)
        except Exception:
            logger.exception("Worker supervisor failed; stopping")
            self._exit_code = 1
            self.pool.request_stop()
        finally:
            connections.close_all()

    def _settle(self) -> None:
        """Record the tasks the watchdog stopped, then settle the tasks of loops that died
        (their journaled outcomes, their unstarted tasks, the lost-worker rule)."""
        if self.watchdog is not None:
            self.watchdog.settle()
        while self._lost:
            lost = self._lost.pop(0)
            settle_lost_loop(lost.token, lost.slot)

    def _cold_shutdown(self) -> None:
        logger.warning("Cold shutdown: stopping now")
        lost = self.pool.kill()
        try:
            for loop in lost:
                settle_lost_loop(loop.token, loop.slot)
            self._heartbeat(stopped=True)
        finally:
            logging.shutdown()
            os._exit(1)


def prepare_database() -> None:
    """Per-database set-up a worker needs: WAL mode on SQLite, for concurrent readers."""
    from django.db import connection

    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode=WAL")
    elif connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SHOW autovacuum")
            if cursor.fetchone()[0] != "on":
                logger.warning(
                    "PostgreSQL's autovacuum is off: every claim and outcome leaves a "
                    "dead row behind, so vacuum the task table regularly "
                    "(VACUUM django_tasks_taskresult) or turn autovacuum on"
                )
