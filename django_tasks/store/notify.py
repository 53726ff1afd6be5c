"""Waking up on changes: PostgreSQL ``LISTEN``/``NOTIFY`` where the database has it, SQLite's
``PRAGMA data_version``, polling elsewhere.

Two triggers (migration 0002) notify: :data:`TASKS_CHANNEL` when a task row is inserted
(payload: its queue) and :data:`STATES_CHANNEL` when a task's state changes (payload: its
task id). Whether to listen depends on the database only, never on the transport: results
live in the database whatever carries the tasks.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from types import ModuleType
from typing import Any, Protocol

from django.db import connection

logger = logging.getLogger("django_tasks.transport")

#: PostgreSQL channel a trigger notifies (payload: the queue) when a task row is inserted.
TASKS_CHANNEL = "django_tasks_enqueued"
#: PostgreSQL channel a trigger notifies (payload: the task id) when a task's state changes.
STATES_CHANNEL = "django_tasks_state"
#: The first poll comes this soon; later ones back off.
FIRST_POLL_INTERVAL = 0.005
#: The columns whose change ends a :class:`Watch` (what a NOTIFY is sent for).
CHANGE_FIELDS = ("state", "meta", "retries", "date_done")


def can_listen() -> bool:
    """Whether the default database notifies: PostgreSQL through psycopg 3 (with psycopg2,
    everything polls)."""
    if connection.vendor != "postgresql":
        return False
    # ``Database`` is the backend's DB-API module: every backend sets it; django-stubs lack it.
    database: ModuleType = connection.Database  # type: ignore[attr-defined]
    return database.__name__ == "psycopg"


def listen_connection_params() -> dict[str, Any]:
    """psycopg's connection parameters for the default database, as Django would connect."""
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params.pop("server_side_binding", None)
    return params


def open_listen_connection(channel: str) -> Any:
    """A separate autocommit psycopg connection listening on ``channel``."""
    import psycopg

    conn = psycopg.connect(**listen_connection_params(), autocommit=True)
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
    """Waits for a task's row to change: :meth:`watch` before each read of the row, then
    :meth:`wait` if what was read is not what the caller waits for, so that a change
    committed between the read and the wait ends the wait at once."""

    def watch(self, task_id: str) -> None: ...

    def wait(self, task_id: str, timeout: float) -> None: ...


class PollingWaiter:
    def watch(self, task_id: str) -> None:
        pass

    def wait(self, task_id: str, timeout: float) -> None:
        time.sleep(max(timeout, 0))


# -- SQLite: watching for commits -----------------------------------------------------------------

#: How often a waiter on SQLite looks for another connection's commit.
COMMIT_WATCH_TICK = 0.001


def can_watch_commits() -> bool:
    """Whether the default database is SQLite, whose ``PRAGMA data_version`` tells a
    connection that another one committed."""
    return connection.vendor == "sqlite"


class CommitWatcher:
    """Waits for another connection's commit to the SQLite database by reading ``PRAGMA
    data_version`` on this thread's connection every :data:`COMMIT_WATCH_TICK`: SQLite's own
    signal (https://www.sqlite.org/pragma.html#pragma_data_version), a few microseconds in
    process, no lock. Polling with queries for tasks would either add up to its interval to
    every round trip or load the database.

    (It never opens SQLite's files itself: closing a second descriptor of a file drops every
    POSIX lock the process holds on it, SQLite's included.)
    """

    def _version(self) -> int | None:
        try:
            connection.ensure_connection()
            raw: Any = connection.connection
            version: int = raw.execute("PRAGMA data_version").fetchone()[0]
        except Exception:  # no usable connection: the caller sleeps instead
            return None
        return version

    def version(self) -> int | None:
        """Where the database is now: give it to :meth:`wait` as ``since`` *before* looking
        at the state to wait on, so a commit made after that look is not missed."""
        return self._version()

    def wait(self, timeout: float, since: int | None = None) -> bool:
        """Block until another connection commits (after :meth:`version` gave ``since``, or
        from now), or ``timeout``; True if one did. Inside a transaction nothing new is
        seen, so this sleeps out the timeout."""
        deadline = time.monotonic() + timeout
        before = self._version() if since is None else since
        if before is None:
            time.sleep(max(timeout, 0))
            return False
        while (remaining := deadline - time.monotonic()) > 0:
            if self._version() != before:
                return True
            time.sleep(min(COMMIT_WATCH_TICK, remaining))
        return self._version() != before


class CommitWaiter:
    """A result waiter on SQLite: wakes at the next commit (any task's), and the caller reads
    its task's row again."""

    def __init__(self, watcher: CommitWatcher) -> None:
        self.watcher = watcher
        self._since: int | None = None

    def watch(self, task_id: str) -> None:
        self._since = self.watcher.version()

    def wait(self, task_id: str, timeout: float) -> None:
        since, self._since = self._since, None
        self.watcher.wait(max(timeout, 0), since=since)


# -- the shared state listener ------------------------------------------------------------------

#: How long the listener blocks on its connection before it looks at its stop flag.
LISTEN_TICK = 0.5
#: Reconnecting after a failure waits this long at first, doubling up to the maximum.
RECONNECT_BACKOFF = 0.5
RECONNECT_BACKOFF_MAX = 30.0


class _Run:
    """One life of the listener thread: its stop flag and whether it is listening now."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.listening = threading.Event()
        self.thread: threading.Thread | None = None


class StateListener:
    """One ``LISTEN`` connection per process on :data:`STATES_CHANNEL`, shared by every thread
    that waits for a task to change (the API's long-polls and ``AsyncResult.get()``).

    A background thread owns the connection and wakes the :class:`threading.Event` of each
    waiter subscribed to the notified task id. When the connection fails it reconnects with
    backoff; after (re)connecting it wakes every waiter, so that none misses a change made
    while nobody listened. The thread starts with the first subscriber and stops when asked
    to by :meth:`close` once nobody waits.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._run: _Run | None = None
        self._close_when_idle = False

    # -- subscribers ---------------------------------------------------------------------

    def subscribe(self, task_id: str) -> threading.Event:
        """An event set whenever ``task_id`` may have changed; starts listening if needed."""
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(task_id, set()).add(event)
            self._close_when_idle = False
            if self._run is None or self._run.thread is None or not self._run.thread.is_alive():
                self._start()
        return event

    def unsubscribe(self, task_id: str, event: threading.Event) -> None:
        with self._lock:
            events = self._waiters.get(task_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[task_id]

    @property
    def listening(self) -> bool:
        """Whether notifications arrive now (else waiters must poll)."""
        run = self._run
        return run is not None and run.listening.is_set()

    def waiting(self) -> int:
        """How many subscriptions there are (for tests and monitoring)."""
        with self._lock:
            return sum(len(events) for events in self._waiters.values())

    def close(self, timeout: float = 2 * LISTEN_TICK + 1) -> None:
        """Stop listening and close the connection, now if nobody waits, else once the last
        waiter has gone. A later :meth:`subscribe` starts again."""
        with self._lock:
            run = self._run
            if run is None:
                return
            if self._waiters:
                self._close_when_idle = True
                return
            self._run = None
            run.stop.set()
        if run.thread is not None and run.thread is not threading.current_thread():
            run.thread.join(timeout)

    # -- the listening thread ------------------------------------------------------------

    def _start(self) -> None:  # with the lock held
        run = _Run()
        # Read in the subscriber's thread: the settings of its database connection.
        params = listen_connection_params()
        run.thread = threading.Thread(
            target=self._listen, args=(run, params), name="django_tasks-listener", daemon=True
        )
        self._run = run
        run.thread.start()

    def _wake(self, task_id: str) -> None:
        with self._lock:
            for event in self._waiters.get(task_id, ()):
                event.set()

    def _wake_all(self) -> None:
        with self._lock:
            for events in self._waiters.values():
                for event in events:
                    event.set()

    def _idle_stop(self, run: _Run) -> bool:
        """Whether this run should end now: asked to close, and nobody waits."""
        with self._lock:
            if run.stop.is_set():
                return True
            if self._close_when_idle and not self._waiters and self._run is run:
                self._run = None
                run.stop.set()
                return True
            return False

    def _listen(self, run: _Run, params: dict[str, Any]) -> None:
        import psycopg

        conn: Any = None
        backoff = RECONNECT_BACKOFF
        try:
            while not self._idle_stop(run):
                if conn is None:
                    try:
                        conn = psycopg.connect(**params, autocommit=True)
                        conn.execute(f"LISTEN {STATES_CHANNEL}")
                    except Exception as exc:
                        logger.warning(
                            "LISTEN connection failed (%s); waiters poll, retrying in %.1f s",
                            exc,
                            backoff,
                        )
                        _close_quietly(conn)
                        conn = None
                        run.stop.wait(backoff)
                        backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX)
                        continue
                    backoff = RECONNECT_BACKOFF
                    run.listening.set()
                    self._wake_all()  # whatever changed while nobody listened
                try:
                    for notify in conn.notifies(timeout=LISTEN_TICK):
                        self._wake(notify.payload)
                except Exception as exc:  # psycopg's own errors: the connection is not Django's
                    logger.warning("LISTEN connection lost (%s); reconnecting", exc)
                    run.listening.clear()
                    _close_quietly(conn)
                    conn = None
                    self._wake_all()
        finally:
            run.listening.clear()
            _close_quietly(conn)


def _close_quietly(conn: Any) -> None:
    """Close a psycopg connection (if any), ignoring errors."""
    if conn is not None:
        try:
            conn.close()
        except Exception:
            logger.debug("closing a LISTEN connection failed", exc_info=True)


_listener: StateListener | None = None
_listener_pid: int | None = None
_listener_lock = threading.Lock()


def state_listener() -> StateListener:
    """This process's shared :class:`StateListener` (a new one after a fork)."""
    global _listener, _listener_pid
    with _listener_lock:
        if _listener is None or _listener_pid != os.getpid():
            # A forked child has no listener thread; the parent's connection is left alone.
            _listener, _listener_pid = StateListener(), os.getpid()
        return _listener


class ListenerWaiter:
    """A thread's result waiter on the shared listener (``AsyncResult.get()``).

    It stays subscribed to the task it last waited for, so a change that comes between two
    waits still wakes the next one at once. The subscription ends with :meth:`close`, or
    when the waiter is collected (its thread has ended).
    """

    def __init__(self, listener: StateListener) -> None:
        self.listener = listener
        self._task_id: str | None = None
        self._event: threading.Event | None = None
        self._unsubscribe: weakref.finalize[..., Any] | None = None

    def watch(self, task_id: str) -> None:
        # Subscribing starts the process's LISTEN connection when it is not up: left to the
        # first wait, so that reading a finished task opens nothing. Until then a change
        # between the read and the wait costs at most the first pause (5 ms by default).
        if task_id != self._task_id and self.listener.listening:
            self._subscribe(task_id)

    def _subscribe(self, task_id: str) -> threading.Event:
        self.close()
        self._event = event = self.listener.subscribe(task_id)
        self._task_id = task_id
        self._unsubscribe = weakref.finalize(self, self.listener.unsubscribe, task_id, event)
        return event

    def wait(self, task_id: str, timeout: float) -> None:
        event = self._event if task_id == self._task_id else None
        if event is None:
            event = self._subscribe(task_id)
        if not self.listener.listening:
            time.sleep(max(timeout, 0))  # not (yet) listening: the caller polls
            return
        event.wait(max(timeout, 0))
        event.clear()

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()  # runs once
        self._task_id = self._event = self._unsubscribe = None


_local = threading.local()


def waiter() -> Waiter:
    """This thread's result waiter: the shared listener on PostgreSQL, polling elsewhere."""
    current: Waiter | None = getattr(_local, "waiter", None)
    if current is None:
        if can_listen():
            current = ListenerWaiter(state_listener())
        elif can_watch_commits():
            current = CommitWaiter(CommitWatcher())
        else:
            current = PollingWaiter()
        _local.waiter = current
    return current


def close_waiter() -> None:
    """Let go of this thread's result waiter, and close the process's ``LISTEN`` connection
    (PostgreSQL) once nobody waits.

    Call it when a thread is done with results, e.g. at the end of a test, so that the test
    database can be dropped. The next wait opens the connection again.
    """
    current = getattr(_local, "waiter", None)
    if isinstance(current, ListenerWaiter):
        current.close()
    _local.waiter = None
    if _listener is not None and _listener_pid == os.getpid():
        _listener.close()


# -- waiting for a change (the API's long-poll) ---------------------------------------------------


def change_marker(task_id: str) -> tuple[Any, ...] | None:
    """What :meth:`Watch.wait_for_change` compares: the task's state, meta (as stored JSON
    text, never decoded: it may be nested too deep to decode), retries and date_done."""
    from django.db.models import TextField
    from django.db.models.functions import Cast

    from ..models import TaskResult

    columns = [Cast(name, TextField()) if name == "meta" else name for name in CHANGE_FIELDS]
    row = TaskResult.objects.filter(task_id=task_id).values_list(*columns).first()
    return None if row is None else tuple(row)


def release_connection() -> None:
    """Give this thread's Django database connection back while it waits (it reconnects on
    its next query); kept inside a transaction, which a close would break."""
    if not connection.in_atomic_block:
        connection.close()


class Watch:
    """Waits for one task to change, holding no Django database connection while it waits.

    On PostgreSQL it subscribes to the shared :class:`StateListener` when it is made, so no
    notification is missed between reading the task and waiting; elsewhere it polls.
    Use it as a context manager, made *before* reading what it should compare with.
    """

    def __init__(self, task_id: str, interval: float = 1.0) -> None:
        self.task_id = task_id
        self.interval = interval
        self.listener = state_listener() if can_listen() else None
        self.event = self.listener.subscribe(task_id) if self.listener is not None else None

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self.listener is not None and self.event is not None:
            self.listener.unsubscribe(self.task_id, self.event)
            self.event = None

    def wait_for_change(self, seen: tuple[Any, ...] | None, timeout: float) -> bool:
        """Block up to ``timeout`` seconds until :func:`change_marker` differs from ``seen``;
        True if it did. Notifications wake it at once; without them it polls, every 50 ms at
        first, backing off to ``interval``."""
        deadline = time.monotonic() + timeout
        pause = min(FIRST_POLL_INTERVAL * 10, self.interval)
        while (remaining := deadline - time.monotonic()) > 0:
            release_connection()
            if self.event is not None and self.listener is not None and self.listener.listening:
                self.event.wait(remaining)
                self.event.clear()  # before reading: a later change sets it again
            else:
                time.sleep(min(pause, remaining))
                pause = min(pause * 2, self.interval)
            if change_marker(self.task_id) != seen:
                return True
        return False


def wait_for_change(
    task_id: str, seen: tuple[Any, ...] | None, timeout: float, interval: float = 1.0
) -> bool:
    """Block up to ``timeout`` seconds until :func:`change_marker` differs from ``seen``;
    True if the task changed. See :class:`Watch`, which also avoids the race between reading
    ``seen`` and starting to wait."""
    with Watch(task_id, interval) as watch:
        return watch.wait_for_change(seen, timeout)
