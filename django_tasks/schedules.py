"""When periodic tasks are due: intervals and Celery-style crontabs.

Importable from ``settings.py``: nothing here touches Django's models or apps. Next-time
arithmetic is croniter's; this module adds Celery's field syntax and time-zone handling:
wall-clock times are read in the schedule's time zone, a time that a daylight-saving change
skips runs at the change, and a time that it repeats runs once (the first time).
"""

from __future__ import annotations

import abc
import datetime as dt
import math
from collections.abc import Iterable
from typing import Any

from croniter import CroniterBadDateError, croniter

UTC = dt.UTC
#: How many crontab times to step through looking for one past a given instant (times a
#: daylight-saving change folds onto the same instant are skipped).
MAX_STEPS = 10_000
#: Celery's crontab fields, in cron's order of the expression croniter reads.
CRONTAB_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")


class Schedule(abc.ABC):
    """When an entry is due."""

    @abc.abstractmethod
    def next_after(self, after: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
        """The first due time strictly after the aware datetime ``after`` (in UTC)."""

    @abc.abstractmethod
    def problem(self) -> str | None:
        """Why this schedule cannot be used, or None."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A short human description (the admin shows it)."""

    def latest_due(
        self, next_due: dt.datetime, now: dt.datetime, tz: dt.tzinfo
    ) -> tuple[dt.datetime, dt.datetime]:
        """For an entry due at ``next_due`` (≤ ``now``): the latest due time ≤ ``now``, which
        is the one run sent for however many were missed, and the due time after it."""
        due = next_due
        following = self.next_after(due, tz)
        for _ in range(MAX_STEPS):
            if following > now:
                break
            due, following = following, self.next_after(following, tz)
        return due, following


class interval(Schedule):
    """Every ``seconds`` (a number, or a :class:`~datetime.timedelta`)."""

    def __init__(self, run_every: float | dt.timedelta) -> None:
        self.run_every = run_every
        self.seconds = (
            run_every.total_seconds() if isinstance(run_every, dt.timedelta) else run_every
        )

    def problem(self) -> str | None:
        seconds = self.seconds
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            return f"an interval must be a number of seconds or a timedelta, not {seconds!r}"
        if not math.isfinite(seconds) or seconds <= 0:
            return f"an interval must be a finite number of seconds above 0, not {seconds!r}"
        if seconds > 100 * 365 * 86400:
            return f"an interval must be at most 100 years, not {seconds!r} seconds"
        return None

    def next_after(self, after: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
        return after + dt.timedelta(seconds=self.seconds)

    def latest_due(
        self, next_due: dt.datetime, now: dt.datetime, tz: dt.tzinfo
    ) -> tuple[dt.datetime, dt.datetime]:
        step = dt.timedelta(seconds=self.seconds)
        missed = max(0, math.floor((now - next_due) / step))
        due = next_due + missed * step
        return due, due + step

    def describe(self) -> str:
        return f"every {_seconds_text(self.seconds)}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, interval) and other.seconds == self.seconds

    def __hash__(self) -> int:
        return hash(("interval", self.seconds))

    def __repr__(self) -> str:
        return f"<interval: {self.describe()}>"


class crontab(Schedule):
    """Celery's ``crontab``: each field takes ``"*"``, a number, ``"*/15"``, a range
    (``"0-5"``, ``"mon-fri"``), a comma-separated list, or an iterable of numbers.

    ``day_of_week`` counts from Sunday (0) and takes names (``"sun"`` … ``"sat"``); when both
    ``day_of_month`` and ``day_of_week`` are restricted, a day must match both (as in Celery,
    unlike cron, which takes either).
    """

    def __init__(
        self,
        minute: Any = "*",
        hour: Any = "*",
        day_of_week: Any = "*",
        day_of_month: Any = "*",
        month_of_year: Any = "*",
    ) -> None:
        self.minute = minute
        self.hour = hour
        self.day_of_week = day_of_week
        self.day_of_month = day_of_month
        self.month_of_year = month_of_year
        self._fields: dict[str, str] = {}
        self._problem: str | None = None
        for name in CRONTAB_FIELDS:
            try:
                self._fields[name] = _field_text(name, getattr(self, name))
            except ValueError as exc:
                self._problem = str(exc)
                return
        for name in CRONTAB_FIELDS:
            alone = ["*"] * len(CRONTAB_FIELDS)
            alone[CRONTAB_FIELDS.index(name)] = self._fields[name]
            if not croniter.is_valid(" ".join(alone)):
                self._problem = f"crontab field {name}={getattr(self, name)!r} is not valid"
                return
        try:  # e.g. day_of_month=31 with month_of_year=2 never happens
            croniter(self.expression, dt.datetime(2000, 1, 1), day_or=False).get_next(dt.datetime)
        except (CroniterBadDateError, ValueError, KeyError) as exc:
            self._problem = f"crontab {self.describe()} never matches a date ({exc})"

    @property
    def expression(self) -> str:
        """The five-field cron expression croniter reads."""
        return " ".join(self._fields[name] for name in CRONTAB_FIELDS)

    def problem(self) -> str | None:
        return self._problem

    def field_text(self, name: str) -> str:
        """Field ``name`` as text in Celery's syntax (a list of numbers as ``"0,30"``)."""
        return self._fields.get(name) or str(getattr(self, name))

    def next_after(self, after: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
        if self._problem:
            raise ValueError(self._problem)
        wall = after.astimezone(tz).replace(tzinfo=None)
        times = croniter(self.expression, wall, day_or=False)
        for _ in range(MAX_STEPS):
            instant = wall_to_instant(times.get_next(dt.datetime), tz)
            if instant > after:
                return instant
        raise ValueError(f"crontab {self.describe()}: no time found after {after.isoformat()}")

    def latest_due(
        self, next_due: dt.datetime, now: dt.datetime, tz: dt.tzinfo
    ) -> tuple[dt.datetime, dt.datetime]:
        # Step back from now rather than forward from next_due: a worker starting after a
        # long downtime would otherwise walk through every missed minute.
        wall_now = now.astimezone(tz).replace(tzinfo=None, microsecond=0)
        times = croniter(self.expression, wall_now + dt.timedelta(seconds=1), day_or=False)
        latest = next_due
        for _ in range(MAX_STEPS):
            instant = wall_to_instant(times.get_prev(dt.datetime), tz)
            if instant <= now:
                latest = max(instant, next_due)
                break
        return super().latest_due(latest, now, tz)

    def describe(self) -> str:
        shown = (
            f"{name}={getattr(self, name)!r}"
            for name in ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")
        )
        return f"crontab({', '.join(shown)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, crontab) and other._fields == self._fields

    def __hash__(self) -> int:
        return hash(("crontab", tuple(sorted(self._fields.items()))))

    def __repr__(self) -> str:
        return f"<{self.describe()}>"


def schedule_from(value: Any) -> Schedule:
    """An entry's ``schedule`` as a :class:`Schedule`: a crontab or interval as is, a number
    of seconds or a timedelta as an :class:`interval`. Raises ValueError for anything else."""
    if isinstance(value, Schedule):
        schedule = value
    elif isinstance(value, dt.timedelta) or (
        isinstance(value, int | float) and not isinstance(value, bool)
    ):
        schedule = interval(value)
    else:
        raise ValueError(
            "schedule must be a number of seconds, a timedelta or a crontab(...), "
            f"not {type(value).__name__} {value!r}"[:300]
        )
    problem = schedule.problem()
    if problem:
        raise ValueError(problem)
    return schedule


def wall_to_instant(wall: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """The UTC instant of the naive wall-clock time ``wall`` in ``tz``.

    A wall time that a daylight-saving change repeats is its first occurrence; one that the
    change skips is the instant of the change (02:30 on a spring-forward night runs at 03:00).
    """
    first = wall.replace(tzinfo=tz, fold=0)
    instant = first.astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) == wall:
        return instant
    # In a gap: fold=1 gives an instant before the change, fold=0 one after it. The change
    # is the first instant whose wall time is not earlier than ``wall``.
    low = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    high = instant
    while (high - low) > dt.timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(tz).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0) if high.microsecond else high


def _field_text(name: str, value: Any) -> str:
    if isinstance(value, bool):
        raise ValueError(f"crontab field {name} must be a number, text or numbers, not {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if not text or "\x00" in text or len(text) > 200:
            raise ValueError(f"crontab field {name}={value!r} is not valid")
        return text
    if isinstance(value, Iterable):
        items = list(value)
        if items and all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            return ",".join(str(i) for i in sorted(set(items)))
    raise ValueError(
        f"crontab field {name} must be a number, text such as '*/15' or '1-5', or a list "
        f"of numbers, not {value!r}"[:300]
    )


def _seconds_text(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} second{'s' if seconds != 1 else ''}"
