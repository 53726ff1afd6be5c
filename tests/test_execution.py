"""The worker's execution path, run in-process: outcomes, states, history, bad messages."""

import datetime as dt

import pytest
from django.utils import timezone

from django_tasks import AsyncResult, states
from django_tasks.exceptions import TaskError, TaskRevokedError
from django_tasks.models import TaskResult
from django_tasks.testing import run_until_empty
from tests.taskapp import tasks
from tests.taskapp.models import Run

pytestmark = pytest.mark.django_db


def history(res):
    return [state for state, _ in TaskResult.objects.get(task_id=res.id).state_history()]


def test_success_is_stored_with_its_history():
    res = tasks.add.delay(2, 2)
    assert run_until_empty() == 1
    assert res.get(timeout=1) == 4
    assert (res.state, res.ready(), res.successful(), res.failed()) == (
        "SUCCESS",
        True,
        True,
        False,
    )
    assert history(res) == ["PENDING", "SUCCESS"]
    stored = TaskResult.objects.get(task_id=res.id)
    assert stored.date_done and stored.date_started and stored.worker
    assert stored.lease_token is None


def test_failure_is_reraised_as_its_own_type_with_the_remote_traceback():
    res = tasks.fail.delay("broken")
    run_until_empty()
    assert res.failed()
    with pytest.raises(tasks.CustomError, match="broken") as info:
        res.get(timeout=1)
    assert "Traceback" in info.value.remote_traceback
    assert "raise CustomError(message)" in res.traceback
    assert isinstance(res.get(propagate=False), tasks.CustomError)
    assert isinstance(res.result, tasks.CustomError)


def test_an_exception_that_cannot_be_imported_becomes_task_error():
    res = tasks.raise_non_importable.delay()
    run_until_empty()
    with pytest.raises(TaskError, match="nowhere.at.all.LocalOnlyError: gone"):
        res.get(timeout=1)


def test_a_type_error_stays_a_type_error():
    res = tasks.untyped.delay(1, 2)  # typing=False: the worker finds the mismatch
    run_until_empty()
    with pytest.raises(TypeError):
        res.get(timeout=1)


def test_retry_keeps_the_id_counts_retries_and_records_each_step():
    res = tasks.retry_until.delay(3)
    while run_until_empty():
        pass
    assert res.get(timeout=1) == 2
    assert res.retries == 2
    assert history(res) == ["PENDING", "RETRY", "RETRY", "SUCCESS"]
    assert TaskResult.objects.count() == 1


def test_retries_exhausted_raise_the_exception_and_fail():
    res = tasks.always_retry.delay()
    while run_until_empty():
        pass
    assert history(res) == ["PENDING", "RETRY", "RETRY", "FAILURE"]
    with pytest.raises(ConnectionError, match="attempt 3"):
        res.get(timeout=1)


def test_retry_waits_for_its_countdown():
    before = timezone.now()
    res = tasks.retry_later.delay()
    assert run_until_empty() == 1
    assert res.state == states.RETRY
    assert isinstance(res.result, ValueError)
    assert TaskResult.objects.get(task_id=res.id).run_after >= before + dt.timedelta(seconds=60)
    assert run_until_empty() == 0


def test_track_started_and_custom_states_are_recorded():
    res = tasks.progress.delay(3)
    run_until_empty()
    assert res.get(timeout=1) == 3
    assert history(res) == ["PENDING", "STARTED", "PROGRESS", "PROGRESS", "PROGRESS", "SUCCESS"]
    assert TaskResult.objects.get(task_id=res.id).meta == {"current": 3, "total": 3}


def test_custom_state_is_what_pollers_see():
    res = tasks.add.delay(1, 1)
    tasks.progress.update_state(task_id=res.id, state="PROGRESS", meta={"current": 1})
    assert res.state == "PROGRESS"
    assert res.info == {"current": 1}
    assert not res.ready()


def test_unknown_task_name_fails_and_the_worker_goes_on():
    bad = tasks.add.delay(1, 1)
    TaskResult.objects.filter(task_id=bad.id).update(task_name="no.such.task")
    good = tasks.add.delay(2, 2)
    assert run_until_empty() == 2
    assert bad.state == states.FAILURE
    assert "no.such.task" in str(bad.result)
    assert good.get(timeout=1) == 4


@pytest.mark.database_transport
@pytest.mark.parametrize(
    "damage",
    [
        {"args": {"not": "a list"}},
        {"args": None, "kwargs": None, "body": b"\x00garbage", "content_type": "application/json"},
        {
            "args": None,
            "kwargs": None,
            "body": b"\x80\x04",
            "content_type": "application/x-python-serialize",
        },
    ],
    ids=["args-not-a-list", "garbage-body", "disallowed-pickle"],
)
def test_malformed_rows_fail_with_a_reason_and_the_worker_goes_on(damage):
    bad = tasks.add.delay(1, 1)
    TaskResult.objects.filter(task_id=bad.id).update(**damage)
    good = tasks.add.delay(2, 2)
    assert run_until_empty() == 2
    assert bad.state == states.FAILURE
    assert (
        TaskResult.objects.get(task_id=bad.id).history.get().detail.startswith("malformed message")
    )
    assert good.get(timeout=1) == 4


def test_msgpack_and_compressed_arguments_are_decoded_by_the_worker(settings):
    settings.DJANGO_TASKS = {"ACCEPT_CONTENT": ["json", "msgpack"]}
    packed = tasks.add.apply_async((1, 2), serializer="msgpack")
    squeezed = tasks.add.apply_async(("a" * 10_000, "b"), compression="bzip2")
    run_until_empty()
    assert packed.get(timeout=1) == 3
    assert squeezed.get(timeout=1) == "a" * 10_000 + "b"


def test_a_serializer_the_worker_does_not_accept_is_a_failure():
    res = tasks.add.apply_async((1, 2), serializer="msgpack")
    run_until_empty()
    assert res.failed()
    assert "ACCEPT_CONTENT" in str(res.result)


def test_revoked_waiting_task_is_never_run():
    res = tasks.record.delay("revoked")
    assert res.revoke()
    assert res.state == states.REVOKED
    run_until_empty()
    assert not Run.objects.exists()
    with pytest.raises(TaskRevokedError):
        res.get(timeout=1)
    assert history(res) == ["PENDING", "REVOKED"]


def test_expired_task_is_revoked_not_run():
    res = tasks.record.apply_async(("late",), expires=timezone.now() - dt.timedelta(seconds=1))
    run_until_empty()
    assert not Run.objects.exists()
    assert res.state == states.REVOKED
    assert TaskResult.objects.get(task_id=res.id).meta == {"reason": "expired"}


def test_delayed_task_is_not_run_early():
    res = tasks.add.apply_async((1, 1), countdown=60)
    assert run_until_empty() == 0
    assert res.state == states.PENDING
    TaskResult.objects.filter(task_id=res.id).update(run_after=timezone.now())
    assert run_until_empty() == 1


def test_higher_priority_runs_first_and_queues_are_separate():
    low = tasks.record.apply_async(("low",), priority=1)
    high = tasks.record.apply_async(("high",), priority=9)
    other = tasks.record.apply_async(("other",), queue="elsewhere")
    run_until_empty()
    assert list(Run.objects.order_by("id").values_list("label", flat=True)) == ["high", "low"]
    assert other.state == states.PENDING
    run_until_empty(["elsewhere"])
    assert other.successful() and low.successful() and high.successful()


def test_ignore_result_keeps_nothing_after_success():
    res = tasks.ignored.delay()
    assert res.get(timeout=0.1) is None
    run_until_empty()
    assert not res.exists()


def test_unstorable_return_value_is_a_failure():
    res = tasks.unstorable.delay()
    run_until_empty()
    assert res.failed()
    assert "cannot be stored as JSON" in str(res.result)


def test_request_context_in_the_worker():
    res = tasks.request_info.apply_async(queue="default")
    run_until_empty()
    info = res.get(timeout=1)
    assert info == {
        "id": res.id,
        "retries": 0,
        "queue": "default",
        "is_eager": False,
        "args": [],
        "kwargs": {},
    }


def test_get_inside_a_task_raises_runtime_error():
    res = tasks.waits_on_other.delay()
    run_until_empty()
    with pytest.raises(RuntimeError, match="Never call result.get"):
        res.get(timeout=1)


def test_forget_deletes_the_result_and_its_history():
    res = tasks.add.delay(1, 1)
    run_until_empty()
    res.forget()
    assert not res.exists()
    assert res.state == states.PENDING


def test_unknown_id_reads_pending_and_does_not_exist():
    res = AsyncResult("this-id-does-not-exist")
    assert res.state == states.PENDING
    assert not res.exists()
    assert res.result is None


def test_get_times_out_on_a_task_nobody_runs():
    from django_tasks.exceptions import TimeoutError

    with pytest.raises(TimeoutError):
        tasks.add.delay(1, 1).get(timeout=0.2)


def test_on_message_sees_each_state_change_while_waiting():
    res = tasks.add.delay(1, 1)
    run_until_empty()
    seen = []
    assert res.get(timeout=1, on_message=seen.append) == 2
    assert [m["status"] for m in seen] == ["SUCCESS"]
    assert set(seen[0]) == {"task_id", "status", "result", "traceback", "date_done"}
    assert seen[0]["task_id"] == res.id and seen[0]["result"] == 2


def test_update_state_never_reopens_a_finished_task():
    res = tasks.add.delay(1, 1)
    run_until_empty()
    with pytest.raises(ValueError, match="already finished"):
        tasks.progress.update_state(task_id=res.id, state="PROGRESS", meta={})
    assert res.get(timeout=1) == 2


def test_expired_tasks_in_a_queue_nobody_reads_are_revoked_by_the_sweep():
    from django_tasks import store

    res = tasks.add.apply_async(
        (1, 1), queue="nobody", expires=timezone.now() - dt.timedelta(seconds=1)
    )
    fresh = tasks.add.apply_async((1, 1), queue="nobody", expires=60)
    assert store.revoke_expired() == 1
    assert res.state == states.REVOKED
    assert fresh.state == states.PENDING


def test_a_failing_query_in_a_task_fails_the_task_not_the_test_transaction():
    res = tasks.bad_query.delay()
    after = tasks.add.delay(1, 1)
    assert run_until_empty() == 2
    assert res.failed()
    assert "no_such_table_here" in str(res.result)
    assert after.get(timeout=1) == 2
