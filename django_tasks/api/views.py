"""The endpoints: a filtered, paginated list; one result (ETag, long-poll); revoke."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from django.db.models import Prefetch
from django.utils.http import parse_etags, quote_etag
from rest_framework import generics, status
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.schemas.openapi import AutoSchema
from rest_framework.utils.encoders import JSONEncoder
from rest_framework.views import APIView

from .. import states
from ..conf import tasks_settings
from ..models import TaskResult, TaskResultQuerySet, TaskStateChange
from ..store import revoke
from ..store.notify import change_marker, wait_for_change
from .serializers import TaskResultSerializer

#: Columns the API never shows: the encoded body, call options, lease bookkeeping.
HIDDEN_COLUMNS = ("body", "options", "lease_token", "lease_expires")


class TaskResultPagination(PageNumberPagination):
    """``?page=N`` and ``?page_size=N`` (up to 10 pages' worth); ``API_PAGE_SIZE`` per page."""

    page_size_query_param = "page_size"

    def get_page_size(self, request: Request) -> int | None:
        self.page_size = tasks_settings.API_PAGE_SIZE
        self.max_page_size = self.page_size * 10
        return super().get_page_size(request)


class TaskResultSchema(AutoSchema):
    """The list's filters and the detail's ``wait`` parameter, for the OpenAPI schema."""

    def get_operation_id(self, path: str, method: str) -> str:
        operation_ids: dict[type[APIView], str] = {
            TaskResultList: "listTasks",
            TaskResultDetail: "getTask",
            TaskResultRevoke: "revokeTask",
        }
        return operation_ids.get(type(self.view), super().get_operation_id(path, method))

    def get_request_body(self, path: str, method: str) -> dict[str, Any]:
        return {}  # revoke takes no body

    def get_filter_parameters(self, path: str, method: str) -> list[dict[str, Any]]:
        view = self.view
        if isinstance(view, TaskResultList):
            return [
                _query_param(name, f"Only results with this {what} (comma-separated: any of).")
                for name, what in (("state", "state"), ("name", "task name"), ("queue", "queue"))
            ]
        if isinstance(view, TaskResultDetail) and method == "GET":
            return [
                _query_param(
                    "wait",
                    "Long-poll: answer when the task changes, or after this many seconds "
                    "(capped by API_MAX_WAIT). With If-None-Match, waits for a different ETag.",
                    "number",
                )
            ]
        return []


def _query_param(name: str, description: str, type_: str = "string") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": type_},
    }


class TaskResultAPIView(generics.GenericAPIView):
    """What the endpoints share: permissions from settings, the serializer and its context."""

    serializer_class = TaskResultSerializer
    schema = TaskResultSchema(tags=["tasks"])

    def get_permissions(self) -> list[Any]:
        # Imported once by the settings object; a bad import string raises ImportError here on
        # every request (a server error: no access), and is reported by the system check.
        return [permission() for permission in tasks_settings.API_PERMISSION_CLASSES]

    def get_queryset(self) -> TaskResultQuerySet:
        history = TaskStateChange.objects.only("task_id", "state", "at")
        return TaskResult.objects.defer(*HIDDEN_COLUMNS).prefetch_related(
            Prefetch("history", queryset=history)
        )

    def get_serializer_context(self) -> dict[str, Any]:
        user = getattr(self.request, "user", None)  # no request while building the schema
        staff = bool(getattr(user, "is_staff", False))
        return {
            **super().get_serializer_context(),
            "expose_arguments": staff or tasks_settings.API_EXPOSE_ARGUMENTS,
            "expose_traceback": staff or tasks_settings.API_EXPOSE_TRACEBACKS,
        }

    def get_result(self, task_id: str) -> TaskResult | None:
        """The stored task if this user may see it; None if unknown or not theirs.

        Someone else's task answers exactly as an unknown id does, so that a task id cannot
        be probed for existence.
        """
        task = self.get_queryset().filter(task_id=task_id).first()
        if task is not None:
            try:
                self.check_object_permissions(self.request, task)
            except PermissionDenied:
                return None
        return task


class TaskResultList(generics.ListAPIView, TaskResultAPIView):
    """``GET``: the results you may see, newest first; ``?state=``, ``?name=``, ``?queue=``."""

    pagination_class = TaskResultPagination

    def get_queryset(self) -> TaskResultQuerySet:
        queryset = super().get_queryset()
        narrowed = False
        for permission in self.get_permissions():
            if hasattr(permission, "filter_queryset"):
                queryset = permission.filter_queryset(self.request, queryset)
                narrowed = True
        if not narrowed:
            queryset = queryset.visible_to(self.request.user)
        params = self.request.query_params
        for param, column in (("state", "state"), ("name", "task_name"), ("queue", "queue")):
            values = [v for v in params.get(param, "").split(",") if v]
            if values:
                queryset = queryset.filter(**{f"{column}__in": values})
        return queryset


class TaskResultDetail(TaskResultAPIView):
    """``GET``: one task (an unknown id reads ``PENDING``), with ``ETag`` and ``?wait=N``."""

    def get(self, request: Request, task_id: str) -> Response:
        wait = self._wait_seconds()
        seen = change_marker(task_id) if wait else None  # before reading: no change slips by
        data = self._data(task_id, self.get_result(task_id))
        etag = _etag(data)
        known = parse_etags(request.headers.get("If-None-Match", ""))
        if wait and not data["ready"] and (not known or etag in known or "*" in known):
            # Answer when what this user sees changes (not on changes hidden from them).
            deadline = time.monotonic() + wait
            while (remaining := deadline - time.monotonic()) > 0 and wait_for_change(
                task_id, seen, remaining
            ):
                seen = change_marker(task_id)
                data = self._data(task_id, self.get_result(task_id))
                if _etag(data) != etag:
                    etag = _etag(data)
                    break
        headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
        if etag in known or "*" in known:
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers=headers)
        return Response(data, headers=headers)

    def _wait_seconds(self) -> float:
        raw = self.request.query_params.get("wait")
        if raw is None:
            return 0.0
        try:
            wait = float(raw)
        except ValueError:
            raise ValidationError({"wait": "A number of seconds."}) from None
        if not wait >= 0:
            raise ValidationError({"wait": "A number of seconds (>= 0)."})
        return min(wait, float(tasks_settings.API_MAX_WAIT))

    def _data(self, task_id: str, task: TaskResult | None) -> dict[str, Any]:
        if task is None:  # as in Celery: an unknown id is a task not run yet
            task = TaskResult(task_id=task_id, task_name="", state=states.PENDING)
        data: dict[str, Any] = self.get_serializer(task).data
        return data


class TaskResultRevoke(TaskResultAPIView):
    """``POST``: revoke a task that has not finished (owner or staff); 409 if it has."""

    def post(self, request: Request, task_id: str) -> Response:
        task = self.get_result(task_id)
        if task is None:
            raise NotFound("No task with this id is stored.")
        if not revoke(task_id):
            task = self.get_result(task_id)
            if task is None:  # forgotten or purged meanwhile
                raise NotFound("No task with this id is stored.")
            return Response(
                {"detail": f"The task has already finished ({task.state})."},
                status=status.HTTP_409_CONFLICT,
            )
        return Response(self.get_serializer(self.get_result(task_id)).data)


def _etag(data: Any) -> str:
    """A strong ETag of the representation: it changes whenever the JSON would."""
    body = json.dumps(data, cls=JSONEncoder, sort_keys=True, separators=(",", ":"))
    return quote_etag(hashlib.sha256(body.encode()).hexdigest()[:32])
