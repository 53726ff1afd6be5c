"""get(on_message=...): one call per stored state change, in order, none missed."""

import pytest

from django_tasks import states
from django_tasks.testing import run_until_empty
from tests.taskapp import tasks

META_KEYS = {"task_id", "status", "result", "traceback", "date_done"}


def progress_path(steps):
    return [
        (states.STARTED, None),
        *[("PROGRESS", {"current": i, "total": steps}) for i in range(1, steps + 1)],
        (states.SUCCESS, steps),
    ]


@pytest.mark.django_db
def test_every_change_is_reported_once_in_order_even_when_they_came_at_once():
    res = tasks.progress.delay(5)
    run_until_empty()  # all seven changes are stored before get() looks
    seen = []
    assert res.get(timeout=1, on_message=seen.append) == 5
    assert [(m["status"], m["result"]) for m in seen] == progress_path(5)
    assert all(set(m) == META_KEYS and m["task_id"] == res.id for m in seen)
    assert seen[-1]["date_done"] is not None and seen[0]["date_done"] is None


@pytest.mark.django_db
def test_retries_are_reported_with_their_exception():
    res = tasks.retry_until.delay(3)
    run_until_empty()
    seen = []
    assert res.get(timeout=1, on_message=seen.append) == 2
    assert [m["status"] for m in seen] == [states.RETRY, states.RETRY, states.SUCCESS]
    assert seen[0]["result"]["exc_type"] == "ValueError"


@pytest.mark.worker
def test_a_waiting_get_sees_every_quick_update_from_a_real_worker(start_worker):
    res = tasks.progress.delay(50)  # 50 updates in a few milliseconds
    start_worker("--concurrency", "1")
    seen = []
    assert res.get(timeout=30, on_message=seen.append) == 50
    assert [(m["status"], m["result"]) for m in seen] == progress_path(50)
