"""Exceptions raised to users of django_tasks, named as in Celery."""

from datetime import datetime
from typing import Any

from kombu.exceptions import EncodeError, OperationalError

__all__ = [
    "ChordError",
    "EncodeError",
    "ImproperlyConfiguredTask",
    "MaxRetriesExceededError",
    "NotRegistered",
    "OperationalError",
    "Retry",
    "SoftTimeLimitExceeded",
    "TaskError",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "TimeoutError",
    "WorkerLostError",
]


class TaskError(Exception):
    """A task failed with an exception that cannot be rebuilt here."""


class TimeoutError(TaskError):
    """``AsyncResult.get()`` waited longer than ``timeout``."""


class TaskRevokedError(TaskError):
    """The task was revoked (or expired) and will never run."""


class NotRegistered(KeyError):
    """No task of that name is registered (``NotRegistered(name[, why])``)."""

    def __str__(self) -> str:
        why = f": {self.args[1]}" if len(self.args) > 1 else ""
        return f"Task {self.args[0]!r} is not registered{why}"


class ImproperlyConfiguredTask(ValueError):
    """A ``@task`` declaration has a bad name or option."""


class MaxRetriesExceededError(TaskError):
    """``Task.retry()`` was called after ``max_retries`` retries."""


class WorkerLostError(Exception):
    """The worker running the task died before recording its outcome."""


class SoftTimeLimitExceeded(Exception):
    """Raised inside a task when its ``soft_time_limit`` runs out; the task may catch it."""


class TimeLimitExceeded(Exception):
    """The task ran past its ``time_limit`` (hard) and was stopped."""


class Retry(Exception):
    """Raised by ``Task.retry()`` to tell the worker to run the task again later.

    ``exc`` is the reason, ``when`` the time to run again; ``args``/``kwargs`` given to
    ``retry()`` replace the call's (None: keep them), and ``options`` holds the
    ``queue``/``priority``/``expires``/``headers`` it changes.
    """

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: datetime | None = None,
        *,
        args_override: list[Any] | None = None,
        kwargs_override: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.exc = exc
        self.when = when
        self.args_override = args_override
        self.kwargs_override = kwargs_override
        self.options: dict[str, Any] = options or {}
        super().__init__(message or (f"Retry in {when}" if when is not None else "Retry"))

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_retry,
            (
                self.args[0],
                self.exc,
                self.when,
                self.args_override,
                self.kwargs_override,
                self.options,
            ),
        )


def _rebuild_retry(
    message: str,
    exc: BaseException | None,
    when: datetime | None,
    args_override: list[Any] | None,
    kwargs_override: dict[str, Any] | None,
    options: dict[str, Any],
) -> Retry:
    return Retry(
        message,
        exc,
        when,
        args_override=args_override,
        kwargs_override=kwargs_override,
        options=options,
    )


class ChordError(TaskError):
    """A chord's header task failed (or was revoked), so its body never runs."""
