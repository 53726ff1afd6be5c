"""The transport contract: how a task travels from ``apply_async`` to a worker.

A transport delivers, nothing else. The task row, its leases and its states belong to the
store (:mod:`django_tasks.store`), which every transport uses; a transport only decides how
a worker learns that a task is there (the row itself, or a broker message) and how that
delivery is acknowledged.
"""

from __future__ import annotations

import abc
import datetime as dt
import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from django.core.checks import CheckMessage
from django.db import connection, transaction

from ..conf import tasks_settings
from ..messages import EncodedArguments

if TYPE_CHECKING:  # the store reads models, which this module (imported with the package)
    from ..store import Claim, ClaimedTask  # must not load before Django's apps are ready

__all__ = ["KnownTask", "OutgoingTask", "Publishing", "Transport", "database_description"]

#: Whether this worker runs tasks of a name (the worker passes its registry's answer).
KnownTask = Callable[[str], bool]


class Publishing:
    """How the messages of a bulk send are published (kombu's ``retry`` and
    ``retry_policy``): those of the member prepared last, as its tasks are prepared while
    they are sent."""

    __slots__ = ("retry", "retry_policy")

    def __init__(self) -> None:
        self.retry = True
        self.retry_policy: dict[str, Any] = {}


def database_description() -> str:
    """Where task rows are stored, for the worker banner."""
    settings = connection.settings_dict
    where = settings.get("HOST") or ""
    return f"django:// ({connection.vendor}, {where + '/' if where else ''}{settings['NAME']})"


class OutgoingTask:
    """A task ready to hand to a transport: id, routing, timing and encoded arguments."""

    __slots__ = (
        "created",
        "encoded",
        "expires",
        "options",
        "owner_id",
        "priority",
        "queue",
        "run_after",
        "task_id",
        "task_name",
    )

    def __init__(
        self,
        *,
        task_id: str,
        task_name: str,
        queue: str,
        priority: int,
        encoded: EncodedArguments,
        run_after: dt.datetime,
        expires: dt.datetime | None,
        options: dict[str, Any] | None,
        owner_id: Any,
        created: dt.datetime,
    ) -> None:
        self.task_id = task_id
        self.task_name = task_name
        self.queue = queue
        self.priority = priority
        self.encoded = encoded
        self.run_after = run_after
        self.expires = expires
        self.options = options
        self.owner_id = owner_id
        self.created = created

    @property
    def delayed(self) -> bool:
        """Whether it is not due at once (``countdown``/``eta``)."""
        return self.run_after > self.created


class Transport(abc.ABC):
    """Sends tasks, and hands workers the tasks that are due for them.

    Capability flags tell the worker what a transport needs, instead of the worker probing
    for methods.
    """

    #: A URL scheme this transport serves, e.g. ``"django"``.
    scheme: str = ""
    #: Waiting workers are woken by new tasks, without polling.
    wakes_workers: bool = False
    #: Tasks can wait in the database without a message (countdown/eta, retries, the
    #: on-commit outbox, tasks given back), so workers must run :meth:`relay`.
    needs_relay: bool = False
    #: Where notifications wake the loops: after a claim that found none (another loop woken
    #: by the same notification took them) or fewer than :attr:`small_claim` but not exactly
    #: one (tasks are streaming in), a loop claims again no sooner than this many seconds
    #: after it, so that each claim takes what arrived meanwhile instead of every loop
    #: racing for every task. After a claim of one task (an idle queue, a caller waiting for
    #: each result) or of at least :attr:`small_claim`, it claims again at once.
    claim_linger: float = 0.005
    #: See :attr:`claim_linger`; None: any claim short of a full batch.
    small_claim: int | None = None
    #: A claim takes every due task up to its limit, so a short one means the queue had no
    #: more (the database). False where a claim takes only what has been delivered so far
    #: (a broker's messages): a loop claims again at once after a short claim, and goes to
    #: wait (with no linger) only once a claim finds none.
    claim_takes_all_due: bool = True

    def __init__(self, url: str) -> None:
        self.url = url

    @classmethod
    def check(cls, url: str) -> list[CheckMessage]:
        """System-check messages about ``url`` and what this transport needs to serve it."""
        return []

    # -- the calling side -----------------------------------------------------------------------

    @abc.abstractmethod
    def send(self, outgoing: OutgoingTask, *, retry: bool, retry_policy: dict[str, Any]) -> None:
        """Store or publish one task; retry per ``retry_policy`` on connection errors."""

    def send_many(self, outgoing: Iterable[OutgoingTask], publishing: Publishing) -> None:
        """Send tasks all or nothing, in one transaction (a group); by default one by one.

        ``outgoing`` is consumed once, as it is written: a group's members are prepared
        while the ones before them are on their way to the database."""
        with transaction.atomic():
            for task in outgoing:
                self.send(task, retry=publishing.retry, retry_policy=publishing.retry_policy)

    def send_on_commit(
        self, outgoing: OutgoingTask, *, retry: bool, retry_policy: dict[str, Any]
    ) -> None:
        """Send ``outgoing`` when the current transaction commits (at once outside one)."""
        transaction.on_commit(
            functools.partial(self.send, outgoing, retry=retry, retry_policy=retry_policy)
        )

    # -- the worker side ------------------------------------------------------------------------

    @abc.abstractmethod
    def claim(self, request: Claim, *, known_task: KnownTask | None = None) -> list[ClaimedTask]:
        """Lease up to ``request.limit`` due tasks of ``request.queues``, best first.

        ``known_task`` says whether this worker runs a task name (for broker messages that
        arrive without a row).
        """

    def acknowledge(self, claimed: list[ClaimedTask]) -> None:  # noqa: B027 - optional hook
        """Acknowledge the deliveries of ``claimed`` that are still unacknowledged."""

    @abc.abstractmethod
    def release(self, lease_token: str, claimed: list[ClaimedTask]) -> int:
        """Give back claimed tasks that were never started (warm shutdown); how many."""

    def wait_for_turn(self, lease_token: str, waiting: list[tuple[ClaimedTask, float]]) -> int:
        """Give back claimed tasks ``(task, at)`` held by their ``rate_limit``: each is due
        again at ``at`` (epoch seconds). Their deliveries are acknowledged; a transport with
        :attr:`needs_relay` sends them again when due."""
        from ..store import wait_for_turn

        self.acknowledge([task for task, _at in waiting])
        return wait_for_turn(
            lease_token,
            [(task.pk, at, task.options) for task, at in waiting],
            republish=self.needs_relay,
        )

    def relay(self) -> float | None:
        """Publish due tasks that wait without a message (transports with
        :attr:`needs_relay`); the seconds until the next one is due, or None when none waits.
        """
        return None

    @abc.abstractmethod
    def wait_for_tasks(self, queues: list[str], timeout: float) -> None:
        """Block until tasks may be due in ``queues`` or ``timeout`` seconds pass."""

    @abc.abstractmethod
    def seconds_until_due(self, queues: list[str], cap: float) -> float:
        """Seconds until the next waiting task of ``queues`` is due, at most ``cap``."""

    @property
    def poll_interval(self) -> float:
        """Longest idle wait between looks for due tasks: ``WORKER_POLL_INTERVAL``, or by default
        1 s where workers are woken without polling and 0.1 s where polling is all there is."""
        configured = tasks_settings.WORKER_POLL_INTERVAL
        if configured is not None:
            return float(configured)
        return 1.0 if self.wakes_workers else 0.1

    def describe(self) -> str:
        """One line for the worker banner."""
        return self.url

    def broker_uri(self) -> str | None:
        """The broker's URL with its password masked, or None (the database is the queue)."""
        return None

    def wait_until_reachable(  # noqa: B027 - only brokers have something to reach
        self, errback: Callable[[BaseException, float], None], intervals: tuple[float, float, float]
    ) -> None:
        """Block until the broker accepts a connection, calling ``errback(exc, seconds until
        the next attempt)`` after each failed attempt; ``intervals`` are kombu's
        ``(interval_start, interval_step, interval_max)``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections held for waiting."""
