"""Bad input at the calling edge: refused at call time, naming the option or the argument,
alike for delay(), apply_async(), apply() and eager mode; nothing is stored."""

import contextlib
import datetime as dt
import math

import pytest
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import EncodeError

from django_tasks import group, task
from django_tasks.context import Request, request_stack
from django_tasks.exceptions import ImproperlyConfiguredTask
from django_tasks.models import TaskResult
from django_tasks.registry import tasks_registry
from tests.taskapp import tasks

pytestmark = pytest.mark.django_db

NAN, INF = math.nan, math.inf

#: Values no supported database stores (PostgreSQL's jsonb/text refuse them everywhere).
UNSTORABLE = {
    "NUL": ("a\x00b", "NUL character"),
    "lone surrogate": ("\ud800", "lone surrogate"),
    "lone low surrogate": ("x\udfff", "lone surrogate"),
    "NaN": (NAN, "nan"),
    "infinity": (INF, "inf"),
    "-infinity": (-INF, "-inf"),
}


def _send(mode, args=(), kwargs=None, **options):
    """Call ``tasks.add`` the way ``mode`` says."""
    kwargs = kwargs or {}
    if mode == "delay":
        assert not options
        return tasks.add.delay(*args, **kwargs)
    if mode == "apply_async":
        return tasks.add.apply_async(args, kwargs, **options)
    if mode == "apply":
        return tasks.add.apply(args, kwargs, **options)
    if mode == "on_commit":
        with transaction.atomic():
            return tasks.add.apply_async(args, kwargs, on_commit=True, **options)
    raise AssertionError(mode)


MODES = ["delay", "apply_async", "apply", "on_commit"]


@pytest.fixture(params=[False, True], ids=["sent", "eager"])
def eager(request, settings):
    settings.DJANGO_TASKS = {"TASK_ALWAYS_EAGER": request.param}
    return request.param


@pytest.fixture
def nothing_stored():
    yield
    assert not TaskResult.objects.exists()


# -- 1. arguments, headers and links that no database can store --------------------------------


@pytest.mark.usefixtures("eager", "nothing_stored")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("value", "problem"), UNSTORABLE.values(), ids=UNSTORABLE)
class TestUnstorableArguments:
    def test_in_args(self, mode, value, problem):
        with pytest.raises(
            EncodeError, match=r"'tests\.taskapp\.tasks\.add'.*args\[1\]\[1\]"
        ) as info:
            _send(mode, (1, ["ok", value]))
        assert problem in str(info.value)

    def test_in_kwargs(self, mode, value, problem):
        with pytest.raises(EncodeError, match=r"kwargs\['y'\]") as info:
            _send(mode, (1,), {"y": value})
        assert problem in str(info.value)


@pytest.mark.usefixtures("eager", "nothing_stored")
@pytest.mark.parametrize("mode", ["apply_async", "apply", "on_commit"])
@pytest.mark.parametrize(("value", "problem"), UNSTORABLE.values(), ids=UNSTORABLE)
class TestUnstorableOptions:
    def test_in_headers(self, mode, value, problem):
        with pytest.raises(
            EncodeError, match=r"add\.apply(_async)?\(\): headers\['trace'\]"
        ) as info:
            _send(mode, (1, 2), headers={"trace": value})
        assert problem in str(info.value)

    def test_in_a_link(self, mode, value, problem):
        with pytest.raises(EncodeError, match=r"link\['args'\]\[0\]") as info:
            _send(mode, (1, 2), link=tasks.add.s(value))
        assert problem in str(info.value)

    def test_in_a_list_of_errbacks(self, mode, value, problem):
        errbacks = [tasks.record_failed_id.s(), tasks.add.s(y=value)]
        with pytest.raises(EncodeError, match=r"link_error\[1\]\['kwargs'\]\['y'\]") as info:
            _send(mode, (1, 2), link_error=errbacks)
        assert problem in str(info.value)


def test_text_that_only_looks_unstorable_is_sent_as_it_is():
    """An emoji (a surrogate pair in JSON), accents and the words NaN and Infinity are
    ordinary text, sent alone or in a group."""
    text = "😀 é NaN Infinity \\u0000"
    sent = [
        tasks.add.delay(text, y=[text]),
        *group(tasks.add.s(text, y=[text]) for _ in range(3)).apply_async().results,
    ]
    for result in sent:
        row = TaskResult.objects.get(task_id=result.id)
        assert (row.args, row.kwargs) == ([text], {"y": [text]})


def test_an_unstorable_key_is_named(nothing_stored):
    with pytest.raises(EncodeError, match=r"a key of kwargs\['y'\] holds a NUL"):
        tasks.add.delay(1, y={"a\x00": 1})


def test_a_link_with_an_unknown_option_is_refused(nothing_stored):
    link = tasks.add.s(1)
    link["options"]["routing_key"] = "x"
    with pytest.raises(TypeError, match=r"link: unknown option\(s\) 'routing_key'"):
        tasks.add.apply_async((1, 2), link=link)


def test_a_link_with_a_bad_countdown_is_refused(nothing_stored):
    with pytest.raises(ValueError, match=r"link: countdown"):
        tasks.add.apply_async((1, 2), link=tasks.add.signature((1,), countdown=1e12))


# -- 2. numbers of seconds: finite, and within 100 years ---------------------------------------

BAD_SECONDS = {"nan": NAN, "inf": INF, "-inf": -INF, "1e12": 1e12}


@pytest.mark.usefixtures("eager", "nothing_stored")
@pytest.mark.parametrize("mode", ["apply_async", "apply", "on_commit"])
@pytest.mark.parametrize("value", BAD_SECONDS.values(), ids=BAD_SECONDS)
@pytest.mark.parametrize(
    ("option", "culprit"),
    [
        ("countdown", "countdown"),
        ("expires", "expires"),
        ("time_limit", "time_limit"),
        ("soft_time_limit", "soft_time_limit"),
        ("retry_policy.interval_start", "retry_policy interval_start"),
        ("retry_policy.interval_step", "retry_policy interval_step"),
        ("retry_policy.interval_max", "retry_policy interval_max"),
    ],
)
def test_seconds_must_be_finite_and_sane(mode, value, option, culprit):
    if option.startswith("retry_policy."):
        options = {"retry_policy": {option.split(".")[1]: value}}
    else:
        options = {option: value}
    with pytest.raises(ValueError, match=rf"add\.apply(_async)?\(\): {culprit} must be") as info:
        _send(mode, (1, 2), **options)
    assert "100 years" in str(info.value)


@pytest.mark.parametrize("value", [1e12, -1e12])
def test_eta_and_expires_datetimes_within_100_years(value, nothing_stored):
    far = timezone.now() + dt.timedelta(days=365 * 200 * (1 if value > 0 else -1))
    with pytest.raises(ValueError, match=r"add\.apply_async\(\): eta must be"):
        tasks.add.apply_async((1, 2), eta=far)
    with pytest.raises(ValueError, match=r"add\.apply_async\(\): expires must be"):
        tasks.add.apply_async((1, 2), expires=far)


def test_the_extreme_datetimes_are_value_errors(nothing_stored):
    for when in (
        dt.datetime.min.replace(tzinfo=dt.timezone(dt.timedelta(hours=1))),
        dt.datetime.max.replace(tzinfo=dt.timezone(dt.timedelta(hours=-1))),
        dt.datetime.max,
    ):
        with pytest.raises(ValueError, match="eta must be"):
            tasks.add.apply_async((1, 2), eta=when)


def test_a_sane_far_future_is_still_accepted():
    res = tasks.add.apply_async((1, 2), countdown=3600 * 24 * 365 * 50, expires=10**9)
    assert res.exists()


def test_max_retries_of_the_retry_policy_must_be_an_integer(nothing_stored):
    for value in (NAN, True, -1, 1.5):
        with pytest.raises(ValueError, match="retry_policy max_retries"):
            tasks.add.apply_async((1, 2), retry_policy={"max_retries": value})


def test_retry_policy_is_checked_in_eager_mode(settings):
    settings.DJANGO_TASKS = {"TASK_ALWAYS_EAGER": True}
    with pytest.raises(ValueError, match="unknown retry_policy key"):
        tasks.add.apply_async((1, 2), retry_policy={"interval": 1})
    with pytest.raises(ValueError, match="retry_policy interval_max"):
        tasks.add.apply((1, 2), retry_policy={"interval_max": NAN})


@pytest.mark.usefixtures("scratch_registry")
@pytest.mark.parametrize("value", BAD_SECONDS.values(), ids=BAD_SECONDS)
@pytest.mark.parametrize(
    "option",
    ["default_retry_delay", "expires", "time_limit", "soft_time_limit", "retry_backoff_max"],
)
def test_declared_seconds_must_be_finite_and_sane(option, value):
    with pytest.raises(ImproperlyConfiguredTask, match=rf"{option} must be .*100 years"):
        task(**{option: value})(lambda: None)


@pytest.mark.usefixtures("scratch_registry")
@pytest.mark.parametrize("value", [NAN, INF, -1, 0, "2"])
def test_retry_backoff_must_be_a_bool_or_a_positive_finite_factor(value):
    with pytest.raises(ImproperlyConfiguredTask, match="retry_backoff must be"):
        task(retry_backoff=value)(lambda: None)


@pytest.mark.usefixtures("scratch_registry")
@pytest.mark.parametrize(
    ("retry_kwargs", "culprit"),
    [
        ("countdown=1", "retry_kwargs must be a dict"),
        ({"routing_key": "x"}, "retry_kwargs: unknown"),
        ({"countdown": NAN}, "countdown must be"),
        ({"countdown": 1e12}, "countdown must be"),
        ({"max_retries": -1}, "max_retries"),
        ({"queue": "a,b"}, "queue"),
    ],
)
def test_retry_kwargs_are_checked_at_declaration(retry_kwargs, culprit):
    with pytest.raises(ImproperlyConfiguredTask, match=culprit):
        task(retry_kwargs=retry_kwargs)(lambda: None)


@pytest.fixture
def scratch_registry():
    saved = dict(tasks_registry)
    yield
    tasks_registry.clear()
    tasks_registry.update(saved)


@contextlib.contextmanager
def running(task_obj, **request):
    """Inside ``task_obj`` as a worker runs it (for ``self.retry()``)."""
    request_stack().append((task_obj, Request(id="x", called_directly=False, **request)))
    try:
        yield
    finally:
        request_stack().pop()


@pytest.mark.parametrize("value", BAD_SECONDS.values(), ids=BAD_SECONDS)
@pytest.mark.parametrize("option", ["countdown", "expires"])
def test_retry_seconds_must_be_finite_and_sane(option, value):
    with (
        running(tasks.fail),
        pytest.raises(ValueError, match=rf"fail\.retry\(\): {option} must be"),
    ):
        tasks.fail.retry(**{option: value})


def test_retry_eta_far_away_is_refused():
    far = timezone.now() + dt.timedelta(days=365 * 200)
    with running(tasks.fail), pytest.raises(ValueError, match=r"fail\.retry\(\): eta must be"):
        tasks.fail.retry(eta=far)


def test_retry_checks_options_even_when_retries_are_exhausted():
    with (
        running(tasks.fail, retries=99),
        pytest.raises(ValueError, match=r"fail\.retry\(\): countdown must be"),
    ):
        tasks.fail.retry(countdown=NAN)


def test_retry_max_retries_must_be_none_or_an_integer():
    with running(tasks.fail), pytest.raises(ValueError, match=r"fail\.retry\(\): max_retries"):
        tasks.fail.retry(max_retries=NAN)


def test_retry_headers_must_be_storable():
    with running(tasks.fail), pytest.raises(EncodeError, match=r"fail\.retry\(\): headers\['a'\]"):
        tasks.fail.retry(headers={"a": "\x00"})


# -- 3. queue names and task ids ----------------------------------------------------------------

BAD_QUEUES = {
    "empty": ("", "must not be empty"),
    "comma": ("a,b", "comma"),
    "space": ("a b", "whitespace"),
    "blank": (" ", "whitespace"),
    "tab": ("a\tb", "whitespace"),
    "NUL": ("a\x00", "NUL"),
    "surrogate": ("\ud800", "surrogate"),
    "long": ("q" * 256, "255"),
}


@pytest.mark.usefixtures("eager", "nothing_stored")
@pytest.mark.parametrize("mode", ["apply_async", "apply", "on_commit"])
@pytest.mark.parametrize(("queue", "problem"), BAD_QUEUES.values(), ids=BAD_QUEUES)
def test_bad_queue_names_are_refused(mode, queue, problem):
    with pytest.raises(ValueError, match=r"add\.apply(_async)?\(\): queue") as info:
        _send(mode, (1, 2), queue=queue)
    assert problem in str(info.value)


def test_a_queue_that_is_not_a_string_is_a_type_error(nothing_stored):
    with pytest.raises(TypeError, match=r"add\.apply_async\(\): queue must be a string"):
        tasks.add.apply_async((1, 2), queue=5)


def test_queue_none_means_routed():
    res = tasks.add.apply_async((1, 2), queue=None)
    assert TaskResult.objects.get(task_id=res.id).queue == "default"


@pytest.mark.parametrize(("queue", "problem"), BAD_QUEUES.values(), ids=BAD_QUEUES)
def test_bad_retry_queue_names_are_refused(queue, problem):
    with (
        running(tasks.fail),
        pytest.raises(ValueError, match=r"fail\.retry\(\): queue") as info,
    ):
        tasks.fail.retry(queue=queue)
    assert problem in str(info.value)


@pytest.mark.usefixtures("scratch_registry")
@pytest.mark.parametrize(("queue", "problem"), BAD_QUEUES.values(), ids=BAD_QUEUES)
def test_bad_declared_queue_names_are_refused(queue, problem):
    with pytest.raises(ImproperlyConfiguredTask, match="queue") as info:
        task(queue=queue)(lambda: None)
    assert problem in str(info.value)


@pytest.mark.parametrize(("queue", "problem"), BAD_QUEUES.values(), ids=BAD_QUEUES)
def test_a_bad_routed_queue_is_refused_at_call_time(queue, problem, settings, nothing_stored):
    settings.DJANGO_TASKS = {"TASK_ROUTES": {"tests.taskapp.tasks.*": {"queue": queue}}}
    with pytest.raises(ValueError, match=r"TASK_ROUTES\['tests\.taskapp\.tasks\.\*'\]") as info:
        tasks.add.delay(1, 2)
    assert problem in str(info.value)


BAD_TASK_IDS = {
    "empty": ("", "must not be empty"),
    "NUL": ("id\x00", "NUL"),
    "surrogate": ("id\udcff", "surrogate"),
    "long": ("i" * 256, "255"),
}


@pytest.mark.usefixtures("eager", "nothing_stored")
@pytest.mark.parametrize("mode", ["apply_async", "apply", "on_commit"])
@pytest.mark.parametrize(("task_id", "problem"), BAD_TASK_IDS.values(), ids=BAD_TASK_IDS)
def test_bad_task_ids_are_refused(mode, task_id, problem):
    with pytest.raises(ValueError, match=r"add\.apply(_async)?\(\): task_id") as info:
        _send(mode, (1, 2), task_id=task_id)
    assert problem in str(info.value)


def test_a_task_id_that_is_not_a_string_is_a_type_error(nothing_stored):
    with pytest.raises(TypeError, match=r"task_id must be a string, not int"):
        tasks.add.apply_async((1, 2), task_id=5)


# -- 4. owner -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("eager", "nothing_stored")
@pytest.mark.parametrize("mode", ["apply_async", "apply", "on_commit"])
def test_an_unsaved_owner_is_refused(mode, django_user_model):
    with pytest.raises(ValueError, match=r"add\.apply(_async)?\(\): owner .*not saved"):
        _send(mode, (1, 2), owner=django_user_model(username="ghost"))


@pytest.mark.usefixtures("nothing_stored")
@pytest.mark.parametrize(
    "owner",
    [object(), 1.5, True, [1], Group(name="staff")],
    ids=["object", "float", "bool", "list", "group"],
)
def test_an_owner_that_is_no_user_or_key_is_a_type_error(owner):
    with pytest.raises(TypeError, match=r"add\.apply_async\(\): owner must be a saved"):
        tasks.add.apply_async((1, 2), owner=owner)


def test_an_owner_key_of_the_wrong_form_is_refused(nothing_stored):
    with pytest.raises(ValueError, match=r"add\.apply_async\(\): owner"):
        tasks.add.apply_async((1, 2), owner="not-a-number")


def test_a_saved_owner_or_its_key_is_accepted(django_user_model):
    user = django_user_model.objects.create_user("ann")
    for owner in (user, user.pk, str(user.pk)):
        res = tasks.add.apply_async((1, 1), owner=owner)
        assert TaskResult.objects.get(task_id=res.id).owner == user


def test_apply_checks_its_arguments_and_option_names_as_apply_async_does(nothing_stored):
    with pytest.raises(TypeError, match=r"add\.apply\(\): args must be a list or tuple"):
        tasks.add.apply("12")
    with pytest.raises(TypeError, match=r"add\.apply\(\) got unknown option\(s\) 'routing_key'"):
        tasks.add.apply((1, 2), routing_key="x")


def test_retry_kwargs_queue_none_is_refused_at_declaration(scratch_registry):
    with pytest.raises(ImproperlyConfiguredTask, match="retry_kwargs: queue must be a string"):
        task(retry_kwargs={"queue": None})(lambda: None)
