"""Calling: __call__, delay, apply_async and its options, on_commit, eager mode."""

import datetime as dt
import zoneinfo

import pytest
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import EncodeError

from django_tasks import AsyncResult, EagerResult, states
from django_tasks.models import TaskResult
from tests.conftest import on_broker
from tests.taskapp import tasks

pytestmark = pytest.mark.django_db


def row(result):
    return TaskResult.objects.get(task_id=result.id)


def test_calling_the_task_runs_it_here_and_sends_nothing():
    assert tasks.add(2, 2) == 4
    assert not TaskResult.objects.exists()


def test_delay_stores_a_pending_task_and_returns_its_result():
    res = tasks.add.delay(2, 2)
    assert isinstance(res, AsyncResult)
    assert res.exists()
    assert res.state == states.PENDING
    stored = row(res)
    assert (stored.task_name, stored.args, stored.kwargs) == ("tests.taskapp.tasks.add", [2, 2], {})
    assert stored.queue == "default"
    assert stored.lease_token is None


def test_every_call_gets_a_unique_uuid_unless_task_id_is_given():
    ids = {tasks.add.delay(1, 1).id for _ in range(5)}
    assert len(ids) == 5
    assert all(len(i) == 36 for i in ids)
    assert tasks.add.apply_async((1, 1), task_id="my-id").id == "my-id"
    with pytest.raises(ValueError, match="my-id"):
        tasks.add.apply_async((1, 1), task_id="my-id")


def test_apply_async_options_are_stored():
    res = tasks.add.apply_async(
        (1,), {"y": 2}, queue="lopri", priority=7, headers={"trace": "abc"}, ignore_result=True
    )
    stored = row(res)
    assert (stored.args, stored.kwargs) == ([1], {"y": 2})
    assert (stored.queue, stored.priority) == ("lopri", 7)
    assert stored.options == {"headers": {"trace": "abc"}, "ignore_result": True}


def test_countdown_and_eta_set_the_earliest_run_time():
    before = timezone.now()
    res = tasks.add.apply_async((1, 1), countdown=10)
    assert row(res).run_after >= before + dt.timedelta(seconds=10)

    when = timezone.now() + dt.timedelta(hours=1)
    assert row(tasks.add.apply_async((1, 1), eta=when)).run_after == when


def test_naive_eta_is_read_in_the_current_time_zone():
    naive = dt.datetime(2030, 1, 1, 12, 0)
    with timezone.override(zoneinfo.ZoneInfo("Europe/Paris")):
        res = tasks.add.apply_async((1, 1), eta=naive)
    assert row(res).run_after == dt.datetime(2030, 1, 1, 11, 0, tzinfo=dt.UTC)


def test_countdown_with_eta_is_an_error():
    with pytest.raises(ValueError, match="countdown or eta"):
        tasks.add.apply_async((1, 1), countdown=1, eta=timezone.now())
    assert not TaskResult.objects.exists()


def test_expires_in_seconds_or_as_datetime():
    before = timezone.now()
    assert row(tasks.add.apply_async((1, 1), expires=60)).expires >= before + dt.timedelta(
        seconds=60
    )
    when = timezone.now() + dt.timedelta(minutes=5)
    assert row(tasks.add.apply_async((1, 1), expires=when)).expires == when


def test_arguments_that_do_not_fit_the_signature_raise_type_error_at_call_time():
    with pytest.raises(TypeError, match="tests.taskapp.tasks.add"):
        tasks.add.delay(1)
    with pytest.raises(TypeError):
        tasks.add.apply_async((1, 2, 3))
    with pytest.raises(TypeError):
        tasks.add.apply_async((1,), {"z": 2})
    assert not TaskResult.objects.exists()


def test_typing_false_defers_the_check_to_the_worker():
    res = tasks.untyped.delay(1, 2, 3)
    assert res.exists()


def test_unencodable_arguments_raise_encode_error_at_call_time():
    with pytest.raises(EncodeError, match="tests.taskapp.tasks.add"):
        tasks.add.delay(object(), 1)
    assert not TaskResult.objects.exists()


def test_unknown_call_option_is_an_error_naming_it():
    with pytest.raises(TypeError, match="'routing_key'"):
        tasks.add.apply_async((1, 1), routing_key="x")


@pytest.mark.parametrize(
    ("options", "culprit"),
    [
        ({"priority": 256}, "priority"),
        ({"serializer": "nope"}, "serializer"),
        ({"compression": "nope"}, "compression"),
        ({"countdown": "soon"}, "countdown"),
        ({"retry_policy": {"max_retries": 1, "interval": 2}}, "interval"),
        ({"soft_time_limit": 5, "time_limit": 1}, "soft_time_limit"),
        ({"link": "not a signature"}, "link"),
    ],
)
def test_bad_call_options_are_errors_naming_the_option(options, culprit):
    with pytest.raises((TypeError, ValueError), match=culprit):
        tasks.add.apply_async((1, 1), **options)
    assert not TaskResult.objects.exists()


def test_args_must_be_a_sequence():
    with pytest.raises(TypeError, match="args must be a list or tuple"):
        tasks.add.apply_async("12")


def test_other_serializers_and_compression_store_an_encoded_body():
    res = tasks.add.apply_async((1, 2), serializer="msgpack")
    stored = row(res)
    assert stored.args is None and stored.content_type == "application/x-msgpack"
    assert bytes(stored.body)

    big = "x" * 1_000_000  # 1 MB, repetitive
    res = tasks.add.apply_async((big, ""), compression="zlib")
    stored = row(res)
    assert stored.options == {"compression": "zlib"}
    assert len(bytes(stored.body)) < 10_000


def test_routes_pick_the_queue_unless_the_call_or_task_says_otherwise(settings):
    settings.DJANGO_TASKS = {
        "TASK_ROUTES": {
            "tests.taskapp.tasks.add": {"queue": "math"},
            "tests.taskapp.tasks.*": {"queue": "other"},
        }
    }
    assert row(tasks.add.delay(1, 1)).queue == "math"
    assert row(tasks.fail.delay()).queue == "other"
    assert row(tasks.add.apply_async((1, 1), queue="explicit")).queue == "explicit"


def test_default_queue_setting(settings):
    settings.DJANGO_TASKS = {"TASK_DEFAULT_QUEUE": "celery"}
    assert row(tasks.add.delay(1, 1)).queue == "celery"


def test_owner_is_recorded(django_user_model):
    user = django_user_model.objects.create_user("ann")
    assert row(tasks.add.apply_async((1, 1), owner=user)).owner == user


class TestOnCommit:
    pytestmark = pytest.mark.django_db(transaction=True)

    def test_sent_only_when_the_transaction_commits(self):
        with transaction.atomic():
            res = tasks.add.delay_on_commit(1, 1)
            assert isinstance(res, AsyncResult) and res.id
            # A broker transport writes the row here (the outbox) and publishes after commit.
            assert res.exists() is on_broker()
            assert not TaskResult.objects.filter(task_id=res.id, dispatched=True).exists()
        assert TaskResult.objects.get(task_id=res.id).dispatched

    def test_never_sent_when_the_transaction_rolls_back(self):
        class Abort(Exception):
            pass

        with pytest.raises(Abort), transaction.atomic():
            res = tasks.add.apply_async((1, 1), on_commit=True)
            raise Abort
        assert not res.exists()
        assert not TaskResult.objects.exists()

    def test_bad_arguments_still_fail_at_call_time(self):
        with pytest.raises(TypeError), transaction.atomic():
            tasks.add.delay_on_commit(1)


class TestEager:
    @pytest.fixture(autouse=True)
    def _eager(self, settings):
        settings.DJANGO_TASKS = {"TASK_ALWAYS_EAGER": True}

    def test_apply_async_runs_in_process_and_returns_an_eager_result(self):
        res = tasks.add.delay(2, 3)
        assert isinstance(res, EagerResult)
        assert (res.get(), res.state, res.successful()) == (5, states.SUCCESS, True)
        assert not TaskResult.objects.exists()

    def test_arguments_and_results_take_the_json_round_trip(self):
        res = tasks.add.delay((1, 2), (3,))
        assert res.get() == [1, 2, 3]

    def test_failure_is_raised_by_get_and_kept(self):
        res = tasks.fail.delay("bad")
        assert res.failed()
        with pytest.raises(tasks.CustomError, match="bad"):
            res.get()
        assert isinstance(res.get(propagate=False), tasks.CustomError)
        assert "CustomError" in res.traceback

    def test_request_says_eager(self):
        info = tasks.request_info.delay().get()
        assert info["is_eager"] is True and info["retries"] == 0

    def test_retries_run_again_at_once(self):
        assert tasks.retry_until.delay(3).get() == 2
        with pytest.raises(ConnectionError, match="attempt 3"):
            tasks.always_retry.delay().get()

    def test_bad_arguments_still_raise(self):
        with pytest.raises(TypeError):
            tasks.add.delay(1)
