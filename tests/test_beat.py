"""The scheduler in every worker: each due run is sent exactly once, however many run."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import signal
import threading
import time

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone

from django_tasks.checks import check_settings
from django_tasks.models import PeriodicTask, TaskResult
from django_tasks.schedules import crontab
from django_tasks.worker import beat
from django_tasks.worker.beat import Scheduler

from .conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

ADD = "tests.taskapp.tasks.add"


def beat_settings(schedule: dict) -> override_settings:
    from django.conf import settings

    return override_settings(DJANGO_TASKS={**settings.DJANGO_TASKS, "BEAT_SCHEDULE": schedule})


def admin_entry(name="every", seconds=0.2, task=ADD, **fields) -> PeriodicTask:
    entry = PeriodicTask(name=name, task=task, interval_seconds=seconds, args=[1, 2], **fields)
    if entry.next_due is None:
        entry.next_due = timezone.now() + dt.timedelta(seconds=seconds)
    entry.save()
    return entry


def runs_of(name: str) -> list[TaskResult]:
    rows = TaskResult.objects.filter(options__headers__periodic_task_name=name)
    return sorted(rows, key=lambda r: r.options["headers"].get("periodic_due", ""))


def dues_of(name: str) -> list[dt.datetime]:
    return [dt.datetime.fromisoformat(r.options["headers"]["periodic_due"]) for r in runs_of(name)]


def tick_for(scheduler: Scheduler, seconds: float, every: float = 0.02) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        scheduler.tick()
        time.sleep(every)


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"task": "no.such.task", "schedule": 5}, "task 'no.such.task' is not registered"),
        ({"task": ADD, "schedule": crontab(minute="*/0")}, "minute='*/0' is not valid"),
        ({"task": ADD, "schedule": "every day"}, "schedule must be a number of seconds"),
        ({"task": ADD, "schedule": float("nan")}, "finite"),
        ({"task": ADD}, "'schedule' is missing"),
        ({"task": ADD, "schedule": 5, "every": 5}, "unknown key(s) 'every'"),
        ({"task": ADD, "schedule": 5, "args": "1, 2"}, "'args' must be a list"),
        ({"task": ADD, "schedule": 5, "kwargs": {1: 2}}, "'kwargs' must be a dict with text keys"),
        ({"task": ADD, "schedule": 5, "args": [float("nan")]}, "'args' cannot be stored as JSON"),
        ({"task": ADD, "schedule": 5, "args": ["a\x00b"]}, "'args' cannot be stored as JSON"),
        ({"task": ADD, "schedule": 5, "kwargs": {"x": "\ud800"}}, "'kwargs' cannot be stored"),
        ({"task": ADD, "schedule": 5, "options": {"task_id": "x"}}, "cannot take 'task_id'"),
        ({"task": ADD, "schedule": 5, "options": {"speed": 1}}, "cannot take 'speed'"),
        ({"task": ADD, "schedule": 5, "options": {"queue": "a b"}}, "queue 'a b' must not hold"),
        ({"task": ADD, "schedule": 5, "options": {"priority": 300}}, "priority"),
        ("shop.tasks.cleanup", "must be a dict"),
    ],
)
def test_a_bad_entry_is_a_system_check_error_naming_it(entry, message):
    with beat_settings({"nightly": entry}):
        errors = [e for e in check_settings() if e.id == "django_tasks.E030"]
    assert len(errors) == 1, errors
    assert "entry 'nightly'" in errors[0].msg
    assert message in errors[0].msg


def test_good_entries_and_time_zone_pass_the_checks():
    schedule = {
        "ping": {"task": ADD, "schedule": 30.0, "args": (1, 2)},
        "nightly": {
            "task": ADD,
            "schedule": crontab(hour=3, minute=0, day_of_week="mon-fri"),
            "kwargs": {"x": 1, "y": 2},
            "options": {"queue": "lopri", "priority": 3, "expires": 60},
        },
        "weekly": {"task": ADD, "schedule": dt.timedelta(days=7)},
    }
    from django.conf import settings

    with override_settings(
        DJANGO_TASKS={
            **settings.DJANGO_TASKS,
            "BEAT_SCHEDULE": schedule,
            "BEAT_TIMEZONE": "Europe/Paris",
        }
    ):
        assert [
            e for e in check_settings() if e.id in ("django_tasks.E030", "django_tasks.E031")
        ] == []


@pytest.mark.parametrize("zone", ["Mars/Olympus", "", 5, "../../etc/passwd"])
def test_a_bad_beat_timezone_is_a_system_check_error(zone):
    from django.conf import settings

    with override_settings(DJANGO_TASKS={**settings.DJANGO_TASKS, "BEAT_TIMEZONE": zone}):
        errors = [e for e in check_settings() if e.id == "django_tasks.E031"]
    assert len(errors) == 1 and "BEAT_TIMEZONE" in errors[0].msg


# -- syncing code entries -------------------------------------------------------------------------


def test_code_entries_are_synced_keeping_enabled_and_removing_what_settings_dropped():
    admin_made = admin_entry("made-in-admin", seconds=60)
    with beat_settings(
        {
            "ping": {"task": ADD, "schedule": 30, "args": [1, 2]},
            "nightly": {"task": ADD, "schedule": crontab(minute=0, hour=3)},
        }
    ):
        Scheduler().sync()
    ping = PeriodicTask.objects.get(name="ping")
    assert ping.source == "code" and ping.interval_seconds == 30 and ping.args == [1, 2]
    assert ping.next_due is not None and ping.next_due > timezone.now()
    nightly = PeriodicTask.objects.get(name="nightly")
    assert (nightly.minute, nightly.hour, nightly.day_of_week) == ("0", "3", "*")
    PeriodicTask.objects.filter(name="ping").update(enabled=False)
    first_due = nightly.next_due

    with beat_settings(
        {
            "ping": {"task": ADD, "schedule": 60, "args": [1, 2]},
            "nightly": {"task": ADD, "schedule": crontab(minute=0, hour=3)},
        }
    ):
        Scheduler().sync()
    ping.refresh_from_db()
    assert ping.enabled is False  # the admin's choice survives a deploy
    assert ping.interval_seconds == 60
    nightly.refresh_from_db()
    assert nightly.next_due == first_due  # unchanged schedule: its next run stays

    with beat_settings({"nightly": {"task": ADD, "schedule": crontab(minute=0, hour=3)}}):
        Scheduler().sync()
    assert set(PeriodicTask.objects.values_list("name", flat=True)) == {"nightly", admin_made.name}


# -- sending ------------------------------------------------------------------------------------


def test_three_schedulers_send_each_due_run_once_and_miss_none():
    entry = admin_entry("every", seconds=0.5)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            tick_for(Scheduler(), 4.0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    dues = dues_of("every")
    assert len(dues) >= 6
    assert len(set(dues)) == len(dues), "a due run was sent twice"
    gaps = {round((b - a).total_seconds(), 3) for a, b in itertools.pairwise(dues)}
    assert gaps == {0.5}, f"a due run was missed: {gaps}"
    entry.refresh_from_db()
    assert entry.total_runs == len(dues)
    assert entry.recent_task_ids[0] == runs_of("every")[-1].task_id
    lateness = [
        (r.date_created - d).total_seconds() for r, d in zip(runs_of("every"), dues, strict=True)
    ]
    assert max(lateness) < 1.0


def test_runs_missed_while_no_worker_was_up_are_sent_once():
    now = timezone.now()
    entry = admin_entry("hourly", seconds=60, next_due=now - dt.timedelta(hours=5))
    Scheduler().tick()
    (run,) = runs_of("hourly")
    (due,) = dues_of("hourly")
    assert now - dt.timedelta(seconds=60) < due <= now
    # A backlog does not pile up: the run expires when the next is due.
    assert run.expires == due + dt.timedelta(seconds=60)
    entry.refresh_from_db()
    assert entry.next_due == due + dt.timedelta(seconds=60) and entry.total_runs == 1


def test_entry_options_apply_to_the_run():
    admin_entry(
        "opts",
        seconds=30,
        next_due=timezone.now() - dt.timedelta(seconds=1),
        options={"queue": "lopri", "priority": 7, "expires": 600, "headers": {"who": "beat"}},
    )
    started = timezone.now()
    Scheduler().tick()
    (run,) = runs_of("opts")
    assert (run.queue, run.priority) == ("lopri", 7)
    assert run.options["headers"]["who"] == "beat"
    assert (
        started + dt.timedelta(seconds=590)
        < run.expires
        < timezone.now() + dt.timedelta(seconds=601)
    )


def test_a_crash_between_deciding_and_sending_loses_nothing(monkeypatch):
    entry = admin_entry("crashy", seconds=30, next_due=timezone.now() - dt.timedelta(seconds=1))

    def crash(*args, **kwargs):
        raise SystemExit("killed while sending")

    monkeypatch.setattr(beat, "send_run", crash)
    with pytest.raises(SystemExit):
        Scheduler().tick()
    entry.refresh_from_db()
    assert entry.last_due is None and entry.total_runs == 0  # the decision rolled back
    monkeypatch.undo()
    Scheduler().tick()
    assert len(runs_of("crashy")) == 1


def test_a_run_that_cannot_be_sent_is_recorded_and_others_go_on():
    past = timezone.now() - dt.timedelta(seconds=1)
    broken = admin_entry("broken", seconds=30, task="no.such.task", next_due=past)
    bad_args = admin_entry("bad-args", seconds=30, next_due=past, kwargs={"nope": 1})
    good = admin_entry("good", seconds=30, next_due=past)
    Scheduler().tick()
    broken.refresh_from_db()
    assert "no.such.task" in broken.last_error and "not sent" in broken.last_error
    assert broken.next_due > timezone.now()  # not tried again every tick
    bad_args.refresh_from_db()
    assert "TypeError" in bad_args.last_error
    assert len(runs_of("good")) == 1
    good.refresh_from_db()
    assert good.last_error == ""


def test_an_idle_scheduler_queries_at_most_once_a_second():
    admin_entry("later", seconds=3600)
    scheduler = Scheduler()
    with CaptureQueriesContext(connection) as queries:
        tick_for(scheduler, 2.05, every=0.01)
    assert 2 <= len(queries) <= 3, [q["sql"] for q in queries]


def test_an_entry_changed_after_the_scheduler_read_it_is_read_again():
    entry = admin_entry("edited", seconds=30, next_due=timezone.now() + dt.timedelta(seconds=0.3))
    scheduler = Scheduler()
    scheduler.tick()  # reads it: due in 0.3 s
    entry.interval_seconds = 3600  # the admin changes it meanwhile
    entry.next_due = timezone.now() + dt.timedelta(hours=1)
    entry.save()
    time.sleep(0.4)
    scheduler.tick()
    assert runs_of("edited") == []
    entry.refresh_from_db()
    assert entry.next_due > timezone.now() + dt.timedelta(minutes=59)


def test_a_disabled_entry_is_not_sent():
    admin_entry("off", seconds=30, next_due=timezone.now() - dt.timedelta(seconds=1), enabled=False)
    Scheduler().tick()
    assert runs_of("off") == []


# -- in workers -----------------------------------------------------------------------------------


def test_workers_killed_and_restarted_send_every_due_run_exactly_once(start_worker):
    schedule = json.dumps({"tick": {"task": ADD, "every": 1.0, "args": [1, 2]}})
    env = {"DJANGO_TASKS_BEAT_SCHEDULE": schedule}
    # A short lease: the runs a killed worker had claimed are recovered in seconds, not 45.
    workers = [start_worker("-c", "1", env=env, lease_seconds=3) for _ in range(3)]
    started = time.monotonic()
    wait_until(lambda: len(runs_of("tick")) >= 3, timeout=30, what="the first runs")
    for victim in range(2):
        workers[victim].signal(signal.SIGKILL)
        workers[victim].kill_group()
        time.sleep(1.2)
        workers[victim] = start_worker("-c", "1", env=env, lease_seconds=3)
    wait_until(lambda: time.monotonic() - started > 10, timeout=30)
    dues = dues_of("tick")
    assert len(set(dues)) == len(dues), "a due run was sent twice"
    # Two workers were up all along: no due time between the first and the last is missing.
    gaps = {round((b - a).total_seconds(), 3) for a, b in itertools.pairwise(dues)}
    assert gaps == {1.0}, f"a due run was missed (a gap): {sorted(gaps)}"

    # Nothing sent is lost: every run ends, a run a killed worker was running by the
    # lost-worker rule, the rest (queued again when their lease ran out) successfully.
    def ended(run: TaskResult) -> bool:
        if run.state == "FAILURE":
            return "WorkerLostError" in str(run.result)
        return run.state == "SUCCESS"

    wait_until(lambda: all(map(ended, runs_of("tick")[:-2])), timeout=30, what="runs done")
    assert sum(run.state == "SUCCESS" for run in runs_of("tick")[:-2]) >= len(dues) - 4


def test_a_worker_without_beat_sends_nothing(start_worker):
    schedule = json.dumps({"tick": {"task": ADD, "every": 0.2, "args": [1, 2]}})
    worker = start_worker("-c", "1", "--without-beat", env={"DJANGO_TASKS_BEAT_SCHEDULE": schedule})
    wait_until(lambda: "beat:        off" in worker.output(), timeout=30, what="the banner")
    time.sleep(1.5)
    assert runs_of("tick") == []
