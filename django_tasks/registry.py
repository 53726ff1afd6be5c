"""The registry of declared tasks: name -> :class:`~django_tasks.task.Task`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .conf import tasks_settings
from .exceptions import ImproperlyConfiguredTask, NotRegistered

if TYPE_CHECKING:
    from .task import Task


def _origin(task: Task) -> str:
    fn = task.run
    return f"{fn.__module__}.{fn.__qualname__}"


class TaskRegistry(dict[str, "Task[Any, Any]"]):
    """Every task declared with ``@task``, by name."""

    def register(self, task: Task) -> None:
        existing = self.get(task.name)
        if existing is not None and _origin(existing) != _origin(task):
            raise ImproperlyConfiguredTask(
                f"Two tasks are named {task.name!r}: {_origin(existing)} and {_origin(task)}; "
                f"give one of them another name with @task(name=...)"
            )
        self[task.name] = task

    def get_task(self, name: str) -> Task:
        try:
            return self[name]
        except KeyError:
            raise NotRegistered(name) from None

    def acks_late(self, name: str) -> bool:
        """Whether task ``name`` is acknowledged after it runs: its own ``acks_late``, else
        ``TASK_ACKS_LATE`` (also for tasks this process does not know)."""
        task = self.get(name)
        if task is None or task.acks_late is None:
            return bool(tasks_settings.TASK_ACKS_LATE)
        return bool(task.acks_late)


tasks_registry = TaskRegistry()
