"""Waking up on changes: PostgreSQL ``LISTEN``/``NOTIFY`` where the database has it,
polling elsewhere.

Two triggers (migration 0002) notify: :data:`TASKS_CHANNEL` when a task row is inserted
(payload: its queue) and :data:`STATES_CHANNEL` when a task's state changes (payload: its
task id). Whether to listen depends on the database only, never on the transport: results
live in the database whatever carries the tasks.
"""

from __future__ import annotations

import logging
import threading
import time
from types import ModuleType
from typing import Any, Protocol

from django.db import connection

from .sql import fetch_by_task_id

logger = logging.getLogger("django_tasks.transport")

#: PostgreSQL channel a trigger notifies (payload: the queue) when a task row is inserted.
TASKS_CHANNEL = "django_tasks_enqueued"
#: PostgreSQL channel a trigger notifies (payload: the task id) when a task's state changes.
STATES_CHANNEL = "django_tasks_state"
#: The first poll comes this soon; later ones back off.
FIRST_POLL_INTERVAL = 0.005
#: The columns whose change wakes :func:`wait_for_change` (what a NOTIFY is sent for).
CHANGE_FIELDS = ("state", "meta", "retries", "date_done")


def can_listen() -> bool:
    """Whether the default database notifies: PostgreSQL through psycopg 3 (with psycopg2,
    everything polls)."""
    if connection.vendor != "postgresql":
        return False
    # ``Database`` is the backend's DB-API module: every backend sets it; django-stubs lack it.
    database: ModuleType = connection.Database  # type: ignore[attr-defined]
    return database.__name__ == "psycopg"


def open_listen_connection(channel: str) -> Any:
    """A separate autocommit psycopg connection listening on ``channel``."""
    import psycopg

    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params.pop("server_side_binding", None)
    conn = psycopg.connect(**params, autocommit=True)
    conn.execute(f"LISTEN {channel}")
    return conn


class QueueListener:
    """Waits for new tasks in some queues on :data:`TASKS_CHANNEL` (one per worker loop)."""

    def __init__(self) -> None:
        self._conn: Any = None

    def wait(self, queues: list[str], timeout: float, fallback_sleep: float) -> None:
        """Block until a task is inserted into one of ``queues`` or ``timeout`` passes; if the
        connection fails, sleep at most ``fallback_sleep`` and reconnect next time."""
        wanted = set(queues)
        deadline = time.monotonic() + timeout
        try:
            if self._conn is None or self._conn.closed:
                self._conn = open_listen_connection(TASKS_CHANNEL)
            while (remaining := deadline - time.monotonic()) > 0:
                for notify in self._conn.notifies(timeout=remaining, stop_after=1):
                    if notify.payload in wanted:
                        return
        except Exception as exc:  # psycopg's own errors: the LISTEN connection is not Django's
            logger.warning("LISTEN connection failed (%s); polling until it is back", exc)
            self.close()
            time.sleep(max(0.0, min(deadline - time.monotonic(), fallback_sleep)))

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


class Waiter(Protocol):
    def wait(self, task_id: str, timeout: float) -> None: ...


class PollingWaiter:
    def wait(self, task_id: str, timeout: float) -> None:
        time.sleep(max(timeout, 0))


class NotifyWaiter:
    """Waits on PostgreSQL notifications of state changes, falling back to the timeout."""

    def __init__(self) -> None:
        self.conn = open_listen_connection(STATES_CHANNEL)

    def wait(self, task_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                for notify in self.conn.notifies(timeout=remaining, stop_after=1):
                    if notify.payload == task_id:
                        return
        except Exception:
            self.conn.close()
            _local.waiter = None
            time.sleep(max(deadline - time.monotonic(), 0))


_local = threading.local()


def waiter() -> Waiter:
    """This thread's result waiter: notifications on PostgreSQL, polling elsewhere."""
    current: Waiter | None = getattr(_local, "waiter", None)
    if current is None:
        current = PollingWaiter()
        if can_listen():
            try:
                current = NotifyWaiter()
            except Exception:
                current = PollingWaiter()
        _local.waiter = current
    return current


def close_waiter() -> None:
    """Close this thread's result-waiting connection (PostgreSQL LISTEN), if any.

    ``get()`` keeps one per thread so that waiting is fast; close it when a thread is done
    with results, e.g. at the end of a test, so that the test database can be dropped.
    """
    current = getattr(_local, "waiter", None)
    if isinstance(current, NotifyWaiter):
        current.conn.close()
    _local.waiter = None


def change_marker(task_id: str) -> tuple[Any, ...] | None:
    """What :func:`wait_for_change` compares: the task's state, meta, retries and date_done."""
    row = fetch_by_task_id(task_id, CHANGE_FIELDS)
    return None if row is None else tuple(row[name] for name in CHANGE_FIELDS)


def wait_for_change(
    task_id: str, seen: tuple[Any, ...] | None, timeout: float, interval: float = 1.0
) -> bool:
    """Block up to ``timeout`` seconds until :func:`change_marker` differs from ``seen``.

    Uses the same wake-up as ``get(on_message=...)``: PostgreSQL notifications where the
    database has them, polling with backoff up to ``interval`` elsewhere. Closes this
    thread's LISTEN connection before returning, so request threads do not keep one each.
    Returns True if the task changed.
    """
    deadline = time.monotonic() + timeout
    pause = min(FIRST_POLL_INTERVAL * 10, interval)
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            waiter().wait(task_id, min(pause, remaining))
            if change_marker(task_id) != seen:
                return True
            pause = min(pause * 2, interval)
        return False
    finally:
        close_waiter()
