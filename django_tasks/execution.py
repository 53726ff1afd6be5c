"""Running a task once, and what came of it: the one path that eager ``Task.apply()`` and
the worker share (the task's code, automatic retries, ``retry(throw=False)``, encoding the
result, and the links and errbacks to apply once the outcome is stored)."""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from . import states
from .context import Request, request_stack
from .exceptions import Retry
from .links import apply_errback, apply_link
from .messages import encode_result, format_traceback

if TYPE_CHECKING:
    from .task import Task


@dataclass(slots=True)
class Run:
    """What one run of a task came to: ``SUCCESS``, ``RETRY`` or ``FAILURE``."""

    state: str
    #: SUCCESS: the return value, encoded as it is stored (raw with ``ignore_result``).
    value: Any = None
    #: FAILURE: the exception and its formatted traceback.
    exc: BaseException | None = None
    traceback: str | None = None
    #: RETRY: the retry the task asked for.
    retry: Retry | None = None
    #: Links (SUCCESS) or errbacks (FAILURE) to apply once the outcome is stored.
    followups: list[Callable[[], None]] = field(default_factory=list)

    @classmethod
    def failure(cls, request: Request, exc: BaseException) -> Run:
        """A failure with ``exc``, and the call's errbacks to apply."""
        traceback = format_traceback(exc)
        errbacks = request.options.get("link_error") or []
        return cls(
            states.FAILURE,
            exc=exc,
            traceback=traceback,
            followups=[partial(apply_errback, sig, request, exc, traceback) for sig in errbacks],
        )


def run_task(
    task: Task[Any, Any],
    request: Request,
    args: list[Any],
    kwargs: dict[str, Any],
    *,
    guard: AbstractContextManager[Any] | None = None,
) -> Run:
    """Run ``task`` with ``args``/``kwargs`` as ``request``; never raises.

    Whatever the task raises is its failure, ``BaseException``s included (``sys.exit()``,
    ``KeyboardInterrupt``, …): a task cannot stop the process that runs it, or its
    batch-mates. ``guard`` wraps the task's own code (the worker's time limits and savepoint).
    """
    stack = request_stack()
    stack.append((task, request))
    try:
        with guard or nullcontext():
            value = _call(task, request, args, kwargs)
        if request.pending_retry is not None:
            raise request.pending_retry
        if not request.ignore_result:
            value = encode_result(value, task.name)
    except Retry as retry:
        return Run(states.RETRY, retry=retry)
    except BaseException as exc:  # EncodeError too: a result that cannot be stored
        return Run.failure(request, exc)
    finally:
        stack.pop()
    links = request.options.get("link") or []
    return Run(states.SUCCESS, value, followups=[partial(apply_link, sig, value) for sig in links])


def _call(task: Task[Any, Any], request: Request, args: list[Any], kwargs: dict[str, Any]) -> Any:
    try:
        if task.bind:
            return task.run(task, *args, **kwargs)
        return task.run(*args, **kwargs)
    except Retry:
        raise
    except Exception as exc:
        if (
            task.autoretry_for
            and isinstance(exc, task.autoretry_for)
            and not isinstance(exc, task.dont_autoretry_for)
        ):
            raise task.retry(exc=exc, **autoretry_options(task, request)) from exc
        raise


def autoretry_options(task: Task[Any, Any], request: Request) -> dict[str, Any]:
    """``retry_kwargs``, with Celery's exponential backoff when ``retry_backoff`` is set:
    ``min(retry_backoff_max, factor * 2 ** retries)``, then uniform in ``[0, that]`` with
    ``retry_jitter``."""
    options = dict(task.retry_kwargs)
    if task.retry_backoff:
        factor = 1 if task.retry_backoff is True else task.retry_backoff
        countdown = min(task.retry_backoff_max, factor * 2**request.retries)
        if task.retry_jitter:
            countdown = random.uniform(0, countdown)
        options["countdown"] = countdown
    return options
