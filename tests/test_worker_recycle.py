"""--max-tasks-per-child and --max-memory-per-child: a prefork child that reaches a limit
records its outcome, gives back what it had not started, exits, and is replaced; nothing is
lost, failed or run twice."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from django_tasks import states
from django_tasks.management.commands.runworker import child_limits
from django_tasks.models import TaskResult
from tests.conftest import wait_until
from tests.taskapp import tasks
from tests.taskapp.models import Run

pytestmark = pytest.mark.worker

LOST_WORDS = ("WorkerLostError", "exited with", "lost worker", "crashed")


def assert_nothing_lost(output):
    for words in LOST_WORDS:
        assert words not in output, output


def test_max_tasks_per_child_replaces_children_and_runs_each_task_once(start_worker):
    results = [tasks.record.delay(str(i)) for i in range(10)]
    worker = start_worker("--concurrency", "1", "--max-tasks-per-child", "3")
    wait_until(lambda: all(r.ready() for r in results), timeout=60, what="10 tasks")
    assert all(r.state == states.SUCCESS for r in results)
    assert Run.objects.count() == 10
    assert Run.objects.values("task_id").distinct().count() == 10
    pids = list(Run.objects.order_by("id").values_list("pid", flat=True))
    assert len(set(pids)) >= 4, pids
    assert worker.proc.pid not in pids
    out = worker.output()
    assert "children:    replaced after 3 tasks" in out
    assert out.count("Worker process retires (3 tasks run, --max-tasks-per-child 3)") >= 3
    assert_nothing_lost(out)
    assert worker.proc.poll() is None  # the worker itself runs on


def test_max_memory_per_child_keeps_children_small_and_loses_nothing(start_worker):
    results = [tasks.leak.delay(50) for _ in range(12)]
    worker = start_worker("--concurrency", "1", "--max-memory-per-child", "200000")
    wait_until(lambda: all(r.ready() for r in results), timeout=120, what="12 leaking tasks")
    assert [r.state for r in results] == [states.SUCCESS] * 12, worker.output()
    values = [r.result for r in results]
    assert max(v["rss_kib"] for v in values) < 250 * 1024, values
    assert len({v["pid"] for v in values}) >= 3, values
    assert Run.objects.count() == 12  # none ran twice
    assert TaskResult.objects.filter(state=states.SUCCESS).count() == 12
    out = worker.output()
    assert "over --max-memory-per-child 200000" in out
    assert_nothing_lost(out)


def test_a_burst_replaces_retired_children_until_drained(start_worker):
    results = [tasks.record.delay(str(i)) for i in range(7)]
    worker = start_worker("--burst", "--concurrency", "2", "--max-tasks-per-child", "2")
    assert worker.wait(60) == 0, worker.output()
    assert all(r.state == states.SUCCESS for r in results)
    assert Run.objects.values("task_id").distinct().count() == Run.objects.count() == 7
    assert Run.objects.values("pid").distinct().count() >= 4
    assert_nothing_lost(worker.output())


@pytest.mark.parametrize("value", ["0", "-3", "lots", "1.5"])
@pytest.mark.parametrize("flag", ["--max-tasks-per-child", "--max-memory-per-child"])
def test_bad_limits_are_refused_when_parsed(flag, value):
    with pytest.raises(CommandError, match=f"argument {flag}: must be an integer >= 1"):
        call_command("runworker", flag, value)


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_the_flags_need_prefork(pool):
    with pytest.raises(CommandError, match=f"--max-tasks-per-child .*--pool {pool} has none"):
        call_command("runworker", "--pool", pool, "--max-tasks-per-child", "3")


def test_settings_are_the_defaults_and_ignored_by_other_pools(settings, caplog):
    settings.DJANGO_TASKS = {"WORKER_MAX_TASKS_PER_CHILD": 5, "WORKER_MAX_MEMORY_PER_CHILD": 9}
    options = {"max_tasks_per_child": None, "max_memory_per_child": 100}
    assert child_limits({**options, "pool": "prefork"}) == {
        "max_tasks_per_child": 5,
        "max_memory_per_child": 100,
    }
    assert child_limits({**options, "max_memory_per_child": None, "pool": "threads"}) == {
        "max_tasks_per_child": None,
        "max_memory_per_child": None,
    }
    assert "WORKER_MAX_TASKS_PER_CHILD is ignored: --pool threads" in caplog.text
