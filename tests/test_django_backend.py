"""Django 6's ``django.tasks`` on this app's transports and worker (``TasksBackend``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt

import django
import pytest
from django.test.utils import override_settings
from django.utils import timezone

from django_tasks import AsyncResult, states
from django_tasks.models import TaskResult
from tests.conftest import wait_until
from tests.taskapp.models import Run

if django.VERSION < (6, 0):
    pytestmark = pytest.mark.skip(reason="django.tasks needs Django 6")
else:
    from django.tasks import TaskResultStatus, default_task_backend, task_backends
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist, TaskResultMismatch

    from tests.taskapp import dtasks

    pytestmark = pytest.mark.django_db(transaction=True)


def run_coroutine(coroutine):
    """Run ``coroutine`` in a thread of its own: an event loop may be running in this one
    already (Playwright's, after the browser tests), and then neither asyncio.run nor
    async_to_sync works here."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def finished(result, timeout=30.0):
    def done():
        result.refresh()
        return result.is_finished

    wait_until(done, timeout=timeout, what=f"{result.task.module_path} to finish")
    return result


def test_the_backend_has_the_capabilities_of_the_contract():
    backend = task_backends["default"]
    assert type(backend).__name__ == "TasksBackend"
    assert backend.supports_defer and backend.supports_priority
    assert backend.supports_get_result and backend.supports_async_task


def test_an_enqueued_task_is_a_row_run_by_runworker(start_worker):
    result = dtasks.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY and result.enqueued_at is not None
    row = TaskResult.objects.get(task_id=result.id)
    assert row.task_name == "tests.taskapp.dtasks.add" and row.state == states.PENDING
    start_worker("-c", "1")
    finished(result)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.started_at is not None and result.finished_at >= result.started_at
    assert result.last_attempted_at is not None
    assert len(result.worker_ids) == 1 and result.attempts == 1
    assert result.errors == []
    # The same row through this app's own API.
    assert AsyncResult(result.id).get(timeout=5) == 5
    again = dtasks.add.get_result(result.id)
    assert again.return_value == 5 and again.args == [2, 3]


def test_a_failure_has_its_error_and_traceback(start_worker):
    result = dtasks.fail.enqueue("nope")
    exits = dtasks.exits.enqueue()
    start_worker("-c", "1")
    finished(result)
    assert result.status == TaskResultStatus.FAILED
    (error,) = result.errors
    assert error.exception_class_path == "builtins.ValueError"
    assert error.exception_class is ValueError
    assert error.traceback.endswith("ValueError: nope\n"), error.traceback
    assert result.started_at >= result.enqueued_at and result.finished_at >= result.started_at
    # sys.exit() in a task fails that task; the worker goes on.
    finished(exits)
    assert exits.status == TaskResultStatus.FAILED
    assert exits.errors[0].exception_class is SystemExit
    assert exits.errors[0].traceback.endswith("SystemExit: This Task failed due to SystemExit\n")
    with pytest.raises(ValueError, match="Task failed"):
        result.return_value  # noqa: B018


def test_context_counts_real_attempts_and_async_tasks_run(start_worker):
    with_context = dtasks.attempt_and_id.enqueue(label="x")
    coroutine = dtasks.async_add.enqueue(20, 22)
    start_worker("-c", "1")
    finished(with_context)
    assert with_context.return_value == {"attempt": 1, "id": with_context.id, "label": "x"}
    assert finished(coroutine).return_value == 42


def test_signals_are_sent_where_django_sends_them(start_worker):
    from django.tasks.signals import task_enqueued

    seen = []

    def on_enqueued(sender, task_result, **kwargs):
        seen.append(task_result.id)

    task_enqueued.connect(on_enqueued)
    try:
        result = dtasks.add.enqueue(1, 1)
    finally:
        task_enqueued.disconnect(on_enqueued)
    assert seen == [result.id]
    start_worker("-c", "1")
    finished(result)
    labels = set(Run.objects.filter(task_id=result.id).values_list("label", flat=True))
    assert labels == {"started:RUNNING", "finished:SUCCESSFUL"}


def test_run_after_defers_and_priority_keeps_django_order(start_worker):
    later = dtasks.record.using(run_after=timezone.now() + dt.timedelta(seconds=3)).enqueue("late")
    low = dtasks.record.using(priority=-100).enqueue("low")
    high = dtasks.record.using(priority=100).enqueue("high")
    priorities = dict(TaskResult.objects.values_list("task_id", "priority"))
    assert (priorities[low.id], priorities[high.id], priorities[later.id]) == (0, 200, 150)
    start_worker("-c", "1")
    finished(low)
    finished(high)
    assert list(Run.objects.filter(label__in=["low", "high"]).values_list("label", flat=True)) == [
        "high",
        "low",
    ]
    later.refresh()
    if timezone.now() < later.enqueued_at + dt.timedelta(seconds=2.5):
        assert later.status == TaskResultStatus.READY  # not due yet
    finished(later, timeout=15)
    assert later.started_at >= later.enqueued_at + dt.timedelta(seconds=2.5)


def test_bad_tasks_and_ids_fail_as_django_says():
    with pytest.raises(InvalidTask, match="priority"):
        dtasks.add.using(priority=101)
    with pytest.raises(InvalidTask, match="aware"):
        dtasks.add.using(run_after=dt.datetime(2030, 1, 1))
    with pytest.raises(InvalidTask, match="whitespace"):
        dtasks.add.using(queue_name="a b")
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result("no-such-id")
    from tests.taskapp import tasks

    ours = tasks.add.delay(1, 2)  # a django_tasks @task: not a django.tasks result
    with pytest.raises(TaskResultDoesNotExist, match="AsyncResult"):
        default_task_backend.get_result(ours.id)
    result = dtasks.add.enqueue(1, 2)
    with pytest.raises(TaskResultMismatch):
        dtasks.fail.get_result(result.id)


def test_a_result_django_cannot_store_fails_the_task(start_worker):
    result = dtasks.not_json.enqueue()
    start_worker("-c", "1")
    finished(result)
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[0].exception_class is TypeError  # as Django's own backends say
    assert "Unsupported type" in result.errors[0].traceback


def test_async_enqueue_and_get_result(start_worker):
    async def go():
        sent = await dtasks.add.aenqueue(4, 5)
        return sent

    result = run_coroutine(go())
    start_worker("-c", "1")
    finished(result)

    async def read():
        return await dtasks.add.aget_result(result.id)

    assert run_coroutine(read()).return_value == 9


def test_queues_are_validated_on_enqueue():
    with override_settings(
        TASKS={"default": {"BACKEND": "django_tasks.backend.TasksBackend", "QUEUES": ["q1"]}}
    ):
        with pytest.raises(InvalidTask, match="Queue 'unknown' is not valid for backend"):
            dtasks.add.using(queue_name="unknown").enqueue(1, 2)
        with pytest.raises(InvalidTask, match="Queue 'unknown' is not valid for backend"):
            run_coroutine(dtasks.add.using(queue_name="unknown").aenqueue(1, 2))


def test_bad_queues_in_tasks_settings_are_check_errors():
    with override_settings(
        TASKS={"default": {"BACKEND": "django_tasks.backend.TasksBackend", "QUEUES": ["a b"]}}
    ):
        errors = task_backends["default"].check()
    assert [e.id for e in errors] == ["django_tasks.E060"]


def test_a_task_enqueued_in_a_rolled_back_transaction_is_never_sent():
    from django.db import transaction

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), transaction.atomic():
        result = dtasks.add.enqueue(1, 1)
        raise Rollback
    assert not TaskResult.objects.filter(task_id=result.id).exists()


def test_enqueue_as_records_the_owner_the_api_lets_in(django_user_model):
    from django_tasks.backend import enqueue_as

    user = django_user_model.objects.create_user("ada", password="x")
    with enqueue_as(user):
        owned = dtasks.add.enqueue(1, 2)
    anonymous = dtasks.add.enqueue(1, 2)
    owners = dict(TaskResult.objects.values_list("task_id", "owner_id"))
    assert owners[owned.id] == user.pk and owners[anonymous.id] is None
