"""``TaskResultAdmin``: the result browser. Rows are read-only; changes go through actions."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import BadRequest, ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, Max, Min, Prefetch, QuerySet, Window
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from .. import states, store
from ..api import values
from ..api.values import usable_text
from ..models import TaskGroup, TaskResult, TaskResultQuerySet, TaskStateChange
from . import display, views
from .rerun import rerun

#: A whole UUID task id, as pasted from a log or the API.
TASK_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

#: The start of a task id, such as the short id the changelist shows.
TASK_ID_PREFIX = re.compile(r"[0-9a-fA-F][0-9a-fA-F-]{7,}")

#: Columns the changelist never shows: left out of its query.
LIST_DEFERRED = ("args", "kwargs", "result", "traceback", "meta", "body", "options")


class TaskStateChangeInline(admin.TabularInline):
    """The task's history: every state it went through, when, on which worker, and why."""

    model = TaskStateChange
    fields = ("state_badge", "at_precise", "worker", "detail")
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name_plural = "history (after the initial PENDING)"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # The inline never shows ``meta``, which may be nested too deep to decode.
        return super().get_queryset(request).defer("meta")

    @admin.display(description="state")
    def state_badge(self, change: TaskStateChange) -> str:
        return display.state_badge(change.state)

    @admin.display(description="at")
    def at_precise(self, change: TaskStateChange) -> str:
        return display.timestamp(change.at)


class RangeDatesQuerySet(TaskResultQuerySet):
    """The admin's queryset: date-hierarchy links from the first and last dates only.

    Django's date hierarchy asks ``datetimes(field, kind)`` for the distinct years, months
    or days, which truncates the date of every matching row (a full scan; on SQLite a Python
    function call per row). Here the periods between the first and the last date are listed
    instead, from one ``MIN``/``MAX`` that the date indexes answer; a period without results
    may show, and leads to an empty page.
    """

    #: ``(field, first, last)`` when the bounds of these rows are already known (the searched
    #: page's query finds them), so that the date hierarchy does not scan the rows again.
    known_bounds: tuple[str, Any, Any] | None = None

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if self.known_bounds and not args:
            field_name, first, last = self.known_bounds
            if kwargs == {"first": Min(field_name), "last": Max(field_name)}:
                return {"first": first, "last": last}  # the date hierarchy's question
        return super().aggregate(*args, **kwargs)

    def datetimes(self, field_name: str, kind: str, order: str = "ASC", tzinfo: Any = None) -> Any:
        bounds = self.aggregate(first=Min(field_name), last=Max(field_name))
        if bounds["first"] is None:
            return []
        tz = tzinfo or timezone.get_current_timezone()
        first = timezone.localtime(bounds["first"], tz).date()
        last = timezone.localtime(bounds["last"], tz).date()
        periods = []
        day = first.replace(month=1, day=1) if kind == "year" else first
        day = day.replace(day=1) if kind == "month" else day
        while day <= last:
            periods.append(dt.datetime.combine(day, dt.time(), tzinfo=tz))
            if kind == "year":
                day = day.replace(year=day.year + 1)
            elif kind == "month":
                day = (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
            else:
                day += dt.timedelta(days=1)
        return periods[::-1] if order == "DESC" else periods


class KnownCountPaginator(Paginator):
    """A paginator told its count, so that it does not run a ``COUNT`` query of its own."""

    def __init__(self, object_list: Any, per_page: int, count: int) -> None:
        super().__init__(object_list, per_page)
        self.known_count = count

    @property
    def count(self) -> int:
        return self.known_count


class TaskResultChangeList(ChangeList):
    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet:
        return super().get_queryset(request, exclude_parameters).defer(*LIST_DEFERRED)

    def get_results(self, request: HttpRequest) -> None:
        """A searched page, its count and its date range in one query.

        Free-text search cannot use an index, so Django's queries for the paginator's
        ``COUNT``, the page, and the date hierarchy's first and last dates would each scan
        every row. Window aggregates (``COUNT(*) OVER ()``) find them all in one scan.
        """
        if not self.query or self.show_all:
            return super().get_results(request)
        start = (self.page_num - 1) * self.list_per_page
        field = self.date_hierarchy or "date_created"
        page = self.queryset.annotate(
            matches=Window(Count("pk")), first_date=Window(Min(field)), last_date=Window(Max(field))
        )
        rows = list(page[start : start + self.list_per_page])
        if not rows and self.page_num != 1:
            return super().get_results(request)  # past the last page: Django's error
        count = rows[0].matches if rows else 0
        if isinstance(self.queryset, RangeDatesQuerySet):
            first, last = (rows[0].first_date, rows[0].last_date) if rows else (None, None)
            self.queryset.known_bounds = (field, first, last)
        self.result_count = count
        self.show_full_result_count = self.model_admin.show_full_result_count
        self.full_result_count = self.root_queryset.count() if self.show_full_result_count else None
        self.show_admin_actions = not self.show_full_result_count or bool(self.full_result_count)
        self.result_list = rows
        self.can_show_all = count <= self.list_max_show_all
        self.multi_page = count > self.list_per_page
        self.paginator = KnownCountPaginator(self.queryset, self.list_per_page, count)


@admin.register(TaskResult)
class TaskResultAdmin(admin.ModelAdmin):
    list_display = (
        "short_id",
        "task_name_display",
        "state_badge",
        "queue",
        "retries",
        "created",
        "started_in_list",
        "done_in_list",
        "runtime_display",
    )
    list_filter = ("state", "task_name", "queue", "date_created")
    # Ids are stored in lower case, so the id takes a plain LIKE (the search term is lowered),
    # which costs a third of the case-folding one the other fields need.
    search_fields = ("task_id__contains", "task_name", "args", "kwargs")
    search_help_text = "Search by task id, task name or arguments."
    date_hierarchy = "date_created"
    list_per_page = 50
    show_full_result_count = False
    actions = ["rerun_tasks", "revoke_tasks"]
    inlines = [TaskStateChangeInline]
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "task_id",
                    "task_name",
                    "state_badge",
                    "state_path",
                    "progress_display",
                    "queue",
                    "priority",
                    "retries",
                    "worker",
                    "owner",
                    "rerun_of_link",
                    "reruns_links",
                )
            },
        ),
        (
            "Times",
            {
                "fields": (
                    "created",
                    "run_after_time",
                    "started",
                    "done",
                    "runtime_display",
                    "expires_time",
                )
            },
        ),
        ("Canvas", {"fields": ("parent_link", "group_link", "chord_display")}),
        ("Arguments", {"fields": ("args_display", "kwargs_display")}),
        ("Outcome", {"fields": ("result_display", "meta_display", "traceback_display")}),
    )
    # Each fieldset lists single fields (no side-by-side groups): names only.
    readonly_fields = tuple(
        name for _title, opts in fieldsets for name in cast("tuple[str, ...]", opts["fields"])
    )

    # -- read-only rows -------------------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Re-run and revoke: users with the model's change permission."""
        return request.user.has_perm("django_tasks.change_taskresult")

    def has_purge_permission(self, request: HttpRequest) -> bool:
        """Purging old results: users with the model's delete permission."""
        return request.user.has_perm("django_tasks.delete_taskresult")

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        return RangeDatesQuerySet(model=queryset.model, query=queryset.query, using=queryset.db)

    def get_object(self, request: HttpRequest, object_id: str, from_field: Any = None) -> Any:
        """The task, its JSON columns read as text and shown depth-limited
        (:mod:`django_tasks.api.values`): no stored value is too deep for the detail page."""
        history = TaskStateChange.objects.only("task_id", "state", "at")  # not its meta
        queryset = values.with_json_text(self.get_queryset(request)).prefetch_related(
            Prefetch("history", queryset=history)
        )
        field = (
            TaskResult._meta.pk if from_field is None else TaskResult._meta.get_field(from_field)
        )
        try:
            return queryset.get(**{field.name: field.to_python(object_id)})  # type: ignore[union-attr]
        except (TaskResult.DoesNotExist, ValidationError, ValueError):
            return None

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        """``…/taskresult/<task_id>/change/`` redirects to the task's own page (its pk URL), so
        a task id from a log line or the API opens its result. A number is always a pk."""
        task_id = unquote(object_id)
        if not task_id.isdigit() and usable_text(task_id) and len(task_id) <= 255:
            pk = (
                self.get_queryset(request)
                .filter(task_id__in={task_id, task_id.lower()})
                .values_list("pk", flat=True)
                .first()
            )
            if pk is not None:
                return HttpResponseRedirect(self._change_url(pk))
        return super().change_view(request, object_id, form_url, extra_context)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        """Find tasks by id, by the start of their id, or by text in the name or arguments.

        A whole id, or the start of one (8 characters or more, such as the short id shown in
        the list) that some task id begins with, is looked up by the id's index. Anything
        else is matched, case-insensitively, against the id, the name and the arguments.
        """
        term = search_term.strip()
        if TASK_ID.fullmatch(term):
            return queryset.filter(task_id__in={term, term.lower()}), False
        if TASK_ID_PREFIX.fullmatch(term):
            by_prefix = queryset.filter(task_id__startswith=term.lower())
            if by_prefix.exists():
                return by_prefix, False
        return super().get_search_results(request, queryset, search_term.lower())

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return TaskResultChangeList

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "queues/",
                wrap(views.QueueOverview.as_view(model_admin=self)),
                name="{}_{}_queues".format(*info),
            ),
            path(
                "purge/",
                wrap(views.PurgeResults.as_view(model_admin=self)),
                name="{}_{}_purge".format(*info),
            ),
            *super().get_urls(),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        # Filters and search go into queries as text: PostgreSQL rejects a NUL character.
        for key, items in request.GET.lists():
            if not all(usable_text(text) for text in (key, *items)):
                raise BadRequest("A filter or the search holds a NUL character or broken text.")
        extra_context = {
            **(extra_context or {}),
            "can_purge": self.has_purge_permission(request),
        }
        return super().changelist_view(request, extra_context)

    # -- columns and fields ---------------------------------------------------------------

    @admin.display(description="id", ordering="task_id")
    def short_id(self, obj: TaskResult) -> str:
        return format_html('<span title="{}">{}</span>', obj.task_id, obj.task_id[:8])

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj: TaskResult) -> str:
        return display.state_badge(obj.state)

    @admin.display(description="created", ordering="date_created")
    def created(self, obj: TaskResult) -> str:
        return display.short_time(obj.date_created)

    @admin.display(description="started", ordering="date_started")
    def started(self, obj: TaskResult) -> str:
        return display.short_time(obj.date_started)

    @admin.display(description="done", ordering="date_done")
    def done(self, obj: TaskResult) -> str:
        return display.short_time(obj.date_done)

    # The list's columns: a name that wraps at its dots, and start and end times without the
    # date on the day the task was created, so that the list fits 1,400 pixels.
    @admin.display(description="task name", ordering="task_name")
    def task_name_display(self, obj: TaskResult) -> str:
        return display.dotted_name(obj.task_name)

    @admin.display(description="started", ordering="date_started")
    def started_in_list(self, obj: TaskResult) -> str:
        return display.list_time(obj.date_started, obj.date_created)

    @admin.display(description="done", ordering="date_done")
    def done_in_list(self, obj: TaskResult) -> str:
        return display.list_time(obj.date_done, obj.date_created)

    @admin.display(description="run after")
    def run_after_time(self, obj: TaskResult) -> str:
        return display.short_time(obj.run_after)

    @admin.display(description="expires")
    def expires_time(self, obj: TaskResult) -> str:
        return display.short_time(obj.expires)

    @admin.display(description="runtime")
    def runtime_display(self, obj: TaskResult) -> str:
        return display.duration(obj.runtime)

    @admin.display(description="path")
    def state_path(self, obj: TaskResult) -> str:
        return display.state_path(obj.state_history())

    @admin.display(description="progress")
    def progress_display(self, obj: TaskResult) -> str:
        reported = display.progress(values.stored(obj, "meta"))
        if reported is None:
            return display.EMPTY
        if obj.state == "SUCCESS":
            reported = (reported[1], reported[1])
        return display.progress_bar(*reported)

    @admin.display(description="re-run of")
    def rerun_of_link(self, obj: TaskResult) -> str:
        if obj.rerun_of_id is None:
            return display.EMPTY
        original = TaskResult.objects.only("task_id").get(pk=obj.rerun_of_id)
        return display.links([(self._change_url(original.pk), original.task_id)])

    @admin.display(description="re-runs")
    def reruns_links(self, obj: TaskResult) -> str:
        reruns = obj.reruns.order_by("date_created").values_list("pk", "task_id")
        return (
            display.links((self._change_url(pk), task_id) for pk, task_id in reruns)
            or display.EMPTY
        )

    @admin.display(description="parent")
    def parent_link(self, obj: TaskResult) -> str:
        """The chain step before this one."""
        return self._task_link(obj.parent_id) if obj.parent_id else display.EMPTY

    @admin.display(description="group")
    def group_link(self, obj: TaskResult) -> str:
        """The group's tasks (a filtered list) and its progress: how many have finished."""
        if not obj.group_id:
            return display.EMPTY
        size = TaskGroup.objects.filter(group_id=obj.group_id).values_list("size", flat=True)
        members = TaskResult.objects.filter(group_id=obj.group_id)
        total = size.first() or members.count()
        done = members.filter(state__in=states.READY_STATES).count()
        url = reverse(f"{self.admin_site.name}:django_tasks_taskresult_changelist")
        return format_html(
            '<a href="{}?group_id={}">{}</a> (task {} of {}), {} of {} done {}',
            url,
            obj.group_id,
            obj.group_id,
            (obj.group_index or 0) + 1,
            total,
            done,
            total,
            display.progress_bar(done, total) if total else "",
        )

    @admin.display(description="chord")
    def chord_display(self, obj: TaskResult) -> str:
        """The chord this task is in the header of, or whose body it is, and its state."""
        chord = None
        if obj.chord_id:
            chord = TaskGroup.objects.filter(group_id=obj.chord_id).first()
        if chord is None:
            chord = TaskGroup.objects.filter(body_task_id=obj.task_id).first()
        if chord is None or chord.chord_state is None:
            return display.EMPTY
        role = "body" if chord.body_task_id == obj.task_id else "header task"
        state = {
            TaskGroup.CHORD_PENDING: f"waiting for {chord.remaining} of {chord.size} header tasks",
            TaskGroup.CHORD_SENT: "all header tasks succeeded; body sent",
            TaskGroup.CHORD_FAILED: "failed: a header task did not succeed",
            TaskGroup.CHORD_REVOKED: "revoked",
        }.get(chord.chord_state, chord.chord_state)
        parts = [format_html("{} ({}): {}", chord.group_id, role, state)]
        if chord.body_task_id and role != "body":
            parts.append(format_html("body: {}", self._task_link(chord.body_task_id)))
        if chord.failed_task_id:
            parts.append(format_html("failed: {}", self._task_link(chord.failed_task_id)))
        return format_html_join("; ", "{}", ((part,) for part in parts))

    def _task_link(self, task_id: str) -> str:
        """A link to the task ``task_id``, or its id alone while it is not sent."""
        pk = TaskResult.objects.filter(task_id=task_id).values_list("pk", flat=True).first()
        if pk is None:
            return format_html("{} (not sent yet)", task_id)
        return display.links([(self._change_url(pk), task_id)])

    @admin.display(description="args")
    def args_display(self, obj: TaskResult) -> str:
        if obj.body is not None:
            return f"encoded ({obj.content_type}, {len(obj.body)} bytes)"
        return display.pretty_json(values.stored(obj, "args"))

    @admin.display(description="kwargs")
    def kwargs_display(self, obj: TaskResult) -> str:
        if obj.body is not None:
            return "in the encoded body"
        return display.pretty_json(values.stored(obj, "kwargs"))

    @admin.display(description="result")
    def result_display(self, obj: TaskResult) -> str:
        return display.pretty_json(values.stored(obj, "result"))

    @admin.display(description="meta")
    def meta_display(self, obj: TaskResult) -> str:
        return display.pretty_json(values.stored(obj, "meta"))

    @admin.display(description="traceback")
    def traceback_display(self, obj: TaskResult) -> str:
        return display.traceback_block(obj.traceback)

    def _change_url(self, pk: int) -> str:
        return reverse(f"{self.admin_site.name}:django_tasks_taskresult_change", args=[pk])

    # -- actions --------------------------------------------------------------------------

    @admin.action(description="Re-run the selected tasks", permissions=["operate"])
    def rerun_tasks(self, request: HttpRequest, queryset: QuerySet) -> None:
        sent, failed = 0, []
        for original in queryset.select_related(None):
            try:
                rerun(original)
            except Exception as exc:
                failed.append(f"{original.task_id[:8]} ({type(exc).__name__}: {exc})")
            else:
                sent += 1
        if sent:
            self.message_user(request, f"Sent {sent} new task(s), linked to their originals.")
        if failed:
            self.message_user(
                request, f"Could not re-run: {'; '.join(failed)}", level=messages.ERROR
            )

    @admin.action(
        description="Revoke the selected tasks (if not finished)",
        permissions=["operate"],
    )
    def revoke_tasks(self, request: HttpRequest, queryset: QuerySet) -> None:
        task_ids = list(queryset.values_list("task_id", flat=True))
        revoked = sum(store.revoke(task_id, reason="revoked in the admin") for task_id in task_ids)
        skipped = len(task_ids) - revoked
        self.message_user(request, f"Revoked {revoked} task(s).")
        if skipped:
            self.message_user(
                request,
                f"{skipped} task(s) had already finished and were left as they were.",
                level=messages.WARNING,
            )
