"""The bound on long-polls waiting at once in this process (``API_MAX_LONG_POLLS``).

A waiting long-poll holds a server thread (never a database connection: see
:class:`django_tasks.store.notify.Watch`). Past the bound, a long-poll is answered at once
instead of waiting: ``304`` if the client's copy is current, else ``429`` with
``Retry-After``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..conf import tasks_settings

#: Seconds a client is asked to wait before it polls again when the bound is reached.
RETRY_AFTER = 1

_lock = threading.Lock()
_active = 0


def max_long_polls() -> int:
    """``DJANGO_TASKS["API_MAX_LONG_POLLS"]``: long-polls that may wait at once, per process."""
    return int(tasks_settings.API_MAX_LONG_POLLS)


def active() -> int:
    """How many long-polls wait now in this process."""
    return _active


@contextmanager
def slot() -> Iterator[bool]:
    """A place among the waiting long-polls: yields True if there was one (held until the
    block ends), False if ``API_MAX_LONG_POLLS`` already wait."""
    global _active
    with _lock:
        granted = _active < max_long_polls()
        if granted:
            _active += 1
    try:
        yield granted
    finally:
        if granted:
            with _lock:
                _active -= 1
