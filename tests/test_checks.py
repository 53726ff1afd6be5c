"""System checks on DJANGO_TASKS: each problem is reported at start-up, naming the key."""

import pytest
from django.core import checks

from django_tasks.checks import check_settings


def ids(settings_dict, settings):
    settings.DJANGO_TASKS = settings_dict
    return {m.id: m.msg for m in check_settings()}


def test_the_defaults_pass(settings):
    assert ids({}, settings) == {}


def test_the_check_is_registered_with_django():
    assert check_settings in checks.registry.registry.registered_checks


def test_unknown_key_is_named_with_a_suggestion(settings):
    settings.DJANGO_TASKS = {"BROKER_UR": "django://", "TASK_ACKSLATE": True}
    messages = {m.msg: m.hint for m in check_settings()}
    assert any("'BROKER_UR'" in msg for msg in messages)
    assert any(
        "'TASK_ACKSLATE'" in msg and "TASK_ACKS_LATE" in hint for msg, hint in messages.items()
    )


@pytest.mark.parametrize(
    ("key", "meant"),
    [
        ("BROKER_ULR", "BROKER_URL"),
        ("TASK_SERIALISER", "TASK_SERIALIZER"),
        ("broker_url", "BROKER_URL"),
    ],
)
def test_a_mistyped_key_gets_did_you_mean(key, meant, settings):
    settings.DJANGO_TASKS = {key: "x"}
    [message] = [m for m in check_settings() if m.id == "django_tasks.E001"]
    assert repr(key) in message.msg
    assert message.hint == f"Did you mean {meant!r}?"


@pytest.mark.parametrize(
    ("url", "meant"),
    [
        ("redis//host", "redis://host"),
        ("amqp:/guest@h//", "amqp://guest@h//"),
        ("django:", "django://"),
    ],
)
def test_a_broker_url_missing_part_of_its_scheme_separator_gets_did_you_mean(url, meant, settings):
    settings.DJANGO_TASKS = {"BROKER_URL": url}
    [message] = [m for m in check_settings() if m.id == "django_tasks.E002"]
    assert message.hint == f"Did you mean {meant!r}?"


def test_a_singular_django_task_setting_is_a_warning_naming_the_plural(settings):
    settings.DJANGO_TASK = {"BROKER_URL": "django://"}
    [message] = check_settings()
    assert message.id == "django_tasks.W002"
    assert isinstance(message, checks.Warning)
    assert "DJANGO_TASKS" in message.hint


def test_broker_urls_of_kombu_transports_are_accepted(settings):
    for url in ("redis://127.0.0.1:6379/0", "amqp://guest:guest@127.0.0.1:5672//"):
        assert "django_tasks.E002" not in ids({"BROKER_URL": url}, settings)
        assert "django_tasks.E019" not in ids({"BROKER_URL": url}, settings)


def test_a_broker_url_whose_client_library_is_missing_names_it(settings):
    found = ids({"BROKER_URL": "zookeeper://127.0.0.1:2181/"}, settings)
    assert "kazoo" in found["django_tasks.E019"]
    assert "zookeeper://" in found["django_tasks.E019"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("nope://x", "unknown"),
        ("django", "not a URL"),
        ("django://other", "takes no host"),
    ],
)
def test_bad_broker_url(value, expected, settings):
    found = ids({"BROKER_URL": value}, settings)
    assert "django_tasks.E002" in found
    assert "BROKER_URL" in found["django_tasks.E002"]
    assert expected in found["django_tasks.E002"]


@pytest.mark.parametrize(
    ("key", "value", "check_id"),
    [
        ("TASK_DEFAULT_QUEUE", "", "django_tasks.E003"),
        ("TASK_SERIALIZER", "yaml-ish", "django_tasks.E004"),
        ("ACCEPT_CONTENT", "json", "django_tasks.E005"),
        ("ACCEPT_CONTENT", ["json", "bogus"], "django_tasks.E005"),
        ("TASK_COMPRESSION", "rar", "django_tasks.E007"),
        ("TASK_ACKS_LATE", "yes", "django_tasks.E008"),
        ("TASK_PUBLISH_RETRY_POLICY", {"max_retries": 1, "interval": 1}, "django_tasks.E009"),
        ("TASK_ROUTES", {"a.b": "lopri"}, "django_tasks.E010"),
        ("RESULT_EXPIRES", -1, "django_tasks.E011"),
        ("WORKER_LEASE_SECONDS", 0, "django_tasks.E012"),
        ("WORKER_POLL_INTERVAL", -1, "django_tasks.E012"),
        ("WORKER_PREFETCH_MAX", 0, "django_tasks.E013"),
        ("BROKER_POOL_LIMIT", 0, "django_tasks.E020"),
        ("BROKER_POOL_LIMIT", None, "django_tasks.E020"),
        ("API_EXPOSE_TRACEBACKS", "no", "django_tasks.E008"),
        ("API_EXPOSE_ARGUMENTS", 1, "django_tasks.E008"),
        (
            "API_PERMISSION_CLASSES",
            "django_tasks.api.permissions.IsOwnerOrStaff",
            "django_tasks.E015",
        ),
        ("API_PERMISSION_CLASSES", ["django_tasks.api.permissions.Nope"], "django_tasks.E015"),
        ("API_PAGE_SIZE", 0, "django_tasks.E016"),
        ("API_MAX_WAIT", -5, "django_tasks.E017"),
    ],
)
def test_bad_values_are_errors_naming_the_key(key, value, check_id, settings):
    found = ids({key: value}, settings)
    assert check_id in found, found
    assert key in found[check_id]


def test_pickle_in_accept_content_is_a_warning(settings):
    found = ids({"ACCEPT_CONTENT": ["json", "pickle"]}, settings)
    assert list(found) == ["django_tasks.W001"]


def test_a_serializer_workers_would_reject_is_an_error(settings):
    found = ids({"TASK_SERIALIZER": "msgpack"}, settings)
    assert "django_tasks.E006" in found


def test_settings_object_reloads_and_rejects_unknown_names(settings):
    from django_tasks.conf import tasks_settings

    settings.DJANGO_TASKS = {"TASK_DEFAULT_QUEUE": "q1"}
    assert tasks_settings.TASK_DEFAULT_QUEUE == "q1"
    settings.DJANGO_TASKS = {"TASK_DEFAULT_QUEUE": "q2"}
    assert tasks_settings.TASK_DEFAULT_QUEUE == "q2"
    with pytest.raises(AttributeError, match="NOT_A_SETTING"):
        tasks_settings.NOT_A_SETTING  # noqa: B018


def test_a_partial_publish_retry_policy_is_completed_from_the_defaults(settings, db):
    from tests.taskapp import tasks

    assert ids({"TASK_PUBLISH_RETRY_POLICY": {"max_retries": 5}}, settings) == {}
    assert tasks.add.delay(1, 1).exists()


@pytest.fixture
def without_drf(monkeypatch):
    from django.apps import apps

    installed = apps.is_installed
    monkeypatch.setattr(
        apps, "is_installed", lambda name: name != "rest_framework" and installed(name)
    )


@pytest.mark.usefixtures("without_drf")
def test_the_api_routed_without_rest_framework_installed_is_an_error():
    from django_tasks.checks import check_api_urls

    [message] = check_api_urls()
    assert message.id == "django_tasks.E050"
    assert "rest_framework" in message.hint
    assert check_api_urls in checks.registry.registry.registered_checks


@pytest.mark.usefixtures("without_drf")
@pytest.mark.parametrize("urlconf", ["django_tasks.urls", "tests.no_such_urlconf"])
def test_no_api_route_or_a_urlconf_that_fails_to_import_is_no_e050(urlconf, settings):
    from django_tasks.checks import check_api_urls

    settings.ROOT_URLCONF = urlconf
    assert check_api_urls() == []


def test_the_api_routed_with_rest_framework_installed_passes():
    from django_tasks.checks import check_api_urls

    assert check_api_urls() == []
