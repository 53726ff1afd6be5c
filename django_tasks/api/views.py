"""The endpoints: a filtered, paginated list; one result (ETag, long-poll); revoke."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.db.models import Prefetch
from django.utils.http import parse_etags, quote_etag
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import NotFound, PermissionDenied, Throttled, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.encoders import JSONEncoder

from .. import states
from ..conf import tasks_settings
from ..models import TaskResult, TaskResultQuerySet, TaskStateChange
from ..store import revoke
from ..store.notify import Watch, change_marker
from . import longpoll
from .permissions import DenyAll, reads_every_result, visible_results
from .serializers import TaskResultSerializer
from .values import usable_text, with_json_text

_Method = TypeVar("_Method", bound=Callable[..., Any])

#: Columns the API never shows: the encoded body, call options, lease bookkeeping.
HIDDEN_COLUMNS = ("body", "options", "lease_token", "lease_expires")

#: The list's filters: query parameter -> column.
FILTERS = (("state", "state"), ("name", "task_name"), ("queue", "queue"))

#: What the database can take as a text parameter (JSON Schema, for the OpenAPI schema).
TEXT_PATTERN = "^[^\\u0000]*$"


def check_task_id(task_id: str) -> None:
    """404 for a path segment that no task id can be (it never reaches the database)."""
    if not usable_text(task_id):
        raise NotFound("Not a task id: it holds a NUL character or broken text.")


def etag_matches(etag: str, if_none_match: str) -> bool:
    """RFC 9110's weak comparison (section 13.1.2), as ``If-None-Match`` requires: ``W/"x"``
    matches ``"x"``. Proxies and ``GZipMiddleware`` weaken the ETags they pass on."""
    tags = parse_etags(if_none_match)
    if "*" in tags:
        return True
    opaque = etag.removeprefix("W/")
    return any(tag.removeprefix("W/") == opaque for tag in tags)


def _positive_whole(raw: str) -> bool:
    return raw.isascii() and raw.isdigit() and int(raw) > 0


def single_param(request: Request, name: str) -> str | None:
    """The query parameter ``name``, given at most once (else a 400)."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise ValidationError({name: ["Give it once."]})
    return values[0] if values else None


class TaskResultPagination(PageNumberPagination):
    """``?page=N`` and ``?page_size=N`` (up to 10 pages' worth); ``API_PAGE_SIZE`` per page.

    Stricter than DRF's: a ``page_size`` that is not a positive whole number is a 400 (DRF
    ignores it), and a ``page`` that is not one (an empty or repeated one too) is a 404.
    """

    page_size_query_param = "page_size"
    last_page_strings = ()

    def get_page_size(self, request: Request) -> int | None:
        self.page_size = tasks_settings.API_PAGE_SIZE
        self.max_page_size = self.page_size * 10
        raw = single_param(request, "page_size")
        if raw is not None and not _positive_whole(raw):
            raise ValidationError({"page_size": ["A whole number of results, 1 or more."]})
        return super().get_page_size(request)

    def get_page_number(self, request: Request, paginator: Any) -> Any:
        values = request.query_params.getlist(self.page_query_param)
        if not values:
            return 1
        if len(values) > 1 or not _positive_whole(values[0]):
            raise NotFound(self.invalid_page_message)
        return values[0]

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] in ("page", "page_size"):
                parameter["schema"] = {"type": "integer", "minimum": 1}
        return parameters


# -- the OpenAPI description of what the endpoints answer -----------------------------------------


class DetailSerializer(serializers.Serializer):
    """An error: ``{"detail": "..."}``."""

    detail = serializers.CharField()


DETAIL = OpenApiResponse(DetailSerializer, description="An error, explained in `detail`.")
INVALID = OpenApiResponse(
    {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
    description="A bad parameter: its name, and what is wrong with it.",
)
SIGNED_OUT = OpenApiResponse(
    DetailSerializer, description="Not signed in (401 or 403, by authentication class)."
)
FORBIDDEN = OpenApiResponse(
    DetailSerializer,
    description="Not signed in, or no permission class allows it (an empty "
    "API_PERMISSION_CLASSES denies everything).",
)
ETAG_HEADER = OpenApiParameter(
    "ETag",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    response=[200, 304],
    description="Of the JSON: send it back in If-None-Match.",
)
RETRY_AFTER_HEADER = OpenApiParameter(
    "Retry-After",
    OpenApiTypes.INT,
    OpenApiParameter.HEADER,
    response=[304, 429],
    description="Seconds to wait before polling again (when too many long-polls wait).",
)
TASK_ID_PARAMETER = OpenApiParameter(
    "task_id",
    {"type": "string", "pattern": "^[^\\u0000/]+$"},
    OpenApiParameter.PATH,
    description="The task id (an id that was never sent reads PENDING).",
)


class TaskSchema(AutoSchema):
    """drf-spectacular's schema, tagged ``tasks``."""

    def get_tags(self) -> list[str]:
        return ["tasks"]


def documented(**kwargs: Any) -> Callable[[_Method], _Method]:
    """drf-spectacular's ``extend_schema`` on a view method, extending :class:`TaskSchema`
    whatever the project's ``DEFAULT_SCHEMA_CLASS`` is."""

    def decorate(method: _Method) -> _Method:
        method.schema = TaskSchema  # type: ignore[attr-defined]  # read by extend_schema
        return extend_schema(**kwargs)(method)

    return decorate


class TaskResultAPIView(generics.GenericAPIView):
    """What the endpoints share: permissions from settings, the serializer and its context."""

    serializer_class = TaskResultSerializer
    schema = TaskSchema()

    def get_permissions(self) -> list[Any]:
        # Imported once by the settings object; a bad import string raises ImportError here on
        # every request (a server error: no access), and is reported by the system check.
        classes = tasks_settings.API_PERMISSION_CLASSES
        if not classes:
            return [DenyAll()]  # fail closed, whatever the system check said
        return [permission() for permission in classes]

    def get_queryset(self) -> TaskResultQuerySet:
        history = TaskStateChange.objects.only("task_id", "state", "at")
        queryset = TaskResult.objects.defer(*HIDDEN_COLUMNS).prefetch_related(
            Prefetch("history", queryset=history)
        )
        return with_json_text(queryset)

    def get_serializer_context(self) -> dict[str, Any]:
        user = getattr(self.request, "user", None)  # no request while building the schema
        every = reads_every_result(user)
        return {
            **super().get_serializer_context(),
            "expose_arguments": every or tasks_settings.API_EXPOSE_ARGUMENTS,
            "expose_traceback": every or tasks_settings.API_EXPOSE_TRACEBACKS,
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

    description = (
        "The task results you may see, newest first. Filter with ?state=, ?name= and "
        "?queue= (each may be repeated); page with ?page= and ?page_size=."
    )

    pagination_class = TaskResultPagination

    @documented(
        operation_id="listTasks",
        summary="The results you may see, newest first.",
        parameters=[
            OpenApiParameter(
                param,
                {"type": "array", "items": {"type": "string", "pattern": TEXT_PATTERN}},
                OpenApiParameter.QUERY,
                explode=True,
                description=f"Only results with this {what}: any of the values, given "
                "comma-separated or as the parameter repeated.",
            )
            for param, what in (("state", "state"), ("name", "task name"), ("queue", "queue"))
        ],
        responses={
            200: TaskResultSerializer(many=True),
            400: INVALID,
            401: SIGNED_OUT,
            403: FORBIDDEN,
            404: OpenApiResponse(DetailSerializer, description="No such page."),
        },
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> TaskResultQuerySet:
        queryset = super().get_queryset()
        if getattr(self, "swagger_fake_view", False):  # drf-spectacular, building the schema
            return queryset.none()
        narrowed = False
        for permission in self.get_permissions():
            if hasattr(permission, "filter_queryset"):
                queryset = permission.filter_queryset(self.request, queryset)
                narrowed = True
        if not narrowed:
            queryset = visible_results(self.request.user, queryset)
        params = self.request.query_params
        errors = {}
        for param, column in FILTERS:
            values = [v for raw in params.getlist(param) for v in raw.split(",") if v]
            if not all(usable_text(value) for value in values):
                errors[param] = ["Holds a NUL character or broken text."]
            elif values:
                queryset = queryset.filter(**{f"{column}__in": values})
        if errors:
            raise ValidationError(errors)
        return queryset


class TaskResultDetail(TaskResultAPIView):
    """``GET``: one task (an unknown id reads ``PENDING``), with ``ETag`` and ``?wait=N``."""

    description = (
        "One task: its state, outcome and history. An unknown id reads PENDING, as in Celery. "
        "Answers carry an ETag; ?wait=N long-polls until the task changes."
    )

    @documented(
        operation_id="getTask",
        summary="One task: its state, outcome and history; long-polls with ?wait=N.",
        parameters=[
            TASK_ID_PARAMETER,
            OpenApiParameter(
                "wait",
                {"type": "number", "minimum": 0},
                OpenApiParameter.QUERY,
                description="Long-poll: answer when the task changes, or after this many "
                "seconds (capped by API_MAX_WAIT). With If-None-Match, waits while that ETag "
                "is current.",
            ),
            OpenApiParameter(
                "If-None-Match",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description="ETags (weak comparison, or *): 304 while one matches.",
            ),
            ETAG_HEADER,
            RETRY_AFTER_HEADER,
        ],
        responses={
            200: TaskResultSerializer,
            304: OpenApiResponse(
                description="Not modified: If-None-Match matches (also when too many "
                "long-polls wait, with Retry-After)."
            ),
            400: INVALID,
            401: SIGNED_OUT,
            403: FORBIDDEN,
            404: OpenApiResponse(DetailSerializer, description="Not a task id (a NUL character)."),
            429: OpenApiResponse(
                DetailSerializer,
                description="Too many long-polls wait in this server process "
                "(API_MAX_LONG_POLLS): retry after Retry-After seconds.",
            ),
        },
    )
    def get(self, request: Request, task_id: str) -> Response:
        check_task_id(task_id)
        wait = self._wait_seconds()
        if_none_match = request.headers.get("If-None-Match", "")
        if not wait:
            data = self._data(task_id)
            return _answer(data, _etag(data), if_none_match)
        with Watch(task_id) as watch:  # subscribed before reading: no change slips by
            seen = change_marker(task_id)
            data = self._data(task_id)
            etag = _etag(data)
            if data["ready"] or (if_none_match and not etag_matches(etag, if_none_match)):
                return _answer(data, etag, if_none_match)  # nothing to wait for
            with longpoll.slot() as waiting:
                if not waiting:
                    return _too_many(etag, if_none_match)
                # Answer when what this user sees changes (not on changes hidden from them).
                deadline = time.monotonic() + wait
                while (remaining := deadline - time.monotonic()) > 0 and watch.wait_for_change(
                    seen, remaining
                ):
                    seen = change_marker(task_id)
                    data = self._data(task_id)
                    if _etag(data) != etag:
                        etag = _etag(data)
                        break
        return _answer(data, etag, if_none_match)

    def _wait_seconds(self) -> float:
        raw = single_param(self.request, "wait")
        if raw is None:
            return 0.0
        try:
            wait = float(raw)
        except ValueError:
            raise ValidationError({"wait": ["A number of seconds."]}) from None
        if not wait >= 0:
            raise ValidationError({"wait": ["A number of seconds (>= 0)."]})
        return min(wait, float(tasks_settings.API_MAX_WAIT))

    def _data(self, task_id: str) -> dict[str, Any]:
        task = self.get_result(task_id)
        if task is None:  # as in Celery: an unknown id is a task not run yet
            task = TaskResult(task_id=task_id, task_name="", state=states.PENDING)
        data: dict[str, Any] = self.get_serializer(task).data
        return data


class TaskResultRevoke(TaskResultAPIView):
    """``POST``: revoke a task that has not finished (owner or staff); 409 if it has."""

    description = (
        "POST to revoke this task if it has not finished (its owner or staff); "
        "a finished task answers 409."
    )

    @documented(
        operation_id="revokeTask",
        summary="Revoke a task that has not finished.",
        parameters=[TASK_ID_PARAMETER],
        request=None,
        responses={
            200: OpenApiResponse(
                TaskResultSerializer, description="Revoked: the task as it is now."
            ),
            401: SIGNED_OUT,
            403: FORBIDDEN,
            404: OpenApiResponse(
                DetailSerializer, description="No task with this id that you may revoke."
            ),
            409: OpenApiResponse(DetailSerializer, description="The task has already finished."),
        },
    )
    def post(self, request: Request, task_id: str) -> Response:
        check_task_id(task_id)
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


def _answer(data: dict[str, Any], etag: str, if_none_match: str) -> Response:
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if if_none_match and etag_matches(etag, if_none_match):
        return Response(status=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(data, headers=headers)


def _too_many(etag: str, if_none_match: str) -> Response:
    """Past ``API_MAX_LONG_POLLS``: 304 when the client's copy is current, else 429."""
    if if_none_match:  # it matches: a long-poll without a match does not wait
        headers = {
            "ETag": etag,
            "Cache-Control": "private, no-cache",
            "Retry-After": str(longpoll.RETRY_AFTER),
        }
        return Response(status=status.HTTP_304_NOT_MODIFIED, headers=headers)
    raise Throttled(
        wait=longpoll.RETRY_AFTER,
        detail="Too many long-polls wait in this server process; poll again shortly.",
    )


def _etag(data: Any) -> str:
    """A strong ETag of the representation: it changes whenever the JSON would."""
    body = json.dumps(data, cls=JSONEncoder, sort_keys=True, separators=(",", ":"))
    return quote_etag(hashlib.sha256(body.encode()).hexdigest()[:32])
