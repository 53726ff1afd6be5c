"""Schedules: Celery's crontab syntax, intervals, time zones and daylight-saving changes."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import zoneinfo

import pytest

from django_tasks.schedules import crontab, interval, schedule_from, wall_to_instant

from .conftest import REPO

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
UTC = dt.UTC


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def times(schedule, after: dt.datetime, tz: dt.tzinfo, count: int) -> list[dt.datetime]:
    found = []
    for _ in range(count):
        after = schedule.next_after(after, tz)
        found.append(after)
    return found


def local(instants: list[dt.datetime], tz: dt.tzinfo) -> list[str]:
    return [i.astimezone(tz).strftime("%a %d %H:%M%z") for i in instants]


def test_crontab_is_importable_from_settings_without_django_set_up():
    code = (
        "from django_tasks.schedules import crontab; import sys; crontab(minute='*/15'); "
        "sys.exit('django.apps' in sys.modules and 'django_tasks.models' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.parametrize(
    ("fields", "after", "expected"),
    [
        ({"minute": "*/15"}, utc(2026, 1, 5, 10, 7), ["Mon 05 10:15+0000", "Mon 05 10:30+0000"]),
        (
            {"minute": 0, "hour": "0-5"},
            utc(2026, 1, 5, 4, 30),
            ["Mon 05 05:00+0000", "Tue 06 00:00+0000"],
        ),
        # Celery counts weekdays from Sunday and takes names.
        (
            {"minute": 0, "hour": 9, "day_of_week": "mon-fri"},
            utc(2026, 1, 9, 10),
            ["Mon 12 09:00+0000", "Tue 13 09:00+0000"],
        ),
        (
            {"minute": 0, "hour": 9, "day_of_week": 0},
            utc(2026, 1, 5),
            ["Sun 11 09:00+0000", "Sun 18 09:00+0000"],
        ),
        (
            {"minute": [0, 30], "hour": 12},
            utc(2026, 1, 5),
            ["Mon 05 12:00+0000", "Mon 05 12:30+0000"],
        ),
        (
            {"minute": 0, "hour": 0, "day_of_month": "1,15"},
            utc(2026, 1, 5),
            ["Thu 15 00:00+0000", "Sun 01 00:00+0000"],
        ),
        (
            {"minute": 0, "hour": 0, "day_of_month": 1, "month_of_year": "*/3"},
            utc(2026, 1, 5),
            ["Wed 01 00:00+0000", "Wed 01 00:00+0000"],
        ),
        # Both day fields restricted: a day must match both, as in Celery (cron takes either).
        (
            {"minute": 0, "hour": 0, "day_of_month": "1-7", "day_of_week": "mon"},
            utc(2026, 1, 1),
            ["Mon 05 00:00+0000", "Mon 02 00:00+0000"],
        ),
    ],
)
def test_celery_field_syntax(fields, after, expected):
    assert local(times(crontab(**fields), after, UTC, 2), UTC) == expected


def test_crontabs_are_read_in_the_schedule_time_zone():
    nine_am = crontab(minute=0, hour=9)
    (first,) = times(nine_am, utc(2026, 1, 5), NEW_YORK, 1)
    assert first == utc(2026, 1, 5, 14)  # 09:00 EST
    (summer,) = times(nine_am, utc(2026, 7, 6), NEW_YORK, 1)
    assert summer == utc(2026, 7, 6, 13)  # 09:00 EDT


def test_a_time_skipped_by_spring_forward_runs_once_at_the_change():
    # Europe/Berlin, 29 March 2026: 02:00 CET becomes 03:00 CEST (01:00 UTC).
    every_quarter = times(crontab(minute="*/15"), utc(2026, 3, 29, 0, 40), BERLIN, 4)
    assert local(every_quarter, BERLIN) == [
        "Sun 29 01:45+0100",
        "Sun 29 03:00+0200",  # 02:00, 02:15, 02:30, 02:45 and 03:00 are one instant: one run
        "Sun 29 03:15+0200",
        "Sun 29 03:30+0200",
    ]
    daily = times(crontab(minute=30, hour=2), utc(2026, 3, 27, 12), BERLIN, 3)
    assert local(daily, BERLIN) == ["Sat 28 02:30+0100", "Sun 29 03:00+0200", "Mon 30 02:30+0200"]


def test_a_time_repeated_by_fall_back_runs_once():
    # Europe/Berlin, 25 October 2026: 03:00 CEST becomes 02:00 CET (01:00 UTC).
    daily = times(crontab(minute=30, hour=2), utc(2026, 10, 23, 12), BERLIN, 3)
    assert local(daily, BERLIN) == ["Sat 24 02:30+0200", "Sun 25 02:30+0200", "Mon 26 02:30+0100"]
    quarter = times(crontab(minute="*/15"), utc(2026, 10, 25, 0, 20), BERLIN, 4)
    assert local(quarter, BERLIN) == [
        "Sun 25 02:30+0200",
        "Sun 25 02:45+0200",
        "Sun 25 03:00+0100",  # the repeated 02:00-02:45 CET are not run again
        "Sun 25 03:15+0100",
    ]
    # Starting inside the repeated hour (its second pass) still moves forward only.
    (next_run,) = times(crontab(minute="*/15"), utc(2026, 10, 25, 1, 20), BERLIN, 1)
    assert next_run == utc(2026, 10, 25, 2)


def test_wall_to_instant_in_a_gap_is_the_change():
    assert wall_to_instant(dt.datetime(2026, 3, 8, 2, 30), NEW_YORK) == utc(2026, 3, 8, 7)


def test_latest_due_sends_one_run_for_many_missed():
    minutely = crontab(minute="*")
    due, following = minutely.latest_due(utc(2026, 1, 1), utc(2026, 1, 8, 12, 0, 30), UTC)
    assert (due, following) == (utc(2026, 1, 8, 12), utc(2026, 1, 8, 12, 1))
    every_30 = interval(30)
    due, following = every_30.latest_due(utc(2026, 1, 1), utc(2026, 1, 1, 0, 5, 10), UTC)
    assert (due, following) == (utc(2026, 1, 1, 0, 5), utc(2026, 1, 1, 0, 5, 30))
    # Nothing missed: the due time itself.
    due, following = every_30.latest_due(utc(2026, 1, 1), utc(2026, 1, 1, 0, 0, 1), UTC)
    assert (due, following) == (utc(2026, 1, 1), utc(2026, 1, 1, 0, 0, 30))


def test_intervals_from_numbers_and_timedeltas():
    assert schedule_from(30) == interval(30.0)
    assert schedule_from(dt.timedelta(minutes=5)) == interval(300)
    assert schedule_from(dt.timedelta(minutes=5)).describe() == "every 5 minutes"
    assert schedule_from(0.5).describe() == "every 0.5 seconds"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "above 0"),
        (-5, "above 0"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (True, "schedule must be"),
        ("30", "schedule must be"),
        (None, "schedule must be"),
        (crontab(minute="61"), "minute='61' is not valid"),
        (crontab(hour="*/0"), "hour='*/0'"),
        (crontab(day_of_week="funday"), "day_of_week='funday'"),
        (crontab(minute="1\x00"), "minute="),
        (crontab(minute=1.5), "crontab field minute must be"),
        (crontab(minute=[1, "x"]), "crontab field minute must be"),
        (crontab(day_of_month=31, month_of_year=2), "never matches"),
        (crontab(minute="\ud800"), "minute="),
    ],
)
def test_bad_schedules_say_what_is_wrong(value, message):
    with pytest.raises(ValueError, match=message.replace("*", r"\*")):
        schedule_from(value)
