"""The settings object: import-string settings are imported once, and again when changed."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from django.test import Client, override_settings
from django.urls import reverse
from django.utils.module_loading import import_string

from django_tasks.api.permissions import IsOwnerOrStaff
from django_tasks.conf import IMPORT_STRINGS, tasks_settings

LIST_URL = "/tasks/"
DENY_ALL = "tests.test_conf.DenyAll"
SIGNED_IN = "tests.test_conf.SignedIn"


class DenyAll:
    """No one may see anything."""

    def has_permission(self, request: Any, view: Any) -> bool:
        return False

    def has_object_permission(self, request: Any, view: Any, obj: Any) -> bool:
        return False


class SignedIn:
    """Any signed-in user; the list is left to its default (staff: all, others: their own)."""

    def has_permission(self, request: Any, view: Any) -> bool:
        return bool(request.user.is_authenticated)

    def has_object_permission(self, request: Any, view: Any, obj: Any) -> bool:
        return True


def permission_classes() -> Any:
    return tasks_settings.API_PERMISSION_CLASSES


@pytest.fixture
def signed_in(client: Client, django_user_model: Any) -> Client:
    client.force_login(django_user_model.objects.create_user("someone", password="pw"))
    return client


def test_api_permission_classes_is_an_import_string_setting() -> None:
    assert "API_PERMISSION_CLASSES" in IMPORT_STRINGS
    tasks_settings.reload()
    assert permission_classes() == [IsOwnerOrStaff]
    assert tasks_settings.raw("API_PERMISSION_CLASSES") == [
        "django_tasks.api.permissions.IsOwnerOrStaff"
    ]
    with pytest.raises(AttributeError, match="NOT_A_SETTING"):
        tasks_settings.raw("NOT_A_SETTING")


@pytest.mark.django_db
@override_settings(DJANGO_TASKS={"API_PERMISSION_CLASSES": [SIGNED_IN]})
def test_the_permission_classes_are_imported_once_not_per_request(signed_in: Client) -> None:
    with mock.patch("django_tasks.conf.import_string", wraps=import_string) as spy:
        assert signed_in.get(LIST_URL).status_code == 200
        assert signed_in.get(LIST_URL).status_code == 200
        assert (
            signed_in.get(reverse("django_tasks:task-detail", args=["some-id"])).status_code == 200
        )
    assert spy.call_args_list == [mock.call(SIGNED_IN)]


@pytest.mark.django_db
def test_a_changed_setting_drops_the_imported_classes(signed_in: Client) -> None:
    assert signed_in.get(LIST_URL).status_code == 200  # cached: [IsOwnerOrStaff]
    with override_settings(DJANGO_TASKS={"API_PERMISSION_CLASSES": [DENY_ALL]}):
        assert permission_classes() == [DenyAll]
        assert signed_in.get(LIST_URL).status_code == 403
    assert permission_classes() == [IsOwnerOrStaff]
    assert signed_in.get(LIST_URL).status_code == 200


def test_the_settings_object_imports_a_string_or_a_list() -> None:
    with override_settings(DJANGO_TASKS={"API_PERMISSION_CLASSES": (DENY_ALL, SIGNED_IN)}):
        assert permission_classes() == [DenyAll, SignedIn]
    with override_settings(DJANGO_TASKS={"API_PERMISSION_CLASSES": DENY_ALL}):
        assert tasks_settings.API_PERMISSION_CLASSES is DenyAll


@override_settings(DJANGO_TASKS={"API_PERMISSION_CLASSES": ["tests.test_conf.Nope"]})
def test_a_bad_import_string_is_an_import_error_naming_the_setting() -> None:
    message = r"Could not import 'tests.test_conf.Nope' for DJANGO_TASKS setting " + (
        r"'API_PERMISSION_CLASSES'"
    )
    for _ in range(2):  # a failure is not cached
        with pytest.raises(ImportError, match=message):
            tasks_settings.API_PERMISSION_CLASSES  # noqa: B018
    assert tasks_settings.raw("API_PERMISSION_CLASSES") == ["tests.test_conf.Nope"]


@override_settings(DJANGO_TASKS={"API_PERMISSION_CLASSES": [DENY_ALL, 42]})
def test_an_item_that_is_not_a_string_is_an_import_error() -> None:
    with pytest.raises(ImportError, match="42 for DJANGO_TASKS setting 'API_PERMISSION_CLASSES'"):
        tasks_settings.API_PERMISSION_CLASSES  # noqa: B018


@pytest.mark.django_db
@override_settings(DJANGO_TASKS={"API_PERMISSION_CLASSES": ["tests.test_conf.Nope"]})
def test_a_bad_import_string_fails_closed_at_request_time(signed_in: Client) -> None:
    with pytest.raises(ImportError, match="API_PERMISSION_CLASSES"):
        signed_in.get(LIST_URL)
    signed_in.raise_request_exception = False
    assert signed_in.get(LIST_URL).status_code == 500
    assert signed_in.get(reverse("django_tasks:task-detail", args=["some-id"])).status_code == 500
