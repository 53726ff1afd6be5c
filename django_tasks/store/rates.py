"""Rate limits held in the database, shared by every worker.

Each rate-limited task name has a bucket row (:class:`~django_tasks.models.RateLimitBucket`)
holding the time the next start is allowed (the generic cell rate algorithm: starts one
interval apart on average, a small burst tolerated so that late claims catch up). A worker that
claimed tasks of that name asks :func:`take_starts` which may start now, with one read and one
compare-and-set of that row. Those that may not start are given a turn of their own, one
interval after the last one handed out, and go back to the queue due then, marked with it:
coming back, a task starts at its turn without asking the bucket again.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Case, DateTimeField, Value, When

from ..models import RateLimitBucket, TaskResult
from .leases import RESERVED_START, give_back

#: How many times a take is tried again when other workers changed the row meanwhile.
MAX_ATTEMPTS = 100


def take_starts(
    task_name: str,
    turns: list[float | None],
    spacing: float,
    tolerance: float,
    now: float,
    late: float,
) -> list[float | None]:
    """For each claimed task of ``task_name`` (``turns``: the turn it was given when held
    back, or None for a new one): None if it may start now, else the time (epoch seconds) it is
    due again.

    A task back at its turn starts, if it comes no more than ``tolerance`` early and ``late``
    seconds late; that costs no statement. Back early, it waits for its turn. Back later than
    that (its worker was busy or gone), it lines up again like a new task: starting it would
    crowd the starts of later turns. A new task starts while the bucket's ``allowed_at`` is
    at most ``tolerance`` ahead of now, and moves it on by ``spacing``; refused, it gets the
    next turn, and the bucket moves on by ``spacing`` too.
    """
    answers: list[float | None] = [None] * len(turns)
    new: list[int] = []
    for index, turn in enumerate(turns):
        if turn is None or now - turn > late:
            new.append(index)
        elif turn - now > tolerance:
            answers[index] = turn
    if not new:
        return answers
    for _attempt in range(MAX_ATTEMPTS):
        allowed_at = (
            RateLimitBucket.objects.filter(task_name=task_name)
            .values_list("allowed_at", flat=True)
            .first()
        )
        if allowed_at is None:
            try:
                with transaction.atomic():
                    RateLimitBucket.objects.create(task_name=task_name)
            except IntegrityError:
                pass  # another worker made it
            continue
        at = allowed_at
        for index in new:
            if at - now <= tolerance:
                at = max(at, now) + spacing  # its answer stays None: it starts now
            else:
                answers[index] = at - tolerance
                at += spacing
        updated = RateLimitBucket.objects.filter(task_name=task_name, allowed_at=allowed_at).update(
            allowed_at=at
        )
        if updated:
            return answers
    raise RuntimeError(f"the rate limit bucket of {task_name!r} is changed too often to use")


def wait_for_turn(
    lease_token: str, waiting: list[tuple[int, float, dict[str, Any]]], *, republish: bool
) -> int:
    """Give back leased tasks ``(pk, at, options)``, due again at ``at`` (epoch seconds) and
    marked as waiting their turn, in one statement; ``republish``: they have no message.
    Returns how many were given back."""
    options_field = TaskResult._meta.get_field("options")
    run_after = Case(
        *(
            When(pk=pk, then=Value(dt.datetime.fromtimestamp(at, tz=dt.UTC)))
            for pk, at, _options in waiting
        ),
        output_field=DateTimeField(),
    )
    options = Case(
        *(
            When(pk=pk, then=Value({**opts, RESERVED_START: at}, output_field=options_field))
            for pk, at, opts in waiting
        ),
        output_field=options_field,
    )
    pks = [pk for pk, _at, _opts in waiting]
    return give_back(lease_token, pks, republish=republish, run_after=run_after, options=options)


def turn_of(options: dict[str, Any], run_after: dt.datetime | None) -> float | None:
    """The turn (epoch seconds) a claimed task was given when a rate limit held it back, or
    None: never held back, or due at another time since (a retry moves the due time, and the
    task then lines up again)."""
    at = options.get(RESERVED_START)
    if not isinstance(at, int | float) or isinstance(at, bool) or run_after is None:
        return None
    try:
        turn = float(at)  # an integer too large for a float: no turn
    except OverflowError:
        return None
    return turn if abs(run_after.timestamp() - turn) < 0.001 else None
