"""The app config: it refuses to start next to the unrelated ``django-tasks`` backport."""

import sys

import pytest
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured

from django_tasks.apps import conflicting_distribution


@pytest.fixture
def backport_installed(tmp_path, monkeypatch):
    """A real (if empty) installed distribution named django-tasks on sys.path."""
    dist = tmp_path / "django_tasks-0.12.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: django-tasks\nVersion: 0.12.0\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])


def test_no_conflict_by_default():
    assert conflicting_distribution() is None


@pytest.mark.usefixtures("backport_installed")
def test_the_backport_is_detected_and_start_up_stops_with_a_clear_error():
    assert conflicting_distribution() == "django-tasks 0.12.0"
    with pytest.raises(
        ImproperlyConfigured,
        match=r"pip uninstall django-tasks && pip install --force-reinstall django-kombu-tasks",
    ):
        apps.get_app_config("django_tasks").ready()
