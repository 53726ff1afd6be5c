"""Reading results: :class:`AsyncResult` for sent tasks, :class:`EagerResult` for eager ones."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from . import states
from .context import in_worker_task
from .exceptions import TimeoutError
from .messages import exception_from_dict

# The store reads models, which are not importable while Django loads its apps (this module
# is imported with the package), so its names are imported where they are used.

#: The first poll comes this soon; later ones back off up to ``get(interval=...)``.
FIRST_POLL_INTERVAL = 0.005

ROW_FIELDS = (
    "task_id",
    "task_name",
    "state",
    "result",
    "traceback",
    "meta",
    "date_done",
    "date_created",
    "date_started",
    "args",
    "kwargs",
    "retries",
    "queue",
    "worker",
    "options",
)
__all__ = ["AsyncResult", "EagerResult", "GroupResult", "signal_number"]

_UNREAD = object()


class AsyncResult:
    """A task's state and outcome, read from the database by task id."""

    def __init__(
        self,
        id: str,
        task_name: str | None = None,
        *,
        ignore_result: bool = False,
        parent: AsyncResult | GroupResult | None = None,
    ) -> None:
        if not isinstance(id, str) or not id:
            raise ValueError(f"AsyncResult needs a task id string, not {id!r}")
        self.id = id
        self._task_name = task_name
        self._ignore_result = ignore_result
        self._row: dict[str, Any] | None = None
        self._parent: AsyncResult | GroupResult | None = parent

    @property
    def parent(self) -> AsyncResult | GroupResult | None:
        """The result of the chain step before this one (for a chord's body: its header).

        Known from sending; for a result made from an id, read from the stored row."""
        if self._parent is None:
            self._parent_from(self._row if self._row is not None else self._fetch())
        return self._parent

    @parent.setter
    def parent(self, value: AsyncResult | GroupResult | None) -> None:
        self._parent = value

    def _parent_from(self, row: dict[str, Any] | None) -> AsyncResult | GroupResult | None:
        """The parent, from ``row`` (this task's row, read already) if not known yet."""
        if self._parent is None and row is not None:
            options = row.get("options")
            parent_id = options.get("parent_id") if isinstance(options, dict) else None
            if isinstance(parent_id, str) and parent_id:
                self._parent = AsyncResult(parent_id)
        return self._parent

    @property
    def task_id(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return self.id == other.id
        if isinstance(other, str):
            return self.id == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    # -- reading the row ----------------------------------------------------------------------

    def _fetch(self) -> dict[str, Any] | None:
        """The stored row, re-read unless it is already in a ready state."""
        if self._row is not None and self._row["state"] in states.READY_STATES:
            return self._row
        from .store.sql import fetch_by_task_id

        self._row = fetch_by_task_id(self.id, ROW_FIELDS)
        return self._row

    def _field(self, name: str) -> Any:
        row = self._fetch()
        return row[name] if row else None

    @property
    def state(self) -> str:
        """The task's state; ``PENDING`` for an id that is not stored (as in Celery)."""
        row = self._fetch()
        return row["state"] if row else states.PENDING

    status = state

    @property
    def result(self) -> Any:
        """The return value, the exception, or a custom state's meta."""
        return _outcome(self._fetch())

    info = result

    @property
    def traceback(self) -> str | None:
        traceback: str | None = self._field("traceback")
        return traceback

    @property
    def name(self) -> str | None:
        name: str | None = self._field("task_name") or self._task_name
        return name

    @property
    def args(self) -> list[Any] | None:
        args: list[Any] | None = self._field("args")
        return args

    @property
    def kwargs(self) -> dict[str, Any] | None:
        kwargs: dict[str, Any] | None = self._field("kwargs")
        return kwargs

    @property
    def retries(self) -> int | None:
        retries: int | None = self._field("retries")
        return retries

    @property
    def queue(self) -> str | None:
        queue: str | None = self._field("queue")
        return queue

    @property
    def worker(self) -> str | None:
        return self._field("worker") or None

    @property
    def date_done(self) -> dt.datetime | None:
        date_done: dt.datetime | None = self._field("date_done")
        return date_done

    @property
    def date_created(self) -> dt.datetime | None:
        date_created: dt.datetime | None = self._field("date_created")
        return date_created

    @property
    def date_started(self) -> dt.datetime | None:
        date_started: dt.datetime | None = self._field("date_started")
        return date_started

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    def exists(self) -> bool:
        """True if this id was sent (and not forgotten); unknown ids read ``PENDING``."""
        return self._fetch() is not None

    def forget(self) -> None:
        """Delete the stored result and its history."""
        from .store import forget

        forget(self.id)
        self._row = None

    def revoke(self, terminate: bool = False, signal: str | int | None = None) -> bool:
        """Make sure the task never starts; ``REVOKED`` is stored durably.

        A task no worker has started yet is never run. With ``terminate=True`` a task already
        running under a prefork worker is stopped: the worker sends ``signal`` (default
        ``SIGTERM``; a name such as ``"SIGKILL"`` or ``"KILL"``, or a number) to the process
        running it, and the task ends ``REVOKED``. Other pools cannot stop a running task.
        """
        from .store import revoke

        signum = signal_number(signal) if terminate else None
        done = revoke(self.id, terminate_signal=signum)
        self._row = None
        return done

    # -- waiting ------------------------------------------------------------------------------

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        on_message: Callable[[dict[str, Any]], None] | None = None,
        disable_sync_subtasks: bool = True,
    ) -> Any:
        """Wait for the task to finish and return its value (or raise its exception).

        ``timeout`` in seconds raises :class:`~django_tasks.exceptions.TimeoutError`;
        ``propagate=False`` returns the exception instead of raising it; ``on_message``
        is called with a meta dict for every state change seen while waiting.
        """
        if disable_sync_subtasks and in_worker_task():
            raise RuntimeError(
                "Never call result.get() within a task: waiting on another "
                "task from a task can deadlock the workers"
            )
        if self._ignore_result:
            return None
        deadline = None if timeout is None else time.monotonic() + timeout
        from .store.notify import waiter

        waiting = waiter()
        sleep = min(FIRST_POLL_INTERVAL, interval)
        history = _HistoryReader(self) if on_message is not None else None
        while True:
            waiting.watch(self.id)
            row = self._fetch()
            state = row["state"] if row else states.PENDING
            if history is not None and row is not None:
                row = history.report(row, on_message)  # type: ignore[arg-type]
                state = row["state"]
            if state in states.READY_STATES:
                return self._outcome_for_get(row, propagate)
            failed = self._failed_parent(row)
            if failed is not None:
                # A chord's body is failed (ChordError) with its header task's failure: read
                # it again, in case that commit came between the two reads.
                row = self._fetch()
                if row is not None and row["state"] in states.READY_STATES:
                    return self._outcome_for_get(row, propagate)
                return failed._outcome_for_get(failed._row, propagate)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("The operation timed out.")
            pause = sleep if remaining is None else min(sleep, remaining)
            waiting.wait(self.id, pause)
            sleep = min(sleep * 2, interval)

    wait = get

    def _failed_parent(self, row: dict[str, Any] | None) -> AsyncResult | None:
        """The first parent (oldest first) that failed or was revoked: a chain stopped there,
        and this result (whose ``row`` was just read) will never be ready. Celery raises its
        exception the same way. A task without parents costs no query."""
        node = self._parent_from(row)
        found: list[AsyncResult] = []
        while node is not None:
            if isinstance(node, GroupResult):
                node._refresh()  # one query for its unfinished members
                found.extend(r for r in node.results if isinstance(r, AsyncResult))
                node = node.parent
            else:
                found.append(node)
                node = node._parent_from(node._fetch())
        for parent in reversed(found):
            parent_row = parent._row  # read just now (or ready, and kept)
            if parent_row is not None and parent_row["state"] in states.PROPAGATE_STATES:
                return parent
        return None

    def _outcome_for_get(self, row: dict[str, Any] | None, propagate: bool) -> Any:
        outcome = _outcome(row)
        if row and row["state"] in states.PROPAGATE_STATES and propagate:
            raise outcome
        return outcome


class EagerResult(AsyncResult):
    """The outcome of a task run in-process (``TASK_ALWAYS_EAGER`` or ``Task.apply``)."""

    _row: dict[str, Any]  # always set: an eager result is never re-read

    def __init__(
        self,
        id: str,
        state: str,
        result: Any,
        *,
        traceback: str | None = None,
        task_name: str | None = None,
        exc_dict: dict[str, Any] | None = None,
        retries: int = 0,
    ) -> None:
        super().__init__(id, task_name)
        self._result = result  # the value, or the exception instance itself
        now = dt.datetime.now(dt.UTC)
        self._row = {
            "task_id": id,
            "task_name": task_name,
            "state": state,
            "result": exc_dict if exc_dict is not None else result,
            "traceback": traceback,
            "meta": None,
            "date_done": now,
            "date_created": now,
            "date_started": now,
            "args": None,
            "kwargs": None,
            "retries": retries,
            "queue": None,
            "worker": "",
            "options": None,
        }

    def __repr__(self) -> str:
        return f"<EagerResult: {self.id}>"

    def take(self, other: EagerResult) -> None:
        """Become ``other`` (an eager run deferred to the transaction's commit)."""
        self._result, self._row = other._result, other._row

    def _fetch(self) -> dict[str, Any] | None:
        return self._row

    @property
    def result(self) -> Any:
        return self._result

    info = result

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        on_message: Callable[[dict[str, Any]], None] | None = None,
        disable_sync_subtasks: bool = True,
    ) -> Any:
        if on_message is not None:
            on_message(_meta(self._row))
        if self._row["state"] not in states.READY_STATES:
            failed = self._failed_parent(self._row)
            if failed is not None:
                return failed.get(propagate=propagate)
        if self._row["state"] in states.PROPAGATE_STATES and propagate:
            raise self._result
        return self._result

    wait = get

    def forget(self) -> None:
        pass

    def revoke(self, terminate: bool = False, signal: str | int | None = None) -> bool:
        return False


class GroupResult:
    """The results of a group's tasks, in the group's order (Celery's ``GroupResult``)."""

    def __init__(
        self,
        id: str,
        results: list[Any] | None = None,
        parent: AsyncResult | GroupResult | None = None,
    ) -> None:
        self.id = id
        self.results: list[Any] = list(results or [])
        self._parent = parent

    @property
    def parent(self) -> AsyncResult | GroupResult | None:
        return self._parent

    @parent.setter
    def parent(self, value: AsyncResult | GroupResult | None) -> None:
        self._parent = value

    children = property(lambda self: self.results)

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Any:
        return iter(self.results)

    def __getitem__(self, index: int) -> Any:
        return self.results[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GroupResult):
            return self.id == other.id and self.results == other.results
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    @classmethod
    def restore(cls, id: str) -> GroupResult | None:
        """The group sent as ``id`` (stored when it was sent), or None if unknown."""
        from .store import group_task_ids

        task_ids = group_task_ids(id)
        if task_ids is None:
            return None
        return cls(id, [AsyncResult(task_id) for task_id in task_ids])

    def save(self) -> GroupResult:
        """Nothing to do: a group is stored when it is sent (Celery needs ``save()``)."""
        return self

    def _refresh(self) -> None:
        """Read every unfinished member's row in one query."""
        from .store.sql import fetch_by_task_ids

        stale = [
            r
            for r in self.results
            if type(r) is AsyncResult
            and not (r._row is not None and r._row["state"] in states.READY_STATES)
        ]
        if not stale:
            return
        rows = fetch_by_task_ids([r.id for r in stale], ROW_FIELDS)
        for result in stale:
            result._row = rows.get(result.id)

    def _states(self) -> list[str]:
        self._refresh()
        found = []
        for result in self.results:
            if isinstance(result, GroupResult):
                found.extend(result._states())
            else:
                row = result._row  # read just now by _refresh() (or kept: ready or eager)
                found.append(row["state"] if row else states.PENDING)
        return found

    def ready(self) -> bool:
        """All tasks have finished (successfully or not)."""
        return all(state in states.READY_STATES for state in self._states())

    def successful(self) -> bool:
        """All tasks have succeeded."""
        return all(state == states.SUCCESS for state in self._states())

    def failed(self) -> bool:
        """Some task has failed."""
        return any(state == states.FAILURE for state in self._states())

    def waiting(self) -> bool:
        """Some task has not finished yet."""
        return not self.ready()

    def completed_count(self) -> int:
        """How many tasks have succeeded."""
        return sum(state == states.SUCCESS for state in self._states())

    def revoke(self, terminate: bool = False, signal: str | int | None = None) -> None:
        """Revoke every task that has not run yet (``terminate``: as ``AsyncResult.revoke``)."""
        for result in self.results:
            result.revoke(terminate=terminate, signal=signal)

    def forget(self) -> None:
        """Delete the stored results and the group."""
        from .store import forget_group

        for result in self.results:
            result.forget()
        forget_group(self.id)

    def join(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
    ) -> list[Any]:
        """Wait for each task in turn; ``timeout`` covers them all. With ``propagate`` the
        first failure met (in the group's order) is raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            values.append(
                result.get(
                    timeout=remaining,
                    propagate=propagate,
                    interval=interval,
                    disable_sync_subtasks=disable_sync_subtasks,
                )
            )
        return values

    get = join


def signal_number(value: str | int | None) -> int:
    """``revoke(signal=...)`` as a signal number: ``None`` is ``SIGTERM`` (Celery's default);
    names with or without ``SIG`` (``"SIGKILL"``, ``"KILL"``) and numbers are accepted."""
    import signal as signals

    if value is None:
        return int(signals.SIGTERM)
    try:
        if isinstance(value, str):
            name = value.upper()
            return int(signals.Signals[name if name.startswith("SIG") else f"SIG{name}"])
        if isinstance(value, int) and not isinstance(value, bool):
            return int(signals.Signals(value))
    except (KeyError, ValueError):
        pass
    raise ValueError(
        f"revoke(): unknown signal {value!r}; give a name such as 'SIGTERM' or 'KILL', "
        f"or a signal number"
    )


def _outcome(row: dict[str, Any] | None) -> Any:
    if row is None:
        return None
    state = row["state"]
    if state == states.SUCCESS:
        return row["result"]
    if state in states.EXCEPTION_STATES:
        return exception_from_dict(row["result"], row["traceback"])
    if state in (states.PENDING, states.RECEIVED, states.STARTED):
        return row["meta"] if state == states.STARTED else None
    return row["meta"]  # a custom state, e.g. PROGRESS


def _meta(row: dict[str, Any]) -> dict[str, Any]:
    """The dict ``on_message`` receives, as Celery's result meta."""
    state = row["state"]
    result = row["result"] if state in states.READY_STATES or state == states.RETRY else row["meta"]
    return {
        "task_id": row["task_id"],
        "status": state,
        "result": result,
        "traceback": row["traceback"],
        "date_done": row["date_done"],
    }


class _HistoryReader:
    """Feeds ``on_message`` one meta per stored state change, oldest first, none twice."""

    def __init__(self, result: AsyncResult) -> None:
        self.result = result
        self.last_id = 0

    def report(
        self, row: dict[str, Any], on_message: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """Call ``on_message`` for the changes stored since the last call; return the row,
        re-read if the history has moved past it (both are written in one transaction)."""
        from .models import TaskStateChange

        changes = list(
            TaskStateChange.objects.filter(task__task_id=self.result.id, id__gt=self.last_id)
            .order_by("id")
            .values_list("id", "state", "meta")
        )
        if changes and changes[-1][1] in states.READY_STATES and row["state"] != changes[-1][1]:
            self.result._row = None
            row = self.result._fetch() or row
        for change_id, state, meta in changes:
            self.last_id = change_id
            if state in states.READY_STATES and state == row["state"]:
                on_message(_meta(row))
            else:
                on_message(
                    {
                        "task_id": self.result.id,
                        "status": state,
                        "result": meta,
                        "traceback": None,
                        "date_done": None,
                    }
                )
        return row
