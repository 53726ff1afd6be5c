"""Bad settings are system-check errors naming the key: numbers finite and in range, queue
names a worker can consume, permission classes that really are DRF permission classes."""

import math

import pytest

from django_tasks.checks import check_settings

NAN, INF = math.nan, math.inf


def found(settings, **values):
    settings.DJANGO_TASKS = values
    return {m.id: m for m in check_settings()}


def assert_error(settings, check_id, key, *words, **values):
    messages = found(settings, **values)
    assert check_id in messages, messages
    message = messages[check_id]
    assert f"DJANGO_TASKS[{key!r}]" in message.msg
    for word in words:
        assert word in message.msg or word in (message.hint or ""), (word, message)
    return message


# -- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "check_id"),
    [
        ("WORKER_LEASE_SECONDS", NAN, "django_tasks.E012"),
        ("WORKER_LEASE_SECONDS", INF, "django_tasks.E012"),
        ("WORKER_LEASE_SECONDS", 86400 * 2, "django_tasks.E012"),
        ("WORKER_LEASE_SECONDS", True, "django_tasks.E012"),
        ("WORKER_POLL_INTERVAL", NAN, "django_tasks.E012"),
        ("WORKER_POLL_INTERVAL", INF, "django_tasks.E012"),
        ("WORKER_POLL_INTERVAL", 0, "django_tasks.E012"),
        ("WORKER_POLL_INTERVAL", 31, "django_tasks.E012"),  # above the 30 s lease
        ("API_MAX_WAIT", NAN, "django_tasks.E017"),
        ("API_MAX_WAIT", INF, "django_tasks.E017"),
        ("API_MAX_WAIT", 301, "django_tasks.E017"),
        ("API_MAX_LONG_POLLS", -1, "django_tasks.E022"),
        ("API_MAX_LONG_POLLS", 10**9, "django_tasks.E022"),
        ("API_MAX_LONG_POLLS", 1.5, "django_tasks.E022"),
        ("RESULT_EXPIRES", NAN, "django_tasks.E011"),
        ("RESULT_EXPIRES", INF, "django_tasks.E011"),
        ("RESULT_EXPIRES", 1e12, "django_tasks.E011"),
        ("RESULT_EXPIRES", True, "django_tasks.E011"),
        ("WORKER_LOST_MAX_REDELIVERIES", -1, "django_tasks.E021"),
        ("WORKER_LOST_MAX_REDELIVERIES", 1.5, "django_tasks.E021"),
        ("WORKER_LOST_MAX_REDELIVERIES", NAN, "django_tasks.E021"),
        ("WORKER_LOST_MAX_REDELIVERIES", None, "django_tasks.E021"),
        ("WORKER_LOST_MAX_REDELIVERIES", True, "django_tasks.E021"),
        ("WORKER_MAX_TASKS_PER_CHILD", 0, "django_tasks.E040"),
        ("WORKER_MAX_TASKS_PER_CHILD", 2.0, "django_tasks.E040"),
        ("WORKER_MAX_TASKS_PER_CHILD", True, "django_tasks.E040"),
        ("WORKER_MAX_MEMORY_PER_CHILD", -1, "django_tasks.E041"),
        ("WORKER_MAX_MEMORY_PER_CHILD", "200MB", "django_tasks.E041"),
        ("WORKER_PREFETCH_MAX", 10**9, "django_tasks.E013"),
        ("WORKER_PREFETCH_MAX", 2.0, "django_tasks.E013"),
        ("BROKER_POOL_LIMIT", 10**6, "django_tasks.E020"),
        ("API_PAGE_SIZE", 10**9, "django_tasks.E016"),
        ("API_PAGE_SIZE", 1001, "django_tasks.E016"),
        ("API_PAGE_SIZE", True, "django_tasks.E016"),
        ("TASK_PUBLISH_RETRY_POLICY", {"interval_max": NAN}, "django_tasks.E009"),
        ("TASK_PUBLISH_RETRY_POLICY", {"interval_start": INF}, "django_tasks.E009"),
        ("TASK_PUBLISH_RETRY_POLICY", {"max_retries": True}, "django_tasks.E009"),
    ],
)
def test_numbers_must_be_finite_and_in_range(key, value, check_id, settings):
    assert_error(settings, check_id, key, **{key: value})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("WORKER_LEASE_SECONDS", 86400),
        ("WORKER_LEASE_SECONDS", 0.5),
        ("WORKER_POLL_INTERVAL", None),
        ("WORKER_POLL_INTERVAL", 30),
        ("API_MAX_WAIT", 0),
        ("API_MAX_WAIT", 300),
        ("RESULT_EXPIRES", None),
        ("RESULT_EXPIRES", 0),
        ("RESULT_EXPIRES", 86400 * 365 * 10),
        ("WORKER_LOST_MAX_REDELIVERIES", 0),
        ("WORKER_LOST_MAX_REDELIVERIES", 3),
        ("WORKER_MAX_TASKS_PER_CHILD", None),
        ("WORKER_MAX_TASKS_PER_CHILD", 1),
        ("WORKER_MAX_MEMORY_PER_CHILD", 200_000),
        ("WORKER_PREFETCH_MAX", 10_000),
        ("BROKER_POOL_LIMIT", 1000),
        ("API_PAGE_SIZE", 1),
        ("API_PAGE_SIZE", 1000),
    ],
)
def test_sane_numbers_pass(key, value, settings):
    assert found(settings, **{key: value}) == {}


def test_the_poll_interval_is_compared_with_the_configured_lease(settings):
    assert found(settings, WORKER_LEASE_SECONDS=5, WORKER_POLL_INTERVAL=4) == {}
    message = assert_error(
        settings,
        "django_tasks.E012",
        "WORKER_POLL_INTERVAL",
        "WORKER_LEASE_SECONDS",
        WORKER_LEASE_SECONDS=5,
        WORKER_POLL_INTERVAL=6,
    )
    assert "6" in message.msg


def test_the_error_says_what_range_is_allowed(settings):
    message = assert_error(
        settings, "django_tasks.E012", "WORKER_LEASE_SECONDS", "nan", WORKER_LEASE_SECONDS=NAN
    )
    assert "86400" in message.msg


# -- queue names --------------------------------------------------------------------------------

BAD_QUEUES = {
    "empty": ("", "must not be empty"),
    "blank": (" ", "whitespace"),
    "comma": ("a,b", "comma"),
    "NUL": ("a\x00", "NUL"),
    "long": ("q" * 256, "255"),
}


@pytest.mark.parametrize(("queue", "problem"), BAD_QUEUES.values(), ids=BAD_QUEUES)
def test_the_default_queue_follows_the_queue_name_rule(queue, problem, settings):
    assert_error(
        settings, "django_tasks.E003", "TASK_DEFAULT_QUEUE", problem, TASK_DEFAULT_QUEUE=queue
    )


@pytest.mark.parametrize(("queue", "problem"), BAD_QUEUES.values(), ids=BAD_QUEUES)
def test_routed_queues_follow_the_queue_name_rule(queue, problem, settings):
    message = assert_error(
        settings, "django_tasks.E010", "TASK_ROUTES", problem, TASK_ROUTES={"a.*": {"queue": queue}}
    )
    assert "'a.*'" in message.msg


@pytest.mark.parametrize("priority", [-1, 256, 1.5, True, NAN])
def test_routed_priorities_are_checked(priority, settings):
    assert_error(
        settings,
        "django_tasks.E010",
        "TASK_ROUTES",
        "priority",
        TASK_ROUTES={"a.*": {"priority": priority}},
    )


def test_a_route_key_must_be_a_string(settings):
    assert_error(settings, "django_tasks.E010", "TASK_ROUTES", TASK_ROUTES={5: {"queue": "q"}})


def test_good_routes_pass(settings):
    routes = {"a.b": {"queue": "math"}, "a.*": {"queue": "other.q-1", "priority": 5}}
    assert found(settings, TASK_ROUTES=routes) == {}


# -- API_PERMISSION_CLASSES ---------------------------------------------------------------------


def test_an_empty_permission_list_is_an_error(settings):
    assert_error(
        settings, "django_tasks.E015", "API_PERMISSION_CLASSES", "empty", API_PERMISSION_CLASSES=[]
    )


@pytest.mark.parametrize(
    "path",
    ["os.system", "django_tasks.api", "rest_framework.views.APIView", "math.pi"],
)
def test_permission_classes_must_be_drf_permission_classes(path, settings):
    message = assert_error(
        settings,
        "django_tasks.E015",
        "API_PERMISSION_CLASSES",
        path,
        "BasePermission",
        API_PERMISSION_CLASSES=[path],
    )
    assert message.hint


def test_drf_permission_classes_pass(settings):
    classes = [
        "rest_framework.permissions.IsAdminUser",
        "django_tasks.api.permissions.IsOwnerOrStaff",
    ]
    assert found(settings, API_PERMISSION_CLASSES=classes) == {}
    assert found(settings, API_PERMISSION_CLASSES=tuple(classes)) == {}


def test_an_unimportable_permission_class_is_still_named(settings):
    assert_error(
        settings,
        "django_tasks.E015",
        "API_PERMISSION_CLASSES",
        "no.such.Thing",
        API_PERMISSION_CLASSES=["no.such.Thing"],
    )
