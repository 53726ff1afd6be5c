"""The JSON form of a stored result, as in the contract's "HTTP API"."""

from __future__ import annotations

from typing import Any, cast

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from .. import states
from ..models import TaskResult
from . import values

#: Keys left out of the JSON unless the view's context exposes them.
OPTIONAL_FIELDS = ("args", "kwargs", "traceback")


@extend_schema_serializer(component_name="StateChange")
class StateChangeSerializer(serializers.Serializer):
    """One entry of a task's history: ``{"state", "at"}``."""

    state = serializers.CharField(
        read_only=True, help_text="A state name; custom states such as PROGRESS too."
    )
    at = serializers.DateTimeField(read_only=True, allow_null=True)


@extend_schema_serializer(component_name="Task")
class TaskResultSerializer(serializers.ModelSerializer):
    """A task's state and outcome, with its history oldest first.

    ``args``, ``kwargs`` and ``traceback`` are included only when the view's context says
    so (``expose_arguments`` / ``expose_traceback``): for those who read every result, or for
    owners when the ``API_EXPOSE_*`` settings allow it. Otherwise the keys are absent.
    Stored JSON values are shown depth-limited (:mod:`django_tasks.api.values`).
    """

    id = serializers.CharField(source="task_id", read_only=True)
    name = serializers.CharField(source="task_name", read_only=True)
    # Not a choice: custom states (update_state(state="PROGRESS")) are states too.
    state = serializers.CharField(
        read_only=True,
        help_text="PENDING, RECEIVED, STARTED, RETRY, SUCCESS, FAILURE, REVOKED, "
        "or a custom state.",
    )
    ready = serializers.SerializerMethodField()
    result = serializers.SerializerMethodField()
    date_created = serializers.DateTimeField(
        read_only=True, allow_null=True, help_text="null for an id that was never sent."
    )
    date_started = serializers.DateTimeField(read_only=True, allow_null=True)
    date_done = serializers.DateTimeField(read_only=True, allow_null=True)
    retries = serializers.IntegerField(read_only=True)
    queue = serializers.CharField(read_only=True)
    meta = serializers.SerializerMethodField()
    states = serializers.SerializerMethodField()
    args = serializers.SerializerMethodField()
    kwargs = serializers.SerializerMethodField()
    traceback = serializers.CharField(read_only=True, allow_null=True)
    parent_id = serializers.CharField(
        read_only=True, allow_null=True, help_text="The chain step before this one, if any."
    )
    group_id = serializers.CharField(
        read_only=True, allow_null=True, help_text="The group (or chord header) it is part of."
    )

    class Meta:
        model = TaskResult
        fields = (
            "id",
            "name",
            "state",
            "ready",
            "result",
            "date_created",
            "date_started",
            "date_done",
            "retries",
            "queue",
            "meta",
            "states",
            "parent_id",
            "group_id",
            "args",
            "kwargs",
            "traceback",
        )
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.BOOL)
    def get_ready(self, obj: TaskResult) -> bool:
        return obj.state in states.READY_STATES

    @extend_schema_field(
        {
            "description": "The return value for SUCCESS; {type, message} for FAILURE, RETRY "
            "and REVOKED; the meta of a custom state; null while PENDING, RECEIVED or STARTED.",
            "nullable": True,
        }
    )
    def get_result(self, obj: TaskResult) -> Any:
        """The return value; ``{"type", "message"}`` for failures; a custom state's meta."""
        if obj.state == states.SUCCESS:
            return values.stored(obj, "result")
        if obj.state in states.EXCEPTION_STATES:
            return exception_summary(values.stored(obj, "result"))
        if obj.state in (states.PENDING, states.RECEIVED, states.STARTED):
            return None
        return values.stored(obj, "meta")

    @extend_schema_field({"description": "What the task last reported.", "nullable": True})
    def get_meta(self, obj: TaskResult) -> Any:
        return values.stored(obj, "meta")

    @extend_schema_field(
        {"type": "array", "items": {}, "nullable": True, "description": "Positional arguments."}
    )
    def get_args(self, obj: TaskResult) -> Any:
        if not self.context.get("expose_arguments"):
            return None  # left out of the JSON (to_representation): not even decoded
        return values.stored(obj, "args")

    @extend_schema_field(
        {
            "type": "object",
            "additionalProperties": {},
            "nullable": True,
            "description": "Keyword arguments.",
        }
    )
    def get_kwargs(self, obj: TaskResult) -> Any:
        if not self.context.get("expose_arguments"):
            return None
        return values.stored(obj, "kwargs")

    @extend_schema_field(StateChangeSerializer(many=True))
    def get_states(self, obj: TaskResult) -> list[dict[str, Any]]:
        if obj.pk is None:
            return []
        rows = [{"state": state, "at": at} for state, at in obj.state_history()]
        # many=True builds a ListSerializer (data: a list); drf-stubs type it as the child.
        return cast("list[dict[str, Any]]", StateChangeSerializer(rows, many=True).data)

    def to_representation(self, instance: TaskResult) -> dict[str, Any]:
        data = super().to_representation(instance)
        if not self.context.get("expose_arguments"):
            del data["args"], data["kwargs"]
        if not self.context.get("expose_traceback"):
            del data["traceback"]
        return data


def exception_summary(stored: Any) -> dict[str, str] | None:
    """``{"type", "message"}`` from an exception stored as Celery's JSON form."""
    if not isinstance(stored, dict):
        return None
    message = stored.get("exc_message")
    if isinstance(message, list | tuple):
        message = " ".join(str(part) for part in message)
    return {"type": str(stored.get("exc_type", "")), "message": str(message or "")}
