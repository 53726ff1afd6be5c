"""``link`` and ``link_error``: what runs after a task, once its outcome is stored."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any

from .context import Request
from .registry import tasks_registry
from .signature import Signature

logger = logging.getLogger("django_tasks.worker")


def apply_link(sig: dict[str, Any], value: object) -> None:
    """Send a success callback with the result prepended (unless it is immutable)."""
    Signature.from_dict(sig).apply_async((value,))


def apply_errback(
    sig: dict[str, Any], request: Request, exc: BaseException, traceback: str
) -> None:
    """Call ``errback(request, exc, traceback)`` here, or send it with the failed task's id."""
    errback = Signature.from_dict(sig)
    if _unbound_parameters(errback) == 3:
        errback(request, exc, traceback)
    else:
        errback.apply_async((request.id,))


def _unbound_parameters(sig: Signature) -> int | None:
    task = tasks_registry.get(sig.task)
    if task is None:
        return None
    params = [
        p
        for p in inspect.signature(task.run).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if task.bind:
        params = params[1:]
    return len([p for p in params[len(sig.args) :] if p.name not in sig.kwargs])


def run_followups(followups: Iterable[Callable[[], None]]) -> None:
    """Apply links after their parent's outcome is stored; a failing link changes nothing."""
    for followup in followups:
        try:
            followup()
        except BaseException:  # an errback runs task code here: sys.exit() included
            logger.exception("A link of a finished task failed; the task's result stands")
