"""The narrow contract between the calling side, the worker and a message transport."""

from __future__ import annotations

import abc
import datetime as dt
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..task import OutgoingTask


@dataclass(slots=True)
class ClaimedTask:
    """A task a worker holds a lease on, as read from the transport."""

    pk: int
    task_id: str
    task_name: str
    state: str
    args: Any
    kwargs: Any
    body: bytes | None
    content_type: str
    options: dict[str, Any]
    retries: int
    queue: str
    priority: int
    run_after: dt.datetime
    expires: dt.datetime | None
    revoked: bool
    owner_id: Any
    #: The broker message it came in, while it is still to be acknowledged (broker transports).
    delivery: Any = None


class Transport(abc.ABC):
    """Sends tasks, and lets workers claim, keep and give back leases on them."""

    #: A URL scheme this transport serves, e.g. ``"django"``.
    scheme: str = ""
    #: True where waiting workers and result waiters are woken without polling.
    wakes_without_polling: bool = False

    def __init__(self, url: str) -> None:
        self.url = url

    @abc.abstractmethod
    def send(self, outgoing: OutgoingTask, *, retry: bool, retry_policy: dict[str, Any]) -> None:
        """Store or publish one task; retry per ``retry_policy`` on connection errors."""

    def send_on_commit(
        self, outgoing: OutgoingTask, *, retry: bool, retry_policy: dict[str, Any]
    ) -> None:
        """Send ``outgoing`` when the current transaction commits (at once outside one)."""
        from django.db import transaction

        transaction.on_commit(
            functools.partial(self.send, outgoing, retry=retry, retry_policy=retry_policy)
        )

    @abc.abstractmethod
    def claim(
        self, queues: list[str], limit: int, *, lease_token: str, lease_seconds: float, worker: str
    ) -> list[ClaimedTask]:
        """Lease up to ``limit`` due tasks of ``queues``, best first."""

    @abc.abstractmethod
    def renew(self, lease_tokens: list[str], lease_seconds: float) -> int:
        """Extend every lease held under ``lease_tokens``; returns how many tasks that kept."""

    @abc.abstractmethod
    def release(self, lease_token: str, pks: list[int]) -> int:
        """Give back claimed tasks that were never started, for another worker to run."""

    def release_claimed(self, lease_token: str, claimed: list[ClaimedTask]) -> int:
        """Give back claimed tasks that were never started (warm shutdown)."""
        return self.release(lease_token, [c.pk for c in claimed])

    def settle(self, claimed: list[ClaimedTask]) -> None:  # noqa: B027 - optional hook
        """Acknowledge what is still unacknowledged, once the outcomes are recorded."""

    def relay(self) -> float | None:
        """Publish waiting tasks that are due but not with the broker yet (broker transports).

        Returns the seconds until the next one is due, or None when there is nothing to relay.
        """
        return None

    @abc.abstractmethod
    def recover_expired_leases(self) -> int:
        """Apply the lost-worker rule to tasks whose lease ran out; returns how many."""

    @abc.abstractmethod
    def revoke_expired(self, limit: int = 1000) -> int:
        """Mark waiting tasks whose ``expires`` has passed ``REVOKED`` (expired); how many."""

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
        from ..conf import tasks_settings

        configured = tasks_settings.WORKER_POLL_INTERVAL
        if configured is not None:
            return float(configured)
        return 1.0 if self.wakes_without_polling else 0.1

    def describe(self) -> str:
        """One line for the worker banner."""
        return self.url

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections held for waiting."""
