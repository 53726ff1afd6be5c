"""The Django database transport (``django://``): the task row is the queue entry.

* Sending is one ``INSERT`` (on PostgreSQL a trigger adds a ``NOTIFY`` to it).
* Claiming leases a batch of due rows in one statement (:func:`django_tasks.store.claim`).
* Waiting workers ``LISTEN`` for new rows on PostgreSQL, watch SQLite's ``PRAGMA
  data_version`` for other connections' commits, and poll elsewhere (MySQL/MariaDB).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from django.core.checks import CheckMessage, Error

from .. import store
from ..conf import SETTINGS_NAME
from ..store import Claim, ClaimedTask
from ..store.notify import CommitWatcher, QueueListener, can_listen, can_watch_commits
from .base import KnownTask, OutgoingTask, Publishing, Transport, database_description


class DatabaseTransport(Transport):
    """Tasks as rows of :class:`~django_tasks.models.TaskResult` in the default database."""

    scheme = "django"
    # A claim and the write of its outcomes cost more CPU than a short task: while a stream
    # comes in, claims of a few tasks at a time made every extra loop slow the sender down.
    claim_linger = 0.02
    small_claim = 10

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._listener = QueueListener()
        self._commits: CommitWatcher | None = None
        #: SQLite: the database's commit count just before this thread's last claim.
        self._claimed_at: int | None = None

    @property
    def wakes_workers(self) -> bool:  # type: ignore[override]
        return can_listen()

    @classmethod
    def check(cls, url: str) -> list[CheckMessage]:
        errors: list[CheckMessage] = []
        if url != "django://":
            errors.append(
                Error(
                    f"{SETTINGS_NAME}['BROKER_URL']: the database transport takes no host or "
                    f"path: use 'django://'",
                    hint="Use 'django://'.",
                    id="django_tasks.E002",
                )
            )
        return errors

    def describe(self) -> str:
        return database_description()

    # -- sending ------------------------------------------------------------------------------

    def send(self, outgoing: OutgoingTask, *, retry: bool, retry_policy: dict[str, Any]) -> None:
        # The row is the message: nothing is left for a relay to publish.
        store.insert_task(outgoing, dispatched=True, retry=retry, retry_policy=retry_policy)

    def send_many(self, outgoing: Iterable[OutgoingTask], publishing: Publishing) -> None:
        # A group: one multi-row INSERT (a COPY on PostgreSQL) per 1,000 tasks, in one
        # transaction.
        store.insert_tasks(outgoing, dispatched=True)

    # -- claiming -----------------------------------------------------------------------------

    def claim(self, request: Claim, *, known_task: KnownTask | None = None) -> list[ClaimedTask]:
        if self._commits is not None:  # SQLite, once this thread has waited
            self._claimed_at = self._commits.version()
        return store.claim(request)

    def release(self, lease_token: str, claimed: list[ClaimedTask]) -> int:
        return store.give_back(lease_token, [c.pk for c in claimed], republish=False)

    # -- waiting ------------------------------------------------------------------------------

    def seconds_until_due(self, queues: list[str], cap: float) -> float:
        return store.seconds_until_due(queues, cap)

    def wait_for_tasks(self, queues: list[str], timeout: float) -> None:
        if timeout <= 0:
            return
        if self.wakes_workers:
            self._listener.wait(queues, timeout, fallback_sleep=self.poll_interval)
            return
        if not can_watch_commits():
            time.sleep(timeout)
            return
        if self._commits is None:
            self._commits = CommitWatcher()
        # SQLite: wake at a commit that left a task of ours due (most commits are outcomes),
        # counting commits from before the last claim: one made between that claim and this
        # wait would otherwise be slept on until the poll interval ends. Each later look
        # for due tasks is likewise preceded by taking the version it waits from.
        since, self._claimed_at = self._claimed_at, None
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if since is None:
                since = self._commits.version()
                if store.has_due_rows(queues):
                    return
            if not self._commits.wait(remaining, since=since):
                return
            since = None

    def close(self) -> None:
        self._listener.close()


__all__ = ["DatabaseTransport"]
