"""Task.retry options and automatic retries (autoretry_for, backoff, jitter)."""

import datetime as dt

import pytest
from django.utils import timezone

from django_tasks import states
from django_tasks.models import TaskResult
from django_tasks.testing import run_until_empty
from tests.taskapp import tasks

pytestmark = pytest.mark.django_db


def retry_delay(row: TaskResult) -> float:
    """Seconds from when the last retry was recorded to when it is due.

    Measured from the ``RETRY`` history row rather than from before the worker ran, so
    time spent waiting for the message (slow on a busy broker) does not count.
    """
    retried_at = row.history.filter(state=states.RETRY).latest("at", "id").at
    return (row.run_after - retried_at).total_seconds()


def run_retries(res, count):
    """Run the task ``count`` times, bringing each retry's run time forward; return delays."""
    delays = []
    for _ in range(count):
        assert run_until_empty() == 1
        row = TaskResult.objects.get(task_id=res.id)
        if row.state != states.RETRY:
            break
        delays.append(round(retry_delay(row)))
        TaskResult.objects.filter(pk=row.pk).update(run_after=timezone.now())
    return delays


def test_autoretry_backs_off_exponentially_up_to_the_maximum():
    res = tasks.flaky_network.delay()
    # factor 2: 2 * 2**0, 2 * 2**1, then capped at retry_backoff_max=5
    assert run_retries(res, 5) == [2, 4, 5, 5]
    assert res.failed()
    assert isinstance(res.result, ConnectionRefusedError)
    assert res.retries == 4


def test_dont_autoretry_for_fails_at_once():
    res = tasks.flaky_network.delay("reset")
    run_until_empty()
    assert res.failed()
    assert res.retries == 0


def test_jitter_keeps_each_delay_within_zero_and_the_backoff():
    res = tasks.jittery.delay()
    checked = []
    for _ in range(4):  # max_retries=3: three retries, then the failure
        run_until_empty()
        row = TaskResult.objects.get(task_id=res.id)
        if row.state != states.RETRY:
            break
        # Retry n backs off at most 2**(n - 1) s. A jitter near zero can make the retry due
        # within the same run, so the bound follows the row's count, not the loop's. The
        # due time is fixed inside retry(), a moment before the RETRY row is written.
        assert -0.5 <= retry_delay(row) <= 2 ** (row.retries - 1)
        checked.append(row.retries)
        TaskResult.objects.filter(pk=row.pk).update(run_after=timezone.now())
    assert res.failed()
    assert res.retries == 3
    assert checked  # at least one delay was measured


def test_retry_can_change_arguments_expiry_and_headers():
    res = tasks.retry_with_options.delay("x")
    before = timezone.now()
    run_until_empty()
    assert res.get(timeout=1) == ["x-changed", {"attempt": 2}]
    row = TaskResult.objects.get(task_id=res.id)
    assert row.expires >= before + dt.timedelta(seconds=3590)


def test_retry_re_encodes_arguments_of_an_encoded_body(settings):
    settings.DJANGO_TASKS = {"ACCEPT_CONTENT": ["json", "msgpack"]}
    res = tasks.retry_with_options.apply_async(("y",), serializer="msgpack")
    run_until_empty()
    assert res.get(timeout=1) == ["y-changed", {"attempt": 2}]


def test_retry_options_are_checked():
    from django_tasks.context import Request, request_stack

    request_stack().append((tasks.fail, Request(id="x", called_directly=False)))
    try:
        with pytest.raises(TypeError, match="'routing_key'"):
            tasks.fail.retry(routing_key="x")
        with pytest.raises(ValueError, match="priority"):
            tasks.fail.retry(priority=999)
    finally:
        request_stack().pop()


class TestEager:
    @pytest.fixture(autouse=True)
    def _eager(self, settings):
        settings.DJANGO_TASKS = {"TASK_ALWAYS_EAGER": True}

    def test_autoretry_runs_again_at_once_and_counts(self):
        res = tasks.flaky_network.delay()
        assert res.failed()
        assert res.retries == 4

    def test_unstorable_return_value_is_a_failure(self):
        res = tasks.unstorable.delay()
        assert res.failed()
        assert "cannot be stored as JSON" in str(res.result)

    def test_headers_reach_the_request(self):
        assert tasks.retry_with_options.apply_async(("z",)).get() == ["z-changed", {"attempt": 2}]


@pytest.mark.django_db(transaction=True)
class TestEagerOnCommit:
    @pytest.fixture(autouse=True)
    def _eager(self, settings):
        settings.DJANGO_TASKS = {"TASK_ALWAYS_EAGER": True}

    def test_runs_when_the_transaction_commits(self):
        from django.db import transaction

        from tests.taskapp.models import Run

        with transaction.atomic():
            res = tasks.record.delay_on_commit("committed")
            assert res.state == states.PENDING
            assert not Run.objects.exists()
        assert res.get() == "committed"
        assert Run.objects.get().label == "committed"

    def test_never_runs_when_the_transaction_rolls_back(self):
        from django.db import transaction

        from tests.taskapp.models import Run

        with pytest.raises(ZeroDivisionError), transaction.atomic():
            tasks.record.delay_on_commit("rolled back")
            1 / 0  # noqa: B018
        assert not Run.objects.exists()


def test_retry_with_priority_none_keeps_the_priority():
    res = tasks.retry_variants.apply_async(("priority",), priority=7)
    while run_until_empty():
        pass
    assert res.get(timeout=1) == [["priority"], 7]


def test_retry_with_unencodable_arguments_fails_the_task():
    res = tasks.retry_variants.delay("unencodable")
    after = tasks.add.delay(1, 1)
    while run_until_empty():
        pass
    assert res.failed()
    assert "cannot be encoded" in str(res.result)
    assert after.get(timeout=1) == 2


def test_retry_can_replace_the_arguments_with_none(settings):
    res = tasks.retry_variants.delay("no-args")
    while run_until_empty():
        pass
    assert res.get(timeout=1) == [[], 0]
    settings.DJANGO_TASKS = {"TASK_ALWAYS_EAGER": True}
    assert tasks.retry_variants.delay("no-args").get() == [[], 0]
