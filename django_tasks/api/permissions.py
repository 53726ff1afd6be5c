"""Who may read and revoke which result; replace with ``DJANGO_TASKS["API_PERMISSION_CLASSES"]``.

A permission class may also define ``filter_queryset(request, queryset)``: the list endpoint
narrows its results with it. When none of the configured classes does, the list shows staff
every result and other users their own.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from ..models import TaskResult, TaskResultQuerySet


class IsOwnerOrStaff(BasePermission):
    """Signed-in users only; staff may see and revoke every result, others only their own.

    A result without an owner (sent without ``owner=``) is visible to staff only.
    """

    message = "You may only see and revoke tasks you sent."

    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.user and request.user.is_authenticated)

    def has_object_permission(self, request: Request, view: Any, obj: TaskResult) -> bool:
        user = request.user
        if user.is_staff:
            return True
        return obj.owner_id is not None and obj.owner_id == user.pk

    def filter_queryset(self, request: Request, queryset: TaskResultQuerySet) -> Any:
        return queryset.visible_to(request.user)
