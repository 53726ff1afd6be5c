"""Chords under real ``runworker`` processes: two workers racing on the same chords, and a
worker killed mid-chord. The body must run exactly once, with every header result."""

import pytest

from django_tasks import chord, group, states
from django_tasks.models import TaskGroup, TaskResult
from tests.conftest import on_broker, wait_until
from tests.taskapp import tasks
from tests.taskapp.models import Run

pytestmark = pytest.mark.worker


def test_two_workers_run_each_chord_body_exactly_once(start_worker):
    chords = [
        chord((tasks.add.s(i, n) for i in range(20)), tasks.record_body.s()).apply_async()
        for n in range(30)
    ]
    for _ in range(2):
        start_worker("--concurrency", "2")
    for n, result in enumerate(chords):
        assert result.get(timeout=120) == [i + n for i in range(20)]
    bodies = Run.objects.filter(label="body:20")
    assert bodies.count() == 30
    assert set(bodies.values_list("task_id", flat=True)) == {c.id for c in chords}
    assert set(TaskGroup.objects.values_list("chord_state", "remaining")) == {("SENT", 0)}


def test_a_group_under_two_workers_runs_each_task_once(start_worker):
    g = group(tasks.record.s(str(i)) for i in range(300)).apply_async()
    for _ in range(2):
        start_worker("--concurrency", "2")
    assert g.get(timeout=120) == [str(i) for i in range(300)]
    assert Run.objects.count() == 300
    assert g.completed_count() == 300


def test_a_worker_killed_mid_chord_loses_nothing_and_runs_the_body_once(start_worker):
    labels = [str(i) for i in range(12)]
    c = chord(
        (tasks.sleep_acks_late.s(0.3, label) for label in labels), tasks.record_body.s()
    ).apply_async()
    header_ids = [r.id for r in c.parent.results]
    first = start_worker("--concurrency", "2", lease_seconds=1.5)
    wait_until(
        lambda: (
            TaskResult.objects.filter(task_id__in=header_ids, state=states.SUCCESS).count() >= 4
        ),
        timeout=60,
        what="some header tasks to finish",
    )
    first.kill_group()  # mid-chord, as a power cut would
    second = start_worker("--concurrency", "2", lease_seconds=1.5)
    try:
        assert c.get(timeout=90) == labels
    except Exception as exc:
        raise AssertionError(
            f"the chord did not finish ({exc!r}); the second worker said:\n{second.output()}"
        ) from None
    assert Run.objects.filter(label="body:12").count() == 1
    row = TaskGroup.objects.get(group_id=c.parent.id)
    assert (row.chord_state, row.remaining) == ("SENT", 0)


def test_a_chain_under_a_worker_fails_fast(start_worker):
    res = (tasks.add.s(1, 1) | tasks.fail.s() | tasks.add.s(1))()
    start_worker("--concurrency", "1")
    with pytest.raises(tasks.CustomError):
        res.get(timeout=30)
    ok = (tasks.add.s(1, 1) | tasks.add.s(2) | tasks.mul.s(3))()
    assert ok.get(timeout=30) == 12
    assert ok.parent.get(timeout=1) == 4


@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_a_body_whose_publish_is_lost_after_the_commit_is_sent_by_the_relay(monkeypatch):
    """The worker that decided the chord died between its commit and the body's publish: the
    body's row was written with the header outcome (the outbox), and the relay sends it."""
    from kombu.exceptions import OperationalError

    from django_tasks.testing import run_until_empty
    from django_tasks.transports.broker import BrokerTransport

    real_publish = BrokerTransport.publish
    lost = []

    def publish(self, message, **kwargs):
        if message["task_name"] == tasks.tsum.name and not lost:
            lost.append(message["headers"]["id"])
            raise OperationalError("the worker died before it published the body")
        return real_publish(self, message, **kwargs)

    monkeypatch.setattr(BrokerTransport, "publish", publish)
    c = chord([tasks.add.s(1, 1), tasks.add.s(2, 2)], tasks.tsum.s()).apply_async()
    while run_until_empty():
        pass
    assert lost == [c.id]
    assert c.get(timeout=10) == 6
    assert TaskResult.objects.filter(task_id=c.id).count() == 1


def test_a_worker_killed_right_after_deciding_a_chord_has_sent_its_body(start_worker, tmp_path):
    """The exact window: the last header outcome (and the body's send) committed, then the
    worker dies before anything else, a broker publish of the body included."""
    marker = tmp_path / "died"
    c = chord([tasks.add.s(1, 1), tasks.add.s(2, 2)], tasks.record_body.s()).apply_async()
    first = start_worker(
        "--concurrency",
        "1",
        lease_seconds=1.5,
        env={"DJANGO_TASKS_TEST_DIE_AFTER_CHORD": str(marker)},
    )
    wait_until(marker.exists, timeout=60, what="the worker to decide the chord and die")
    assert first.proc.wait(10) is not None
    assert TaskGroup.objects.get(group_id=c.parent.id).chord_state == "SENT"
    body = TaskResult.objects.get(task_id=c.id)  # committed with the last header outcome
    if on_broker():
        assert not body.dispatched  # its message was never published: the relay sends it
    second = start_worker("--concurrency", "1", lease_seconds=1.5)
    try:
        assert c.get(timeout=60) == [2, 4]
    except Exception as exc:
        raise AssertionError(
            f"no body ({exc!r}); the second worker said:\n{second.output()}"
        ) from None
    assert Run.objects.filter(label="body:2").count() == 1
    assert [r.get(timeout=1) for r in c.parent.results] == [2, 4]


def test_a_header_task_killed_at_its_time_limit_fails_the_chord(start_worker):
    """The worker's watchdog records that failure (not the task's own run): it counts too."""
    from django_tasks.exceptions import ChordError, TimeLimitExceeded

    slow = tasks.sleep_then_record.s(30, "slow").set(time_limit=1)
    c = chord([slow, tasks.add.s(1, 1)], tasks.record_body.s()).apply_async()
    start_worker("--concurrency", "1")
    with pytest.raises(ChordError, match=c.parent.results[0].id):
        c.get(timeout=60)
    assert isinstance(c.parent.results[0].result, TimeLimitExceeded)
    assert not Run.objects.filter(label__startswith="body").exists()


def test_a_worker_process_runs_map_starmap_and_chunks(start_worker):
    """The built-in map tasks are registered in every worker, and routed as the task they
    call (``square`` has a queue of its own)."""
    mapped = tasks.square.map([1, 2, 3]).delay()
    starred = tasks.add.starmap([(1, 2), (3, 4)]).delay()
    parts = tasks.square.chunks([(i,) for i in range(5)], 2)()
    start_worker("--concurrency", "2", "--queues", "default,squares")
    assert mapped.get(timeout=60) == [1, 4, 9]
    assert starred.get(timeout=60) == [3, 7]
    assert parts.get(timeout=60) == [[0, 1], [4, 9], [16]]
