"""``@task(rate_limit=...)`` in the consumer loop: which claimed tasks may start now."""

from __future__ import annotations

import time

from .. import store
from ..registry import tasks_registry
from ..store import ClaimedTask
from ..transports import Transport

#: The burst a rate limit tolerates, as a share of its limit: with 5 %, "50/s" lets a claim
#: that came late start up to 2 tasks more at once, and no second holds more than 52 starts.
BURST_SHARE = 0.05
#: How late, as a share of its limit's period, a task held back may come back at its turn and
#: still start (the loop that claims it may be busy). Later than that, it lines up again, so
#: a period holds at most its limit plus this share and the burst: about 55 starts in a
#: second at "50/s".
LATE_SHARE = 0.05


def admit(
    batch: list[ClaimedTask], transport: Transport, lease_token: str
) -> tuple[list[ClaimedTask], list[tuple[ClaimedTask, float]]]:
    """The tasks of ``batch`` that may start now, and the rest ``(task, at)``: those, held
    back by their task's ``rate_limit``, are given back due at ``at`` (epoch seconds), when
    their turn comes.

    Costs nothing for a batch without rate-limited tasks, or with only tasks back at their
    turn; otherwise two statements per rate-limited task name with new tasks in the batch
    (read and compare-and-set its bucket), and one statement giving back the tasks that must
    wait.
    """
    limited: dict[str, list[ClaimedTask]] = {}
    limits: dict[str, tuple[float, float]] = {}
    for claimed in batch:
        task = tasks_registry.get(claimed.task_name)
        if task is None or task.rate_limit_parsed is None or claimed.problem:
            continue
        limited.setdefault(claimed.task_name, []).append(claimed)
        limits[claimed.task_name] = task.rate_limit_parsed
    if not limited:
        return batch, []
    now = time.time()
    waiting: list[tuple[ClaimedTask, float]] = []
    for name, tasks in limited.items():
        starts, period = limits[name]
        spacing = period / starts
        answers = store.take_starts(
            name,
            [store.turn_of(c.options, c.run_after) for c in tasks],
            spacing,
            tolerance(spacing, period),
            now,
            LATE_SHARE * period,
        )
        waiting.extend(
            (task, at) for task, at in zip(tasks, answers, strict=True) if at is not None
        )
    if not waiting:
        return batch, []
    transport.wait_for_turn(lease_token, waiting)
    held = {id(task) for task, _at in waiting}
    return [claimed for claimed in batch if id(claimed) not in held], waiting


def tolerance(spacing: float, period: float) -> float:
    """How far ahead of now a bucket may be and still allow a start: a burst of
    :data:`BURST_SHARE` of the limit (at least one start)."""
    return max(0.0, BURST_SHARE * period - spacing)
