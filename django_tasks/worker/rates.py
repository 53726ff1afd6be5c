"""``@task(rate_limit=...)`` in the consumer loop: which claimed tasks may start now."""

from __future__ import annotations

import time

from .. import store
from ..registry import tasks_registry
from ..store import ClaimedTask
from ..transports import Transport

#: A reserved start this close to now starts now.
SLACK = 0.002


def admit(batch: list[ClaimedTask], transport: Transport, lease_token: str) -> list[ClaimedTask]:
    """The tasks of ``batch`` that may start now; the rest, held by their task's
    ``rate_limit``, are given back due at the start times they reserved.

    Costs nothing for a batch without rate-limited tasks; otherwise two statements per
    rate-limited task name in the batch (read and compare-and-set its bucket), and one
    transaction giving back the tasks that must wait.
    """
    limited: dict[str, list[ClaimedTask]] = {}
    spacing: dict[str, float] = {}
    for claimed in batch:
        task = tasks_registry.get(claimed.task_name)
        if task is None or task.rate_limit_spacing is None or claimed.problem:
            continue
        if store.holds_reserved_start(claimed.options, claimed.run_after):
            continue  # back at the start time it reserved
        limited.setdefault(claimed.task_name, []).append(claimed)
        spacing[claimed.task_name] = task.rate_limit_spacing
    if not limited:
        return batch
    now = time.time()
    waiting: list[tuple[ClaimedTask, float]] = []
    for name, tasks in limited.items():
        starts = store.reserve_starts(name, len(tasks), spacing[name], now)
        waiting.extend(
            (task, start) for task, start in zip(tasks, starts, strict=True) if start > now + SLACK
        )
    if not waiting:
        return batch
    transport.wait_for_start(lease_token, waiting)
    held = {id(task) for task, _start in waiting}
    return [claimed for claimed in batch if id(claimed) not in held]
