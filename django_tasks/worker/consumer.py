"""One consumer loop: claim a batch, run it, record the outcomes in bulk, repeat.

A worker runs ``--concurrency`` of these, each in its own process (prefork), thread
(threads) or inline (solo), each holding its own lease token.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
import os
import resource
import sys
import threading
import time
import uuid

from django.conf import settings
from django.db import DatabaseError, connection, connections, reset_queries

from .. import store
from ..conf import tasks_settings
from ..links import run_followups
from ..registry import tasks_registry
from ..store import ClaimedTask
from ..transports import get_transport
from . import rates
from .execution import ExecutionContext, Outcome, execute
from .limits import Enforcer, enforcer_for_this_thread
from .recovery import journal_entry, recover_lost
from .slots import TaskSlot
from .tally import Tally

logger = logging.getLogger("django_tasks.worker")

#: A batch is sized to take about this long, so prefetched tasks are not held for long.
BATCH_WINDOW = 0.05
#: Outcomes waiting longer than this are written before the next task starts.
FLUSH_AFTER = 0.02
#: A burst on a broker transport waits this long for the messages of due tasks.
BURST_PATIENCE = 5.0
#: How often a burst waiting for tasks a rate limit held back looks for those now due.
HELD_LOOK_INTERVAL = 0.05
#: Claimed tasks held longer than this are checked for a revoke before they start.
REVOKE_RECHECK_AFTER = 0.1


def new_lease_token() -> str:
    return uuid.uuid4().hex


def resident_kib() -> int:
    """This process's resident set size now, in KiB.

    From ``/proc/self/statm`` where there is one: ``ru_maxrss`` is the peak, which never
    comes down, so a child judged by it could not tell a spike from a leak.
    """
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS


def refresh_connections() -> None:
    """Drop broken or (with ``CONN_MAX_AGE`` > 0) too old connections; keep the rest.

    Django closes connections at the end of each request; a worker has no requests, and
    reconnecting for every task would cost more than the task itself.
    """
    for conn in connections.all(initialized_only=True):
        if conn.connection is None or conn.in_atomic_block:
            continue  # no connection yet, or the caller's transaction (run_until_empty)
        if conn.errors_occurred:
            if not conn.is_usable():
                conn.close()
                continue
            conn.errors_occurred = False
        max_age = conn.settings_dict.get("CONN_MAX_AGE") or 0
        if max_age and conn.close_at is not None and time.monotonic() >= conn.close_at:
            conn.close()
    if settings.DEBUG:
        reset_queries()


class Consumer:
    """Claims and runs tasks of ``queues`` until ``stop`` is set (or, in burst, none are due)."""

    def __init__(
        self,
        queues: list[str],
        *,
        hostname: str,
        lease_token: str,
        stop: threading.Event,
        burst: bool = False,
        enforcer: Enforcer | None = None,
        journal: TaskSlot | None = None,
        tally: Tally | None = None,
        max_tasks: int | None = None,
        max_memory_kib: int | None = None,
    ) -> None:
        self.queues = queues
        self.hostname = hostname
        self.lease_token = lease_token
        self.stop = stop
        self.burst = burst
        #: Prefork: shared memory where finished outcomes wait for the next write, so that
        #: the parent records them if this process dies.
        self.journal = journal
        #: Counters the supervisor reads for the worker's row.
        self.tally = tally or Tally()
        self.transport = get_transport()
        self.lease_seconds = float(tasks_settings.WORKER_LEASE_SECONDS)
        self.poll_interval = self.transport.poll_interval
        self.prefetch_max = int(tasks_settings.WORKER_PREFETCH_MAX)
        self.context = ExecutionContext.build(
            hostname,
            lease_token,
            tasks_settings.ACCEPT_CONTENT,
            enforcer or enforcer_for_this_thread(),
        )
        self._seconds_per_task = BATCH_WINDOW / 4  # first claims take 4 tasks
        self.processed = 0
        self._next_due = 0.0  # monotonic time by which to look for due tasks again
        self._last_claim = 0.0  # monotonic time of the last claim
        self._linger = False  # whether the next claim waits for the transport's claim_linger
        self._burst_waiting_since: float | None = None
        #: The turns (epoch seconds, a heap) of the tasks a rate limit held back, with their
        #: ids: this loop claims them then.
        self._turns: list[tuple[float, str]] = []
        #: When (epoch seconds) the last task a rate limit held back may start: a burst
        #: waits for it, since it is part of what the burst drains.
        self._held_until: float | None = None
        #: Prefork children are replaced after this many tasks, or once their resident
        #: memory is over this many KiB after a task (Celery's limits of the same names).
        self.max_tasks = max_tasks
        self.max_memory_kib = max_memory_kib
        self.tasks_run = 0
        #: Why this loop stopped to be replaced (a limit it reached), or None.
        self.retired: str | None = None

    def batch_size(self) -> int:
        return max(1, min(self.prefetch_max, math.ceil(BATCH_WINDOW / self._seconds_per_task)))

    def run(self) -> None:
        """Loop until stopped (or, in burst, drained); ride out database outages."""
        failures = 0
        try:
            while not self.stop.is_set():
                try:
                    if self.step():
                        return
                    failures = 0
                except DatabaseError as exc:
                    if connection.in_atomic_block:
                        raise  # the caller's transaction is broken; reconnecting cannot help
                    failures += 1
                    self.recover_from(exc, failures)
        finally:
            self.transport.close()

    def step(self) -> bool:
        """One claim-run-record round, then wait if idle; True when a burst is done."""
        limit = self.batch_size()
        if self.max_tasks is not None:
            limit = max(1, min(limit, self.max_tasks - self.tasks_run))  # claim no spare tasks
        if self.burst and self.transport.needs_relay:
            self.transport.relay()  # a worker's supervisor does this; burst runs alone
        if self._linger:
            self.stop.wait(self._last_claim + self.transport.claim_linger - time.monotonic())
        self._last_claim = time.monotonic()
        ran = self.run_batch(limit)
        if self.retired is not None:
            return True
        refresh_connections()
        # A short batch from a claim that takes all due tasks means the queue was drained.
        # Where notifications wake us, go straight to waiting (any that came meanwhile are
        # buffered) instead of spending an empty claim; where we poll, in burst, or where a
        # claim takes only what was delivered (brokers), look again at once.
        notified = self.transport.wakes_workers
        takes_all = self.transport.claim_takes_all_due
        small = min(limit, self.transport.small_claim or limit)
        self._linger = (
            notified and not self.burst and ran != 1 and ran < small and (ran > 0 or takes_all)
        )
        if ran == limit or (ran and (self.burst or not notified or not takes_all)):
            return False
        if self.burst:
            if self._held_until is not None and time.time() < self._held_until:
                # Tasks held back by a rate limit come back due one by one meanwhile.
                self.stop.wait(min(HELD_LOOK_INTERVAL, self._held_until - time.time()))
                return False
            return not self._burst_should_wait()
        now = time.monotonic()
        if ran and notified and now < self._next_due:
            # New and retried tasks notify us, so the due time we last computed still holds.
            wait = self._next_due - now
        else:
            wait = self.transport.seconds_until_due(self.queues, self.poll_interval)
            self._next_due = now + wait
        if self._turns:
            wait = max(0.0, min(wait, self._turns[0][0] - time.time()))
        self.transport.wait_for_tasks(self.queues, wait)
        return False

    def _burst_should_wait(self) -> bool:
        """Whether a burst must wait for messages of due tasks still on their way to it
        (broker transports); it gives up after ``BURST_PATIENCE`` seconds without any."""
        if not self.transport.needs_relay or not store.has_due_rows(self.queues):
            return False
        if store.revoke_expired():
            return True  # expired while waiting (a broker may have dropped the message)
        now = time.monotonic()
        if self._burst_waiting_since is None:
            self._burst_waiting_since = now
        elif now - self._burst_waiting_since > BURST_PATIENCE:
            logger.warning("Burst: due tasks are in the database but no message came for them")
            return False
        self.transport.wait_for_tasks(self.queues, 0.05)
        return True

    def recover_from(self, exc: DatabaseError, failures: int) -> None:
        """Reconnect, then settle the tasks this loop held when the error struck.

        Their outcomes may be lost, and the supervisor would renew their leases forever,
        so they get the lost-worker rule (acks_late: queued again; else WorkerLostError)
        before this loop claims anything new.
        """
        while not self.stop.is_set():
            delay = min(0.5 * 2 ** (failures - 1), 10.0)
            logger.warning("Database error in the worker loop (%s); retrying in %.1fs", exc, delay)
            connections.close_all()  # this thread's connections
            self.transport.close()
            self.stop.wait(delay)
            try:
                recover_lost([self.lease_token])
                return
            except DatabaseError as again:
                exc, failures = again, failures + 1

    def _claim_turns(self, request: store.Claim) -> list[ClaimedTask]:
        """The tasks this loop's rate limits held back whose turn has come (those another
        loop has not claimed meanwhile); on brokers, with any other due task that waits
        without a message."""
        now = time.time()
        due: list[str] = []
        while self._turns and self._turns[0][0] <= now and len(due) < request.limit:
            due.append(heapq.heappop(self._turns)[1])
        if not due:
            return []
        claimed = store.claim(dataclasses.replace(request, task_ids=due))
        if self.transport.needs_relay and len(claimed) < request.limit:
            # And those other loops held back, due now: those loops may be busy, and the
            # relay leaves them alone for a while.
            left = dataclasses.replace(request, limit=request.limit - len(claimed))
            claimed += store.claim(dataclasses.replace(left, unpublished=True))
        return claimed

    def run_batch(self, limit: int | None = None) -> int:
        """Claim, run and record one batch of at most ``limit``; return how many it held."""
        request = store.Claim(
            self.queues,
            limit or self.batch_size(),
            self.lease_token,
            self.lease_seconds,
            self.hostname,
        )
        batch = self._claim_turns(request) or self.transport.claim(
            request, known_task=tasks_registry.__contains__
        )
        if not batch:
            return 0
        claimed_count = len(batch)
        batch, waiting = rates.admit(batch, self.transport, self.lease_token)
        if waiting:
            last_at = max(at for _task, at in waiting)
            self._held_until = max(self._held_until or last_at, last_at)
            # This loop claims them at their turns, by id: a claim of due tasks would take
            # the older ones first, and on brokers their messages are gone (a new one would
            # queue behind the broker's backlog).
            for task, at in waiting:
                heapq.heappush(self._turns, (at, task.task_id))
        if not batch:
            return claimed_count
        # Deliveries of tasks that are not acks_late are acknowledged before they run.
        early = [
            c for c in batch if c.delivery is not None and not tasks_registry.acks_late(c.task_name)
        ]
        if early:
            self.transport.acknowledge(early)
        self._burst_waiting_since = None
        batch_started = claimed_at = time.monotonic()
        outcomes: list[Outcome] = []
        first_outcome_at = 0.0
        for index, claimed in enumerate(batch):
            if self.stop.is_set():
                self._hand_back(outcomes, batch, index)
                return len(batch)
            if outcomes and (
                time.monotonic() - first_outcome_at > FLUSH_AFTER
                or claimed.options.get("time_limit") is not None
            ):
                # A task that may be killed at its hard limit must not take unrecorded
                # outcomes with it.
                self.flush(outcomes)
            if time.monotonic() - claimed_at > REVOKE_RECHECK_AFTER:
                self._mark_revoked(batch[index:])
                claimed_at = time.monotonic()
            if not outcomes:
                first_outcome_at = time.monotonic()
            self.tally.begin(claimed.pk)
            outcome = execute(claimed, self.context)
            self.tally.end(outcome.change.state)
            outcomes.append(outcome)
            if self.journal is not None:
                if self._journal(outcome):
                    self.journal.settled()
                else:
                    self.flush(outcomes)
            self.tasks_run += 1
            self.retired = self._limit_reached()
            if self.retired is not None:
                logger.info("Worker process retires (%s); it is replaced", self.retired)
                self._hand_back(outcomes, batch, index + 1)
                return len(batch)
        self.flush(outcomes)
        self.transport.acknowledge(batch)  # acks_late: now that outcomes are stored
        elapsed = time.monotonic() - batch_started
        self._seconds_per_task = 0.5 * self._seconds_per_task + 0.5 * (elapsed / len(batch))
        self.processed += len(batch)
        return claimed_count

    def _hand_back(self, outcomes: list[Outcome], batch: list[ClaimedTask], index: int) -> None:
        """Stopping mid-batch: write the outcomes of what ran, give back what did not start.

        Through a database outage this is tried again for up to half a lease: once the
        supervisor is gone (it was killed) nobody renews this loop's lease, and a task still
        leased when the lease runs out would get the lost-worker rule though it never started.
        """
        give_up_at = time.monotonic() + self.lease_seconds / 2
        delay = 0.1
        while True:
            try:
                self.flush(outcomes)
                self.transport.acknowledge(batch[:index])
                if index < len(batch):
                    returned = self.transport.release(self.lease_token, batch[index:])
                    logger.info("Gave back %d claimed task(s) that had not started", returned)
                return
            except DatabaseError as exc:
                if connection.in_atomic_block or time.monotonic() + delay > give_up_at:
                    raise
                logger.warning(
                    "Database error while stopping (%s); trying again in %.1fs", exc, delay
                )
                connections.close_all()  # this thread's connections
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _limit_reached(self) -> str | None:
        """Which of ``max_tasks`` and ``max_memory_kib`` this loop has reached, if any."""
        if self.max_tasks is not None and self.tasks_run >= self.max_tasks:
            return f"{self.tasks_run} tasks run, --max-tasks-per-child {self.max_tasks}"
        if self.max_memory_kib is not None:
            rss = resident_kib()
            if rss > self.max_memory_kib:
                return (
                    f"resident memory {rss} KiB after {self.tasks_run} tasks, "
                    f"over --max-memory-per-child {self.max_memory_kib}"
                )
        return None

    def _journal(self, outcome: Outcome) -> bool:
        """Journal ``outcome`` for the parent; False when it must be written now instead."""
        assert self.journal is not None
        try:
            return self.journal.journal(journal_entry(outcome.change, outcome.replay))
        except Exception:
            logger.exception("Could not journal an outcome; writing it now")
            return False

    def flush(self, outcomes: list[Outcome]) -> None:
        """Record the outcomes in one batch, then apply their links.

        An outcome the database refuses is recorded as a failure on its own (its batch-mates
        are not touched); its errbacks run instead of its links.
        """
        if not outcomes:
            return
        refused: dict[int, BaseException] = {}
        store.record_states(
            [o.change for o in outcomes],
            worker=self.hostname,
            lease_token=self.lease_token,
            on_unstorable=lambda change, exc: refused.__setitem__(change.pk, exc),
        )
        if self.journal is not None:
            self.journal.clear_journal()
            self.journal.settled()
        followups = []
        for outcome in outcomes:
            if outcome.change.pk in refused:
                followups.extend(outcome.on_refused(refused[outcome.change.pk]))
            else:
                followups.extend(outcome.followups)
        outcomes.clear()
        run_followups(followups)

    def _mark_revoked(self, waiting: list[ClaimedTask]) -> None:
        revoked = store.revoked_among([c.pk for c in waiting])
        for claimed in waiting:
            if claimed.pk in revoked:
                claimed.revoked = True
