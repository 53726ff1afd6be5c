"""The OpenAPI 3 schema of this app's endpoints only, wherever ``django_tasks.urls`` is mounted
(drf-spectacular)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.renderers import OpenApiJsonRenderer, OpenApiYamlRenderer
from drf_spectacular.views import SpectacularAPIView
from rest_framework.permissions import IsAuthenticated

from . import views
from .serializers import OPTIONAL_FIELDS

API_VIEWS = (views.TaskResultList, views.TaskResultDetail, views.TaskResultRevoke)


def only_task_endpoints(endpoints: list[Any], **kwargs: Any) -> list[Any]:
    """drf-spectacular's preprocessing hook: walk the project's URLs (to get the real prefix)
    but keep only this app's views."""
    return [
        (path, path_regex, method, callback)
        for path, path_regex, method, callback in endpoints
        if getattr(callback, "cls", None) in API_VIEWS
    ]


def optional_fields(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular's postprocessing hook: ``args``, ``kwargs`` and ``traceback`` are left
    out for those who may not see them, so they are not required."""
    task = result.get("components", {}).get("schemas", {}).get("Task", {})
    if "required" in task:
        task["required"] = [name for name in task["required"] if name not in OPTIONAL_FIELDS]
    return result


class OpenApiJsonFormat(OpenApiJsonRenderer):
    """JSON for ``?format=openapi-json`` (the name DRF's schema view used)."""

    format = "openapi-json"


class OpenApiYamlFormat(OpenApiYamlRenderer):
    """YAML for ``?format=openapi`` (the name DRF's schema view used)."""

    format = "openapi"


class TasksSchemaView(SpectacularAPIView):
    """The schema endpoint (OpenAPI 3, YAML by default, JSON by ``Accept`` or
    ``?format=openapi-json``); signed-in users only."""

    permission_classes = [IsAuthenticated]
    renderer_classes = [
        *SpectacularAPIView.renderer_classes,
        OpenApiYamlFormat,
        OpenApiJsonFormat,
    ]
    custom_settings = {
        "TITLE": "django_tasks",
        "DESCRIPTION": "Task results: read, long-poll and revoke.",
        "VERSION": "1",
        "PREPROCESSING_HOOKS": [f"{__name__}.only_task_endpoints"],
        "POSTPROCESSING_HOOKS": [
            "drf_spectacular.hooks.postprocess_schema_enums",
            f"{__name__}.optional_fields",
        ],
        # The paths as mounted: ``/tasks/...``, whatever the prefix.
        "SCHEMA_PATH_PREFIX": "",
        "SCHEMA_PATH_PREFIX_TRIM": False,
    }


def schema_view() -> Any:
    """The schema endpoint (OpenAPI 3, JSON or YAML); signed-in users only."""
    return TasksSchemaView.as_view()
