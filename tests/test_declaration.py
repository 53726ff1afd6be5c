"""Declaring tasks: names, options, the registry, autodiscovery and signatures."""

import json

import pytest

from django_tasks import Signature, Task, signature, task
from django_tasks.exceptions import ImproperlyConfiguredTask, NotRegistered
from django_tasks.registry import tasks_registry


@pytest.fixture
def scratch_registry():
    """Let a test declare tasks without leaving them registered."""
    saved = dict(tasks_registry)
    yield
    tasks_registry.clear()
    tasks_registry.update(saved)


def test_tasks_modules_of_installed_apps_are_discovered():
    assert "testproject.demo.tasks.add" in tasks_registry
    assert "tests.taskapp.tasks.add" in tasks_registry


@pytest.mark.usefixtures("scratch_registry")
def test_bare_and_called_decorator_both_declare_a_task():
    @task
    def plain(x):
        return x

    @task()
    def called(x):
        return x

    assert isinstance(plain, Task)
    assert isinstance(called, Task)
    assert plain.name == f"{__name__}.plain"
    assert plain(3) == 3
    assert called.__doc__ == called.run.__doc__


@pytest.mark.usefixtures("scratch_registry")
def test_defaults_follow_celery():
    @task
    def f():
        pass

    assert (f.max_retries, f.default_retry_delay, f.bind, f.ignore_result) == (3, 180, False, False)
    assert (f.retry_backoff, f.retry_backoff_max, f.retry_jitter) == (False, 600, True)
    assert f.autoretry_for == () and f.expires is None and f.time_limit is None


@pytest.mark.usefixtures("scratch_registry")
def test_name_option_overrides_the_default_name():
    @task(name="custom.name")
    def f():
        pass

    assert tasks_registry.get_task("custom.name") is f


@pytest.mark.usefixtures("scratch_registry")
def test_two_tasks_with_one_name_is_an_error_naming_both():
    @task(name="dup.name")
    def first():
        pass

    with pytest.raises(ImproperlyConfiguredTask) as info:

        @task(name="dup.name")
        def second():
            pass

    message = str(info.value)
    assert "dup.name" in message
    assert "first" in message and "second" in message


@pytest.mark.usefixtures("scratch_registry")
def test_unknown_option_is_an_error_naming_it():
    with pytest.raises(ImproperlyConfiguredTask, match="'max_retry'"):

        @task(max_retry=3)
        def f():
            pass


@pytest.mark.usefixtures("scratch_registry")
@pytest.mark.parametrize(
    ("options", "culprit"),
    [
        ({"priority": 300}, "priority"),
        ({"max_retries": -1}, "max_retries"),
        ({"serializer": "yaml-ish"}, "serializer"),
        ({"compression": "rar"}, "compression"),
        ({"soft_time_limit": 10, "time_limit": 5}, "soft_time_limit"),
        ({"autoretry_for": (ValueError, "nope")}, "autoretry_for"),
        ({"queue": ""}, "queue"),
    ],
)
def test_bad_option_values_are_errors_naming_the_option(options, culprit):
    with pytest.raises(ImproperlyConfiguredTask, match=culprit):
        task(**options)(lambda: None)


def test_unknown_name_lookup_raises_not_registered():
    with pytest.raises(NotRegistered, match="no.such.task"):
        tasks_registry.get_task("no.such.task")


def test_signatures_are_json_serializable_and_round_trip():
    from tests.taskapp.tasks import add

    sig = add.s(2, y=3)
    assert json.loads(json.dumps(sig)) == {
        "task": "tests.taskapp.tasks.add",
        "args": [2],
        "kwargs": {"y": 3},
        "options": {},
        "immutable": False,
    }
    again = Signature.from_dict(json.loads(json.dumps(sig)))
    assert again == sig
    assert again.type is add
    assert add.s(y=3)(5) == 8  # calling a signature prepends the arguments given
    assert add.signature((1,), {"y": 1}, countdown=5).options == {"countdown": 5}
    assert add.si(1, 2).clone((99,)).args == [1, 2]
    assert signature("tests.taskapp.tasks.add", (1, 2)).args == [1, 2]


@pytest.mark.parametrize(
    ("make", "error", "culprit"),
    [
        (lambda: Signature(""), ValueError, "task name must not be empty"),
        (lambda: Signature(5), TypeError, "a task or a task name, not int"),
        (lambda: Signature("a.b", options=[("countdown", 1)]), TypeError, "options must be a dict"),
        (lambda: Signature.from_dict({"task": "a.b", "options": "x"}), TypeError, "options"),
        (lambda: Signature.from_dict({"task": "a.b", "args": "12"}), TypeError, "args"),
        (lambda: signature("a.b", "12"), TypeError, "args must be a list or tuple"),
    ],
)
def test_bad_signatures_are_errors_naming_the_part(make, error, culprit):
    with pytest.raises(error, match=culprit):
        make()


@pytest.mark.usefixtures("scratch_registry")
@pytest.mark.parametrize(
    ("options", "culprit"),
    [
        ({"queue": "a,b"}, "queue 'a,b' must not hold a comma"),
        ({"queue": " "}, "queue ' ' must not hold whitespace"),
        ({"default_retry_delay": float("nan")}, "default_retry_delay must be a finite number"),
        ({"default_retry_delay": None}, "default_retry_delay must be a number"),
        ({"expires": 1e12}, "expires must be a finite number"),
        ({"max_retries": True}, "max_retries"),
        ({"retry_backoff": float("inf")}, "retry_backoff"),
        ({"retry_kwargs": {"countdown": float("inf")}}, "retry_kwargs: countdown"),
    ],
)
def test_bad_option_values_name_the_option_and_the_problem(options, culprit):
    with pytest.raises(ImproperlyConfiguredTask, match=culprit):
        task(**options)(lambda: None)
