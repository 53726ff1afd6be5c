"""Who may read and revoke which result; replace with ``DJANGO_TASKS["API_PERMISSION_CLASSES"]``.

A permission class may also define ``filter_queryset(request, queryset)``: the list endpoint
narrows its results with it. When none of the configured classes does, the list shows
:func:`visible_results`.
"""

from __future__ import annotations

from typing import Any, TypeVar

from django.db.models import QuerySet
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from ..models import TaskResult

_Results = TypeVar("_Results", bound=QuerySet[TaskResult])

#: Either lets staff read every result, as either lets them browse results in the admin.
VIEW_PERMISSIONS = ("django_tasks.view_taskresult", "django_tasks.change_taskresult")
#: Lets staff revoke anyone's task, as it lets them use the admin's revoke action.
REVOKE_PERMISSION = "django_tasks.change_taskresult"


def _signed_in(user: Any) -> bool:
    return bool(user is not None and getattr(user, "is_authenticated", False))


def reads_every_result(user: Any) -> bool:
    """Superusers, and staff with the model's view (or change) permission, as in the admin."""
    if not _signed_in(user) or not getattr(user, "is_active", False):
        return False
    if user.is_superuser:
        return True
    return bool(user.is_staff) and any(user.has_perm(perm) for perm in VIEW_PERMISSIONS)


def revokes_every_task(user: Any) -> bool:
    """Superusers, and staff with the model's change permission (the admin's actions)."""
    if not _signed_in(user) or not getattr(user, "is_active", False):
        return False
    return bool(user.is_superuser or (user.is_staff and user.has_perm(REVOKE_PERMISSION)))


def owns(user: Any, task: TaskResult) -> bool:
    return _signed_in(user) and task.owner_id is not None and task.owner_id == user.pk


def visible_results(user: Any, queryset: _Results) -> _Results:
    """What ``user`` may read: every result (:func:`reads_every_result`), else their own."""
    if reads_every_result(user):
        return queryset
    if not _signed_in(user):
        return queryset.none()
    return queryset.filter(owner_id=user.pk)


class IsOwnerOrStaff(BasePermission):
    """Signed-in users only. Superusers and staff with the view permission read every result
    (revoking anyone's task takes the change permission); everybody else, staff without
    those permissions included, reads and revokes only their own.

    A result without an owner (sent without ``owner=``) is visible to those who read every
    result only.
    """

    message = "You may only see and revoke tasks you sent."

    def has_permission(self, request: Request, view: Any) -> bool:
        return _signed_in(request.user)

    def has_object_permission(self, request: Request, view: Any, obj: TaskResult) -> bool:
        user = request.user
        if owns(user, obj):
            return True
        if request.method in SAFE_METHODS:
            return reads_every_result(user)
        return revokes_every_task(user)

    def filter_queryset(self, request: Request, queryset: QuerySet[TaskResult]) -> Any:
        return visible_results(request.user, queryset)


class DenyAll(BasePermission):
    """What the endpoints check when ``API_PERMISSION_CLASSES`` is empty: nothing is allowed
    (an empty list fails closed; the system check reports it)."""

    message = 'DJANGO_TASKS["API_PERMISSION_CLASSES"] is empty: the task API answers no request.'

    def has_permission(self, request: Request, view: Any) -> bool:
        return False

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        return False
