"""The built-in tasks behind ``Task.map`` and ``Task.starmap`` (and so ``Task.chunks``).

Each calls the mapped task on every item in turn, in the worker that runs it (as Celery's
``celery.map`` and ``celery.starmap`` do): one message and one result row for the lot. An
item that raises fails the whole task. Registered when the app is ready.
"""

from __future__ import annotations

from typing import Any

from .canvas import MAP_TASK, STARMAP_TASK
from .signature import Signature
from .task import task


@task(name=MAP_TASK)
def xmap(task: dict[str, Any], it: list[Any]) -> list[Any]:
    """``[task(item) for item in it]``."""
    mapped = Signature.from_dict(task).type
    return [mapped(item) for item in it]


@task(name=STARMAP_TASK)
def xstarmap(task: dict[str, Any], it: list[Any]) -> list[Any]:
    """``[task(*item) for item in it]``."""
    mapped = Signature.from_dict(task).type
    return [mapped(*item) for item in it]
