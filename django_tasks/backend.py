"""Django 6's task framework (``django.tasks``) on this app's transports and ``runworker``.

``TASKS = {"default": {"BACKEND": "django_tasks.backend.TasksBackend"}}`` makes
``@django.tasks.task`` functions send through the same path as ``@django_tasks.task`` ones:
each is a row of the same table, run by ``runworker``, shown in the admin, the HTTP API and
``AsyncResult(result.id)``. A worker imports such a task by its module path (Django names
tasks that way), as the row's ``django_task`` header says it is one.

Django's priorities (-100 … 100) map to ours (0 … 255) as ``priority + 100``, which keeps
their order; a Django task of default priority (0) is stored with priority 100.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import django

from . import states
from .exceptions import ImproperlyConfiguredTask
from .options import queue_name_problem
from .registry import tasks_registry
from .task import Task

if django.VERSION < (6, 0):  # pragma: no cover - the system check says what to do
    raise ImproperlyConfiguredTask(
        "django_tasks.backend.TasksBackend is the backend of django.tasks, which needs "
        f"Django 6.0 or later; this is Django {django.get_version()}"
    )

from django.tasks import TaskContext, TaskResultStatus
from django.tasks import TaskResult as DjangoTaskResult
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import Task as DjangoTask
from django.tasks.base import TaskError
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

#: The header that marks a row as a ``django.tasks`` task: ``{"backend": alias,
#: "takes_context": bool, "priority": Django's priority}``.
HEADER = "django_task"
#: Django's priority range, and what its lowest maps to in ours.
PRIORITY_OFFSET = 100

STATUS = {
    states.PENDING: TaskResultStatus.READY,
    states.RECEIVED: TaskResultStatus.READY,
    states.STARTED: TaskResultStatus.RUNNING,
    states.RETRY: TaskResultStatus.RUNNING,
    states.SUCCESS: TaskResultStatus.SUCCESSFUL,
    states.FAILURE: TaskResultStatus.FAILED,
    states.REVOKED: TaskResultStatus.FAILED,
}
#: History states that end one attempt: a retry, an outcome, a lost worker's requeue.
ATTEMPT_ENDS = (states.RETRY, states.SUCCESS, states.FAILURE, states.PENDING)

_adapters: dict[str, Task[Any, Any]] = {}
#: The user tasks enqueued in this context are sent for (``enqueue_as``).
_owner: ContextVar[Any] = ContextVar("django_tasks_backend_owner", default=None)
_adapters_lock = threading.Lock()


@contextmanager
def enqueue_as(user: Any) -> Iterator[None]:
    """Send the ``django.tasks`` tasks enqueued in this block for ``user``, as
    ``apply_async(owner=user)`` does: the HTTP API lets that user read and revoke them.

    ``django.tasks`` has no such argument; a context variable carries it (threads and
    ``async`` code each see their own)."""
    token = _owner.set(user)
    try:
        yield
    finally:
        _owner.reset(token)


def to_our_priority(priority: int) -> int:
    """Django's -100 … 100 as our 0 … 255 (order kept)."""
    return int(priority) + PRIORITY_OFFSET


class TasksBackend(BaseTaskBackend):
    """The production backend of ``django.tasks``: rows of this app, run by ``runworker``."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def validate_task(self, task: DjangoTask) -> None:
        super().validate_task(task)
        problem = queue_name_problem(task.queue_name)
        if problem is not None:
            raise InvalidTask(f"Queue {task.queue_name!r} {problem}.")

    def enqueue(self, task: DjangoTask, args: Any, kwargs: Any) -> DjangoTaskResult:
        self.validate_task(task)
        adapter = adapter_for(task)
        header = {
            "backend": self.alias,
            "takes_context": task.takes_context,
            "priority": task.priority,
        }
        sent = adapter.apply_async(
            list(args),
            dict(kwargs),
            queue=task.queue_name,
            priority=to_our_priority(task.priority),
            eta=task.run_after,
            headers={HEADER: header},
            **({"owner": _owner.get()} if _owner.get() is not None else {}),
        )
        result: DjangoTaskResult = DjangoTaskResult(
            task=task,
            id=sent.id,
            status=TaskResultStatus.READY,
            enqueued_at=sent.date_created or dt.datetime.now(tz=dt.UTC),
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=list(args),
            kwargs=dict(kwargs),
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> DjangoTaskResult:
        from .models import TaskResult

        row = TaskResult.objects.filter(task_id=str(result_id)).prefetch_related("history").first()
        if row is None:
            raise TaskResultDoesNotExist(result_id)
        header = (row.options or {}).get("headers", {}).get(HEADER)
        if not isinstance(header, dict):
            raise TaskResultDoesNotExist(
                f"{result_id}: a task of django_tasks' own @task, not a django.tasks task "
                f"(read it with django_tasks.AsyncResult)"
            )
        try:
            task = _django_task(row.task_name)
        except (ImportError, ValueError) as exc:
            raise TaskResultDoesNotExist(f"{result_id}: {exc}") from exc
        task = task.using(
            priority=header.get("priority", task.priority),
            queue_name=row.queue,
            backend=str(header.get("backend") or self.alias),
        )
        return result_from_row(task, row, self.alias)

    def check(self, **kwargs: Any) -> list[Any]:
        from django.core.checks import Error

        errors = []
        for queue in sorted(self.queues):
            problem = queue_name_problem(queue) if isinstance(queue, str) else "is not text"
            if problem is not None:
                errors.append(
                    Error(
                        f"TASKS[{self.alias!r}]['QUEUES']: queue {queue!r} {problem}",
                        id="django_tasks.E060",
                    )
                )
        return errors


def _django_task(module_path: str) -> DjangoTask:
    """The ``django.tasks`` task a module path names; ValueError if it names none."""
    try:
        found = import_string(module_path)
    except ImportError as exc:
        raise ValueError(f"cannot import the task {module_path!r}: {exc}") from None
    if not isinstance(found, DjangoTask):
        raise ValueError(f"{module_path!r} is not a django.tasks task")
    return found


def adapter_for(task: DjangoTask) -> Task[Any, Any]:
    """Our task (registered under the Django task's module path) that runs ``task``."""
    name = task.module_path
    existing = tasks_registry.get(name)
    if existing is not None and name in _adapters:
        return existing
    if existing is not None:
        raise InvalidTask(f"{name!r} is also the name of a django_tasks @task")
    with _adapters_lock:
        if name not in _adapters:
            _adapters[name] = Task(_runner(name), name=name, bind=True, typing=False)
    return _adapters[name]


def resolve(name: str, header: Any) -> Task[Any, Any] | None:
    """In a worker: our task for a row of a ``django.tasks`` task named ``name`` (marked by
    its ``django_task`` header), imported by its module path; None if it is none."""
    if not isinstance(header, dict):
        return None
    try:
        return adapter_for(_django_task(name))
    except (ValueError, InvalidTask):
        return None


def _runner(module_path: str) -> Any:
    def run(self: Task[Any, Any], *args: Any, **kwargs: Any) -> Any:
        task = _django_task(module_path)
        request = self.request
        header = (request.headers or {}).get(HEADER) or {}
        result = _running_result(task, request, header)
        task_started.send(TasksBackend, task_result=result)
        try:
            if task.takes_context:
                value = task.call(TaskContext(task_result=result), *args, **kwargs)
            else:
                value = task.call(*args, **kwargs)
            # What Django's own backends store, and their error for anything else.
            value = normalize_json(value)
        except BaseException as exc:
            failed = dataclasses.replace(
                result,
                status=TaskResultStatus.FAILED,
                finished_at=dt.datetime.now(tz=dt.UTC),
                errors=[*result.errors, _error_of(exc)],
            )
            task_finished.send(TasksBackend, task_result=failed)
            raise
        done = dataclasses.replace(
            result, status=TaskResultStatus.SUCCESSFUL, finished_at=dt.datetime.now(tz=dt.UTC)
        )
        object.__setattr__(done, "_return_value", value)
        task_finished.send(TasksBackend, task_result=done)
        return value

    run.__name__ = module_path.rsplit(".", 1)[-1]
    run.__qualname__ = run.__name__
    run.__module__ = module_path.rsplit(".", 1)[0]
    return run


def _running_result(task: DjangoTask, request: Any, header: dict[str, Any]) -> DjangoTaskResult:
    """The ``TaskResult`` a running task sees in its context: its attempts so far (each a
    worker id), this one included."""
    from .models import TaskResult

    row = TaskResult.objects.filter(task_id=request.id).prefetch_related("history").first()
    if row is None:  # called directly, or eagerly
        now = dt.datetime.now(tz=dt.UTC)
        return DjangoTaskResult(
            task=task,
            id=str(request.id or ""),
            status=TaskResultStatus.RUNNING,
            enqueued_at=now,
            started_at=now,
            finished_at=None,
            last_attempted_at=now,
            args=list(request.args),
            kwargs=dict(request.kwargs),
            backend=str(header.get("backend") or "default"),
            errors=[],
            worker_ids=[str(request.hostname or "eager")],
        )
    # Claimed, so read as running: its ended attempts' workers, then this one's.
    result = result_from_row(task, row, str(header.get("backend") or "default"))
    return dataclasses.replace(result, status=TaskResultStatus.RUNNING)


def result_from_row(task: DjangoTask, row: Any, backend: str) -> DjangoTaskResult:
    """A stored row as Django's ``TaskResult``."""
    status = STATUS.get(row.state, TaskResultStatus.RUNNING)
    if status == TaskResultStatus.READY and row.date_started is not None:
        status = TaskResultStatus.RUNNING  # claimed, running (no STARTED without track_started)
    history = list(row.history.all())
    worker_ids = [h.worker or "unknown" for h in history if h.state in ATTEMPT_ENDS]
    if status == TaskResultStatus.RUNNING and row.worker:
        worker_ids.append(row.worker)
    errors = [_error_from_meta(h.meta, "") for h in history if h.state == states.RETRY]
    if row.state == states.FAILURE:
        errors.append(_error_from_meta(row.result, row.traceback or ""))
    elif row.state == states.REVOKED:
        errors.append(
            TaskError(
                exception_class_path="django_tasks.exceptions.TaskRevokedError",
                traceback=str((row.meta or {}).get("reason") or "revoked"),
            )
        )
    args, kwargs = row.args, row.kwargs
    result: DjangoTaskResult = DjangoTaskResult(
        task=task,
        id=row.task_id,
        status=status,
        enqueued_at=row.date_created,
        started_at=row.date_started,
        finished_at=row.date_done,
        last_attempted_at=row.date_started,
        args=list(args) if isinstance(args, list) else [],
        kwargs=dict(kwargs) if isinstance(kwargs, dict) else {},
        backend=backend,
        errors=[e for e in errors if e is not None],
        worker_ids=worker_ids,
    )
    if status == TaskResultStatus.SUCCESSFUL:
        object.__setattr__(result, "_return_value", row.result)
    return result


def _error_of(exc: BaseException) -> TaskError:
    import traceback

    kind = type(exc)
    return TaskError(
        exception_class_path=f"{kind.__module__}.{kind.__qualname__}",
        traceback="".join(traceback.format_exception(exc)),
    )


def _error_from_meta(meta: Any, traceback: str) -> TaskError | None:
    if not isinstance(meta, dict) or "exc_type" not in meta:
        return None
    module = str(meta.get("exc_module") or "builtins")
    return TaskError(exception_class_path=f"{module}.{meta['exc_type']}", traceback=traceback)


__all__ = ["TasksBackend", "enqueue_as", "resolve", "to_our_priority"]
