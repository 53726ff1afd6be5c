"""The app config: refuse a conflicting install, find ``tasks.py`` modules, register checks."""

from __future__ import annotations

import importlib.metadata

from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import autodiscover_modules

#: The PyPI backport of Django's own tasks framework also installs a ``django_tasks`` package.
CONFLICTING_DISTRIBUTION = "django-tasks"


def conflicting_distribution() -> str | None:
    """``"django-tasks X.Y"`` if the unrelated backport is installed, else None."""
    try:
        dist = importlib.metadata.distribution(CONFLICTING_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    return f"{dist.metadata['Name']} {dist.version}"


class DjangoTasksConfig(AppConfig):
    name = "django_tasks"
    verbose_name = "Tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        other = conflicting_distribution()
        if other:
            raise ImproperlyConfigured(
                f"{other} is installed: it is an unrelated backport of Django's tasks framework "
                f"that also installs a 'django_tasks' package, so the two overwrite each other. "
                f"To keep django-kombu-tasks, run 'pip uninstall django-tasks && "
                f"pip install --force-reinstall django-kombu-tasks': uninstalling django-tasks "
                f"also deletes the 'django_tasks' files the two share."
            )
        from . import (
            checks,  # noqa: F401 - registers the system checks
            maps,  # noqa: F401 - registers the built-in map and starmap tasks
        )
        from .canvas import chord_failed, send_chord_body
        from .store import set_chord_handlers

        set_chord_handlers(send_chord_body, chord_failed)

        autodiscover_modules("tasks")
