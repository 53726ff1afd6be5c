"""The OpenAPI schema of this app's endpoints only, wherever ``django_tasks.urls`` is mounted."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import IsAuthenticated
from rest_framework.schemas import get_schema_view
from rest_framework.schemas.openapi import SchemaGenerator

from . import views

API_VIEWS = (views.TaskResultList, views.TaskResultDetail, views.TaskResultRevoke)


class TasksSchemaGenerator(SchemaGenerator):
    """Walks the project's URLs (to get the real prefix) but keeps only this app's views."""

    def _initialise_endpoints(self) -> None:
        super()._initialise_endpoints()  # type: ignore[misc]  # private: not in drf-stubs
        assert self.endpoints is not None  # the call above sets them
        self.endpoints = [
            (path, method, callback)
            for path, method, callback in self.endpoints
            if getattr(callback, "cls", None) in API_VIEWS
        ]


def schema_view() -> Any:
    """The schema endpoint (OpenAPI 3, JSON or YAML); signed-in users only."""
    return get_schema_view(
        title="django_tasks",
        description="Task results: read, long-poll and revoke.",
        version="1",
        generator_class=TasksSchemaGenerator,
        public=True,
        permission_classes=[IsAuthenticated],
    )
