"""The admin: browse task results and their state history (read-only)."""

from __future__ import annotations

from django.contrib import admin

from .models import TaskResult, TaskStateChange


class TaskStateChangeInline(admin.TabularInline):
    model = TaskStateChange
    fields = ("state", "at", "worker", "detail")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(TaskResult)
class TaskResultAdmin(admin.ModelAdmin):
    list_display = (
        "task_id",
        "task_name",
        "state",
        "queue",
        "retries",
        "date_created",
        "date_done",
    )
    list_filter = ("state", "queue", "task_name")
    search_fields = ("task_id", "task_name")
    date_hierarchy = "date_created"
    inlines = [TaskStateChangeInline]
    readonly_fields = [f.name for f in TaskResult._meta.fields if f.name != "id"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
