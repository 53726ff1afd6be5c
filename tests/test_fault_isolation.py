"""A batch never shares fate: one bad task, row or process takes only itself down."""

import os
import signal
import threading
import time

import pytest
from django.db import connection, transaction

from django_tasks import states, store
from django_tasks.exceptions import EncodeError, TaskError, WorkerLostError
from django_tasks.models import TaskResult, TaskStateChange
from django_tasks.testing import run_until_empty
from django_tasks.transports import get_transport
from django_tasks.worker.recovery import settle_lost_loop
from django_tasks.worker.slots import TaskSlot
from tests.conftest import wait_until
from tests.taskapp import tasks
from tests.taskapp.models import Run

BASE_EXCEPTIONS = ["sys.exit", "KeyboardInterrupt", "BaseException"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def started(label):
    return lambda: Run.objects.filter(label=f"start:{label}").exists()


# -- outcomes that cannot be stored ---------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("kind", list(tasks.UNSTORABLE))
def test_an_unstorable_result_fails_alone_and_its_batch_mates_are_recorded(kind):
    before = tasks.add.delay(1, 1)
    bad = tasks.returns_unstorable.delay(kind)
    after = tasks.add.delay(2, 2)
    assert run_until_empty() == 3
    assert before.get(timeout=1) == 2
    assert after.get(timeout=1) == 4
    assert bad.state == states.FAILURE
    with pytest.raises(EncodeError, match="returns_unstorable") as raised:
        bad.get(timeout=1)
    assert "cannot be stored" in str(raised.value)
    assert TaskResult.objects.get(task_id=bad.id).history.get().state == states.FAILURE


@pytest.mark.parametrize("kind", list(tasks.UNSTORABLE))
def test_eager_mode_refuses_the_same_results(kind):
    result = tasks.returns_unstorable.apply((kind,))
    assert result.state == states.FAILURE
    assert isinstance(result.result, EncodeError)


@pytest.mark.django_db
def test_an_exception_whose_str_raises_is_recorded_and_harms_nobody():
    before = tasks.add.delay(1, 1)
    bad = tasks.raise_unprintable.delay()
    after = tasks.add.delay(2, 2)
    assert run_until_empty() == 3
    assert (before.get(timeout=1), after.get(timeout=1)) == (2, 4)
    row = TaskResult.objects.get(task_id=bad.id)
    assert row.state == states.FAILURE
    assert row.result["exc_type"] == "UnprintableError"
    assert row.result["exc_message"] == ["a message nobody can print"]
    assert "UnprintableError" in row.traceback


@pytest.mark.django_db
@pytest.mark.parametrize("kind", BASE_EXCEPTIONS)
def test_base_exceptions_are_the_tasks_failure_and_the_loop_goes_on(kind):
    bad = tasks.exits.delay(kind, kind)
    after = tasks.add.delay(2, 2)
    assert run_until_empty() == 2
    assert after.get(timeout=1) == 4
    row = TaskResult.objects.get(task_id=bad.id)
    assert row.state == states.FAILURE
    assert row.result["exc_type"] in ("SystemExit", "KeyboardInterrupt", "BaseException")


@pytest.mark.worker
@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_sys_exit_in_a_task_fails_it_and_the_worker_goes_on(start_worker, pool):
    before = tasks.record.delay("before")
    bad = tasks.exits.delay("sys.exit", "exit")
    after = tasks.record.delay("after")
    worker = start_worker("--burst", "--pool", pool, "--concurrency", "1")
    assert worker.wait(60) == 0, worker.output()
    assert (before.get(timeout=1), after.get(timeout=1)) == ("before", "after")
    assert bad.state == states.FAILURE
    assert TaskResult.objects.get(task_id=bad.id).result["exc_type"] == "SystemExit"


# -- rows that cannot be run ----------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("options", [[1, 2], "oops", 7])
def test_a_row_whose_options_are_not_an_object_fails_alone(options):
    before = tasks.add.delay(1, 1)
    bad = tasks.add.delay(5, 5)
    after = tasks.add.delay(2, 2)
    TaskResult.objects.filter(task_id=bad.id).update(options=options)
    assert run_until_empty() == 3
    assert (before.get(timeout=1), after.get(timeout=1)) == (2, 4)
    with pytest.raises(TaskError, match="options is a"):
        bad.get(timeout=1)


# -- processes that die ---------------------------------------------------------------------------


@pytest.mark.worker
def test_a_child_that_dies_takes_only_its_running_task(start_worker):
    """``os._exit()`` in a task kills its prefork child. The task the child finished before
    keeps its outcome (from the child's journal), the running task gets the lost-worker rule,
    and the task it had claimed but not started is queued again and runs once."""
    before = tasks.record.delay("before")
    dying = tasks.exits.delay("os._exit", "dying")
    after = tasks.record.delay("after")
    worker = start_worker("--concurrency", "1")
    try:
        assert after.get(timeout=30) == "after"
        assert before.get(timeout=1) == "before"
        wait_until(dying.ready, what="the dead child's task to be settled")
    finally:
        print(worker.output())
    assert dying.state == states.FAILURE
    assert isinstance(dying.result, WorkerLostError)
    assert Run.objects.filter(label="before").count() == 1
    assert Run.objects.filter(label="after").count() == 1
    after_row = TaskResult.objects.get(task_id=after.id)
    assert states.FAILURE not in [c.state for c in after_row.history.all()]
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


@pytest.mark.worker
def test_an_acks_late_task_that_kills_its_process_is_redelivered_a_bounded_number_of_times(
    start_worker,
):
    res = tasks.kills_its_process.apply_async(("oom",), link_error=tasks.record_failed_id.s())
    worker = start_worker("--concurrency", "1")
    try:
        wait_until(res.ready, timeout=60, what="the task to fail for good")
    finally:
        print(worker.output())
    assert res.state == states.FAILURE
    with pytest.raises(WorkerLostError, match="WORKER_LOST_MAX_REDELIVERIES"):
        res.get(timeout=1)
    assert Run.objects.filter(label="start:oom").count() == 4  # the first run + 3 redeliveries
    row = TaskResult.objects.get(task_id=res.id)
    assert TaskStateChange.objects.filter(task=row, state=states.PENDING).count() == 3
    wait_until(
        lambda: Run.objects.filter(task_id=res.id, label="errback-task").exists(),
        what="the errback",
    )
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


@pytest.mark.worker
def test_a_killed_worker_lets_its_children_finish_and_give_back_the_rest(start_worker):
    """SIGKILL of the worker's main process: its child finishes the task it is running,
    records it, and gives back the tasks it had claimed but not started (never fails them)."""
    running = tasks.sleep_then_record.delay(1.5, "running")
    waiting = [tasks.record.delay(f"waiting-{i}") for i in range(3)]
    worker = start_worker("--concurrency", "1")
    wait_until(started("running"), what="the task to start")
    worker.signal(signal.SIGKILL)  # the main process only, as `kill -9 <pid>` does
    wait_until(running.ready, timeout=30, what="the child to finish the running task")
    assert running.get(timeout=1) == "running"
    child = Run.objects.get(label="start:running").pid
    wait_until(lambda: not _alive(child), timeout=15, what="the orphaned child to exit")
    for result in waiting:
        row = wait_until(
            lambda r=result: TaskResult.objects.filter(
                task_id=r.id, lease_token__isnull=True
            ).first(),
            what="the unstarted tasks to be given back",
        )
        assert row.state == states.PENDING
    assert not Run.objects.filter(label__startswith="waiting-").exists()
    second = start_worker("--burst", "--concurrency", "1")
    assert second.wait(60) == 0
    assert [r.get(timeout=1) for r in waiting] == [f"waiting-{i}" for i in range(3)]


@pytest.mark.django_db
@pytest.mark.database_transport
def test_a_task_that_ended_but_was_not_journaled_is_not_handed_on_as_unstarted():
    """A child killed after a task ended, before its outcome reached the journal: that task
    ran, so it gets the lost-worker rule; only the task never begun is queued again."""
    ran = tasks.record.delay("ran")
    waiting = tasks.record.delay("waiting")
    first, _ = get_transport().claim(store.Claim(["default"], 10, "dead-child", 30, "x:1"))
    slot = TaskSlot()
    slot.begin(first.pk, None)
    slot.end()  # it ran; the child died before journaling its outcome
    settle_lost_loop("dead-child", slot)
    assert isinstance(ran.result, WorkerLostError)
    row = TaskResult.objects.get(task_id=waiting.id)
    assert (row.state, row.lease_token) == (states.PENDING, None)
    assert run_until_empty() == 1
    assert waiting.get(timeout=1) == "waiting"


@pytest.mark.django_db(transaction=True)
def test_renewing_leases_never_waits_for_a_row_being_written():
    """The heartbeat skips rows another transaction holds (an outcome being written), so it
    can never deadlock with that write."""
    if connection.vendor != "postgresql":
        pytest.skip("row locks that can deadlock: PostgreSQL")
    tasks.record.delay("busy")
    # The store's claim, not a transport's: a broker transport would consume the message
    # and keep consuming after the test.
    (claimed,) = store.claim(store.Claim(["default"], 10, "token", 30, "x:1"))
    locked, release = threading.Event(), threading.Event()

    def hold_the_row():
        with transaction.atomic():
            TaskResult.objects.select_for_update().get(pk=claimed.pk)
            locked.set()
            release.wait(10)
        connection.close()

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        assert store.renew(["token"], 60) == 0  # skipped, not waited for
        assert time.monotonic() - started < 2
    finally:
        release.set()
        holder.join(10)
    assert store.renew(["token"], 60) == 1
