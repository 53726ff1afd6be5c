"""The admin's extra pages: the queue overview and purging old results."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.views.generic import FormView, TemplateView
from django.views.generic.base import ContextMixin, View

from ..conf import tasks_settings
from ..models import TaskResult, WorkerRecord
from ..store import finished_before, purge_finished
from . import display

#: The oldest due task's age up to which a queue counts as keeping up, then as busy.
KEEPING_UP_SECONDS = 10
BUSY_SECONDS = 60


if TYPE_CHECKING:
    # What the mixin is mixed into, for the type checker (at run time it is a plain mixin).
    class _AdminPage(ContextMixin, View): ...
else:
    _AdminPage = object


class AdminPageMixin(_AdminPage):
    """What the admin's templates need: the site's context, the model's options, a title."""

    model_admin: Any = None
    title = ""
    permission = "view"

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not getattr(self.model_admin, f"has_{self.permission}_permission")(request):
            raise PermissionDenied
        return super().dispatch(request, *args, **kwargs)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        return {
            **self.model_admin.admin_site.each_context(self.request),
            **context,
            "opts": TaskResult._meta,
            "title": self.title,
            "changelist_url": self.changelist_url(),
        }

    def changelist_url(self) -> str:
        return reverse(f"{self.model_admin.admin_site.name}:django_tasks_taskresult_changelist")


class QueueOverview(AdminPageMixin, TemplateView):
    """Per queue: due, scheduled, running, failed and succeeded in the last hour, lag; then
    the workers not stopped (live, or stale: no heartbeat within the lease)."""

    template_name = "admin/django_tasks/taskresult/queues.html"
    title = "Queue overview"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        now = timezone.now()
        rows = TaskResult.objects.queue_overview(now)
        for row in rows:
            age = (now - row["oldest_due"]).total_seconds() if row["oldest_due"] else None
            row["oldest_due_age"] = display.duration(age)
            row["status"], row["status_class"] = _status(age)
        return super().get_context_data(queues=rows, workers=self.workers(now), now=now, **kwargs)

    def workers(self, now: dt.datetime) -> list[dict[str, Any]]:
        lease = float(tasks_settings.WORKER_LEASE_SECONDS)
        site = self.model_admin.admin_site.name
        rows = []
        for worker in WorkerRecord.objects.filter(stopped__isnull=True):
            status = worker.status(now, lease)
            running = [
                {
                    **task,
                    "url": reverse(f"{site}:django_tasks_taskresult_change", args=[task["id"]]),
                }
                for task in worker.running
                if isinstance(task, dict) and isinstance(task.get("id"), int)
            ]
            rows.append(
                {
                    "worker": worker,
                    "status": status,
                    "status_class": "success" if status == WorkerRecord.LIVE else "failure",
                    "heartbeat_age": display.duration(
                        (now - worker.last_heartbeat).total_seconds()
                    ),
                    "running": running,
                }
            )
        return rows


def _status(oldest_due_age: float | None) -> tuple[str, str]:
    if oldest_due_age is None or oldest_due_age <= KEEPING_UP_SECONDS:
        return "keeping up", "success"
    if oldest_due_age <= BUSY_SECONDS:
        return "busy", "retry"
    return "falling behind", "failure"


#: The most days the purge page takes: a century (the cutoff must be a date).
MAX_PURGE_DAYS = 36500


class PurgeForm(forms.Form):
    # FloatField refuses nan and inf; the bounds keep now - days a date (no OverflowError).
    days = forms.FloatField(
        min_value=0,
        max_value=MAX_PURGE_DAYS,
        label="Older than (days)",
        help_text="Finished results done more than this many days ago are deleted.",
    )


class PurgeResults(AdminPageMixin, FormView):
    """Delete finished results older than N days, after showing how many that is."""

    template_name = "admin/django_tasks/taskresult/purge.html"
    title = "Purge old results"
    form_class = PurgeForm
    permission = "purge"

    def get_initial(self) -> dict[str, Any]:
        expires = tasks_settings.RESULT_EXPIRES
        return {"days": round(expires / 86400, 2) if expires else 1}

    def get_form_kwargs(self) -> dict[str, Any]:
        kwargs = super().get_form_kwargs()
        if "days" in self.request.GET:  # "count" step: the same form, submitted by GET
            kwargs["data"] = self.request.GET
        return kwargs

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        form = context["form"]
        if form.is_bound and form.is_valid():
            cutoff = timezone.now() - dt.timedelta(days=form.cleaned_data["days"])
            context["matching"] = finished_before(cutoff).count()
        return context

    def form_valid(self, form: PurgeForm) -> HttpResponse:
        days = form.cleaned_data["days"]
        deleted = purge_finished(dt.timedelta(days=days))
        messages.success(
            self.request, f"Deleted {deleted} finished result(s) older than {days:g} day(s)."
        )
        return HttpResponseRedirect(self.changelist_url())
