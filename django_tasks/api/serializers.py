"""The JSON form of a stored result, as in the contract's "HTTP API"."""

from __future__ import annotations

from typing import Any, cast

from rest_framework import serializers

from .. import states
from ..models import TaskResult


class StateChangeSerializer(serializers.Serializer):
    """One entry of a task's history: ``{"state", "at"}``."""

    state = serializers.CharField()
    at = serializers.DateTimeField(allow_null=True)


class TaskResultSerializer(serializers.ModelSerializer):
    """A task's state and outcome, with its history oldest first.

    ``args``, ``kwargs`` and ``traceback`` are included only when the view's context says
    so (``expose_arguments`` / ``expose_traceback``): for staff, or for owners when the
    ``API_EXPOSE_*`` settings allow it. Otherwise the keys are absent.
    """

    id = serializers.CharField(source="task_id")
    name = serializers.CharField(source="task_name")
    ready = serializers.SerializerMethodField()
    result = serializers.SerializerMethodField()
    states = serializers.SerializerMethodField()
    args = serializers.JSONField(read_only=True)
    kwargs = serializers.JSONField(read_only=True)
    traceback = serializers.CharField(read_only=True, allow_null=True)

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
            "args",
            "kwargs",
            "traceback",
        )
        read_only_fields = fields

    def get_ready(self, obj: TaskResult) -> bool:
        return obj.state in states.READY_STATES

    def get_result(self, obj: TaskResult) -> Any:
        """The return value; ``{"type", "message"}`` for failures; a custom state's meta."""
        if obj.state == states.SUCCESS:
            return obj.result
        if obj.state in states.EXCEPTION_STATES:
            return exception_summary(obj.result)
        if obj.state in (states.PENDING, states.RECEIVED, states.STARTED):
            return None
        return obj.meta

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
