"""The request context a task sees as ``self.request``, and the task running now."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class Request:
    """What a running task knows about its own call, as Celery's ``Task.request``."""

    id: str | None = None
    task: str = ""
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    eta: datetime | None = None
    expires: datetime | None = None
    delivery_info: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    hostname: str | None = None
    is_eager: bool = False
    called_directly: bool = True
    ignore_result: bool = False
    #: Set by ``retry(throw=False)``: the retry to schedule when the task returns.
    pending_retry: Any = None
    #: The stored row's primary key, in a worker (saves ``update_state`` a lookup).
    row_pk: int | None = None


_local = threading.local()


def request_stack() -> list[tuple[object, Request]]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def current_request() -> Request | None:
    """The request of the task running in this thread (in a worker or eagerly), if any."""
    stack = request_stack()
    return stack[-1][1] if stack else None


def in_worker_task() -> bool:
    """True while this thread runs a task for a worker (not eagerly, not called directly)."""
    request = current_request()
    return bool(request and not request.is_eager and not request.called_directly)
