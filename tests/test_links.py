"""link / link_error: callbacks get the result, errbacks run after the final failure only."""

import datetime as dt

import pytest
from django.utils import timezone

from django_tasks.testing import run_until_empty
from tests.taskapp import tasks
from tests.taskapp.models import Run

pytestmark = pytest.mark.django_db


def drain():
    while run_until_empty():
        pass


def labels():
    return sorted(Run.objects.values_list("label", flat=True))


def test_link_gets_the_result_prepended():
    res = tasks.add.apply_async((2, 2), link=tasks.record.s())
    drain()
    assert res.get(timeout=1) == 4
    assert labels() == ["4"]


def test_immutable_link_and_a_list_of_links():
    tasks.add.apply_async((2, 2), link=[tasks.record.si("fixed"), tasks.add.s(10)])
    drain()
    assert labels() == ["fixed"]
    from django_tasks.models import TaskResult

    assert TaskResult.objects.filter(task_name="tests.taskapp.tasks.add", result=14).exists()


def test_errback_with_three_free_parameters_is_called_in_the_worker():
    res = tasks.fail.apply_async(("x",), link_error=tasks.on_error.s(), link=tasks.record.s())
    drain()
    assert res.failed()
    assert Run.objects.get().task_id == res.id
    assert labels() == ["errback:CustomError:True"]


def test_other_errbacks_are_sent_with_the_failed_task_id():
    res = tasks.fail.apply_async(link_error=tasks.record_failed_id.s())
    drain()
    assert list(Run.objects.values_list("task_id", "label")) == [(res.id, "errback-task")]


def test_errbacks_run_once_after_the_last_retry_only():
    res = tasks.always_retry.apply_async(link_error=tasks.on_error.s())
    drain()
    assert res.failed()
    from django_tasks.models import TaskResult

    path = [state for state, _ in TaskResult.objects.get(task_id=res.id).state_history()]
    assert path == ["PENDING", "RETRY", "RETRY", "FAILURE"]
    assert labels() == ["errback:ConnectionError:True"]


def test_no_errbacks_on_revoke_or_expiry():
    revoked = tasks.add.apply_async((1, 1), link_error=tasks.on_error.s())
    revoked.revoke()
    tasks.add.apply_async(
        (1, 1), link_error=tasks.on_error.s(), expires=timezone.now() - dt.timedelta(seconds=1)
    )
    drain()
    assert not Run.objects.exists()


def test_a_failing_errback_does_not_change_the_parent_or_stop_the_worker():
    res = tasks.fail.apply_async(link_error=tasks.broken_errback.s())
    after = tasks.add.delay(1, 1)
    drain()
    assert res.failed()
    assert isinstance(res.result, tasks.CustomError)
    assert after.get(timeout=1) == 2


def test_links_in_eager_mode(settings):
    settings.DJANGO_TASKS = {"TASK_ALWAYS_EAGER": True}
    assert tasks.add.apply_async((1, 2), link=tasks.record.s()).get() == 3
    tasks.fail.apply_async(link_error=tasks.on_error.s())
    assert labels() == ["3", "errback:CustomError:True"]
