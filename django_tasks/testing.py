"""Helpers for your own tests: run queued tasks in-process, without a worker process."""

from __future__ import annotations

import threading

from .conf import tasks_settings
from .store.notify import close_waiter
from .worker.consumer import Consumer, new_lease_token
from .worker.pool import process_name


def run_until_empty(queues: list[str] | None = None) -> int:
    """Run every due task of ``queues`` (default: the default queue) here; return how many.

    This is the worker's own loop in burst mode, in the calling thread: tasks run with
    their real arguments, retries, states and history, inside your test's transaction.
    """
    consumer = Consumer(
        queues or [tasks_settings.TASK_DEFAULT_QUEUE],
        hostname=process_name(),
        lease_token=new_lease_token(),
        stop=threading.Event(),
        burst=True,
    )
    consumer.run()
    return consumer.processed


__all__ = ["close_waiter", "run_until_empty"]
