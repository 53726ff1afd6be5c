"""On Django 5.2, naming ``TasksBackend`` in ``TASKS`` is a system-check error."""

import django
import pytest
from django.test.utils import override_settings

from django_tasks.checks import check_django_tasks_backend


@pytest.mark.skipif(django.VERSION >= (6, 0), reason="Django 5.2 only")
def test_on_django_5_the_backend_is_a_system_check_error():
    with override_settings(TASKS={"default": {"BACKEND": "django_tasks.backend.TasksBackend"}}):
        (error,) = check_django_tasks_backend()
    assert error.id == "django_tasks.E061" and "Django 6" in error.msg


@pytest.mark.skipif(django.VERSION < (6, 0), reason="Django 6 only")
def test_on_django_6_it_is_not():
    assert check_django_tasks_backend() == []
