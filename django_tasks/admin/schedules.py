"""``PeriodicTaskAdmin``: the periodic task entries, their schedules and their latest runs.

Entries made here (``source="admin"``) can be added, changed and deleted. Entries from
``DJANGO_TASKS["BEAT_SCHEDULE"]`` (``source="code"``) are written from the settings at every
worker start: here only ``enabled`` can be changed, and they cannot be deleted.

Saving a new entry, a changed schedule, or an entry switched back on sets its next run to the
schedule's next time from now: a re-enabled entry does not fire a catch-up run for the time it
was off. "Run now" (an action, and a button on the change page) sends one run at once.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import BadRequest, PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.forms.fields import InvalidJSONInput
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from ..api.values import MAX_DEPTH, limit_text, usable_text
from ..messages import safe_str, unstorable
from ..models import PeriodicTask, TaskJSONDecoder, TaskResult
from ..options import CALL_OPTIONS, build_outgoing
from ..registry import tasks_registry
from ..schedules import CRONTAB_FIELDS, crontab
from ..worker.beat import FORBIDDEN_OPTIONS, beat_timezone, run_now
from . import display

#: The fields that make an entry's schedule.
SCHEDULE_FIELDS = ("interval_seconds", *CRONTAB_FIELDS)
#: The options an entry may set: ``apply_async``'s, less those that place a task in a canvas
#: or give it an id (every run needs its own).
ENTRY_OPTIONS = frozenset(CALL_OPTIONS - FORBIDDEN_OPTIONS)
#: The longest JSON text an entry's args, kwargs or options may be.
MAX_JSON_CHARS = 100_000
#: Integers beyond a signed 64-bit one are not stored alike by every database.
MAX_INT = 2**63 - 1
#: What the admin says of entries from the settings.
CODE_ENTRY_HELP = (
    'This entry comes from DJANGO_TASKS["BEAT_SCHEDULE"] in the settings, which are written '
    "into it at every worker start: its task, schedule, arguments and options can only be "
    "changed there. Here it can only be switched off and on. It cannot be deleted here (it "
    "would come back at the next worker start): remove it from BEAT_SCHEDULE instead."
)

# -- the form -------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON can store")


def _checked_int(text: str) -> int:
    number = int(text)
    if abs(number) > MAX_INT:
        raise ValueError(f"the number {text[:30]}… is too large (at most 2**63 - 1 either way)")
    return number


def parse_json(text: str) -> Any:
    """``text`` decoded as the entry's JSON, or ``ValidationError`` saying what is wrong:
    not JSON, too long, nested deeper than ``MAX_DEPTH``, NaN or infinities, numbers too
    large, NUL characters or lone surrogates. Never lets the decoder recurse without bound."""
    if len(text) > MAX_JSON_CHARS:
        raise ValidationError(f"Too long: at most {MAX_JSON_CHARS:,} characters of JSON.")
    if limit_text(text, MAX_DEPTH) != text:
        raise ValidationError(f"Nested too deep: at most {MAX_DEPTH} levels of lists and objects.")
    try:
        value = json.loads(
            text, cls=TaskJSONDecoder, parse_constant=_reject_constant, parse_int=_checked_int
        )
    except RecursionError:
        raise ValidationError(
            f"Nested too deep: at most {MAX_DEPTH} levels of lists and objects."
        ) from None
    except Exception as exc:  # JSON errors, kombu's typed values, too long numbers
        raise ValidationError(f"Enter valid JSON: {safe_str(exc)}"[:500]) from None
    problem = unstorable(value, "the value")
    if problem is not None:
        raise ValidationError(f"Cannot be stored: {problem}."[:500])
    return value


class StorableJSONField(forms.JSONField):
    """A JSON form field that turns every value no database can store, and every text the
    decoder cannot take (any depth), into a form error (Django's raises for some of them)."""

    def to_python(self, value: Any) -> Any:
        if self.disabled:
            return value
        if value in self.empty_values:
            return None
        if isinstance(value, list | dict | int | float):
            return value
        return parse_json(str(value))

    def bound_data(self, data: Any, initial: Any) -> Any:
        # The form shown again with its errors: what was typed, as it was typed.
        if self.disabled:
            return initial
        if data is None:
            return None
        try:
            return parse_json(str(data))
        except ValidationError:
            return InvalidJSONInput(data)


class TaskNameInput(forms.TextInput):
    """A text input that suggests the registered task names (a ``<datalist>``)."""

    def render(
        self, name: str, value: Any, attrs: dict[str, Any] | None = None, renderer: Any = None
    ) -> SafeString:
        list_id = f"{(attrs or {}).get('id') or 'id_' + name}_choices"
        html = super().render(name, value, {**(attrs or {}), "list": list_id}, renderer)
        options = format_html_join(
            "", '<option value="{}">', ((n,) for n in sorted(tasks_registry))
        )
        return format_html('{}<datalist id="{}">{}</datalist>', html, list_id, options)


class PeriodicTaskForm(forms.ModelForm):
    """An admin-made entry, checked as the scheduler will use it: a registered task, exactly
    one valid schedule, and arguments and options that ``apply_async`` accepts."""

    class Meta:
        model = PeriodicTask
        fields = ("name", "task", "enabled", *SCHEDULE_FIELDS, "args", "kwargs", "options")
        field_classes = {
            "args": StorableJSONField,
            "kwargs": StorableJSONField,
            "options": StorableJSONField,
        }
        widgets = {
            "task": TaskNameInput(attrs={"size": 60, "autocomplete": "off"}),
            "args": forms.Textarea(attrs={"rows": 2, "cols": 60}),
            "kwargs": forms.Textarea(attrs={"rows": 3, "cols": 60}),
            "options": forms.Textarea(attrs={"rows": 3, "cols": 60}),
        }
        help_texts = {
            "task": "A registered task's name (suggestions appear as you type).",
            "args": "A JSON list, e.g. [1, 2]; empty for none.",
            "kwargs": 'A JSON object, e.g. {"label": "nightly"}; empty for none.',
            "options": (
                'A JSON object of apply_async options, e.g. {"queue": "lopri", "priority": 5}; '
                f"any of: {', '.join(sorted(ENTRY_OPTIONS))}."
            ),
        }

    def clean_task(self) -> str:
        name = (self.cleaned_data.get("task") or "").strip()
        if name not in tasks_registry:
            close = difflib.get_close_matches(name, list(tasks_registry), n=5, cutoff=0.5)
            if not close:  # the same function name in another module, say
                tail = name.rsplit(".", 1)[-1]
                close = sorted(n for n in tasks_registry if tail and n.endswith(f".{tail}"))[:5]
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ValidationError(f"No task named {name!r} is registered.{hint}"[:1000])
        return name

    def clean_args(self) -> list[Any]:
        value = self.cleaned_data.get("args")
        if value is None:
            return []
        if not isinstance(value, list):
            raise ValidationError(f"Enter a JSON list, not {_json_kind(value)}.")
        return value

    def _json_object(self, field: str) -> dict[str, Any]:
        value = self.cleaned_data.get(field)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValidationError(f"Enter a JSON object, not {_json_kind(value)}.")
        return value

    def clean_kwargs(self) -> dict[str, Any]:
        value = self._json_object("kwargs")
        if not all(isinstance(key, str) and key.isidentifier() for key in value):
            raise ValidationError("Each key must be a keyword argument's name.")
        return value

    def clean_options(self) -> dict[str, Any]:
        value = self._json_object("options")
        bad = sorted(set(value) - ENTRY_OPTIONS, key=str)
        if bad:
            raise ValidationError(
                f"Not an option a periodic task can set: {', '.join(map(repr, bad))}. "
                f"It can set: {', '.join(sorted(ENTRY_OPTIONS))}."[:1000]
            )
        return value

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or self.cleaned_data
        if all(name in self.fields for name in SCHEDULE_FIELDS):
            self._check_schedule(cleaned)
        if all(name in self.fields for name in ("task", "args", "kwargs", "options")):
            self._check_call(cleaned)
        return cleaned

    def _check_schedule(self, cleaned: dict[str, Any]) -> None:
        if any(name in self.errors for name in SCHEDULE_FIELDS):
            return
        every = cleaned.get("interval_seconds")
        given = [name for name in CRONTAB_FIELDS if cleaned.get(name)]
        if every is not None and given:
            self.add_error(
                None,
                "Give an interval or crontab fields, not both: clear the interval or "
                f"{', '.join(name.replace('_', ' ') for name in given)}.",
            )
            return
        if every is None and not given:
            self.add_error(
                None,
                "Give a schedule: an interval in seconds, or crontab fields (at least a minute).",
            )
            return
        entry = PeriodicTask(**{name: cleaned.get(name) or "" for name in CRONTAB_FIELDS})
        entry.interval_seconds = every
        try:
            entry.get_schedule()
        except ValueError as exc:
            if every is not None:
                self.add_error("interval_seconds", f"Not a usable interval: {exc}")
                return
            for name in given:  # the field at fault, when one is wrong on its own
                problem = crontab(**{name: cleaned[name]}).problem()
                if problem:
                    self.add_error(name, f"Not a valid crontab field: {problem}")
                    return
            self.add_error(None, f"Not a usable crontab: {exc}")

    def _check_call(self, cleaned: dict[str, Any]) -> None:
        """Check the call as a run will make it, without sending it."""
        if any(name in self.errors for name in ("task", "args", "kwargs", "options")):
            return
        task = tasks_registry.get(cleaned.get("task") or "")
        if task is None:
            return
        args, kwargs = cleaned.get("args") or [], cleaned.get("kwargs") or {}
        if task.typing:
            try:
                task.check_arguments(args, kwargs)
            except TypeError as exc:
                self.add_error("args", f"The task does not take these arguments: {exc}")
                return
        options = dict(cleaned.get("options") or {})
        headers = options.get("headers")
        if isinstance(headers, dict):
            options["headers"] = {"periodic_task_name": cleaned.get("name") or "", **headers}
        try:
            build_outgoing(task, "options", list(args), kwargs, options)
        except Exception as exc:  # each option's own check, or the arguments' encoding
            self.add_error("options", f"{type(exc).__name__}: {safe_str(exc)}"[:1000])


class SettingsEntryForm(PeriodicTaskForm):
    """A ``BEAT_SCHEDULE`` entry's form: only ``enabled``; the rest is shown read-only."""

    class Meta(PeriodicTaskForm.Meta):
        help_texts = {
            "enabled": "Switch this settings entry off or on (kept across worker starts)."
        }


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true or false"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )


# -- the admin --------------------------------------------------------------------------------


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(admin.ModelAdmin):
    form = PeriodicTaskForm
    list_display = (
        "name",
        "task",
        "schedule_display",
        "enabled",
        "last_run",
        "next_run",
        "total_runs",
        "source",
        "last_error_display",
    )
    list_filter = ("enabled", "source")
    search_fields = ("name", "task")
    search_help_text = "Search by entry name or task name."
    actions = ["run_selected_now"]
    #: What the change page shows, never edits.
    display_fields = (
        "source_display",
        "schedule_display",
        "next_run",
        "last_run",
        "last_due_time",
        "total_runs",
        "last_error_display",
        "recent_runs",
    )

    # -- what can be edited -------------------------------------------------------------

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        is_code = obj is not None and obj.source == PeriodicTask.SOURCE_CODE
        main: dict[str, Any] = {"fields": ("name", "task", "enabled")}
        if obj is not None:
            main["fields"] = ("name", "task", "enabled", "source_display")
        if is_code:
            main["description"] = CODE_ENTRY_HELP
        schedule = (
            "Schedule",
            {
                "fields": (*(("schedule_display",) if obj is not None else ()), *SCHEDULE_FIELDS),
                "description": (
                    "Either an interval in seconds, or crontab fields in Celery's syntax "
                    "(empty fields are *), read in the time zone "
                    f"{getattr(beat_timezone(), 'key', beat_timezone())}."
                ),
            },
        )
        fieldsets: list[tuple[str | None, dict[str, Any]]] = [
            (None, main),
            schedule,
            ("Call", {"fields": ("args", "kwargs", "options")}),
        ]
        if obj is not None:
            runs = tuple(
                f for f in self.display_fields if f not in ("source_display", "schedule_display")
            )
            fieldsets.append(("Runs", {"fields": runs}))
        return fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is not None and obj.source == PeriodicTask.SOURCE_CODE:
            return (
                "name",
                "task",
                *SCHEDULE_FIELDS,
                "args",
                "kwargs",
                "options",
                *self.display_fields,
            )
        return self.display_fields

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.source == PeriodicTask.SOURCE_CODE:
            return False  # it comes back at the next worker start
        return super().has_delete_permission(request, obj)

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is not None and obj.source == PeriodicTask.SOURCE_CODE:
            kwargs["form"] = SettingsEntryForm
        return super().get_form(request, obj, change, **kwargs)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        """Save the entry; a new entry, a new schedule, or an entry switched back on is next
        due at its schedule's next time from now. A changed entry writes only the form's
        fields, so that runs a scheduler records meanwhile are kept."""
        reschedule = (
            not change
            or any(name in form.changed_data for name in SCHEDULE_FIELDS)
            or ("enabled" in form.changed_data and obj.enabled)
        )
        if reschedule:
            try:
                obj.next_due = obj.get_schedule().next_after(timezone.now(), beat_timezone())
            except ValueError:
                obj.next_due = None  # not scheduled until it has a usable schedule
        if not change:
            super().save_model(request, obj, form, change)
            return
        names = {field.name for field in PeriodicTask._meta.concrete_fields}
        written = [name for name in form.fields if name in names]
        written += ["date_changed", *(["next_due"] if reschedule else [])]
        obj.save(update_fields=written)

    # -- run now ------------------------------------------------------------------------

    def get_urls(self) -> list[Any]:
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "<path:object_id>/run-now/",
                self.admin_site.admin_view(self.run_now_view),
                name="{}_{}_run_now".format(*info),
            ),
            *super().get_urls(),
        ]

    def run_now_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The change page's "Run now" button: POST only (CSRF-checked by the admin)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        entry = self.get_object(request, unquote(object_id))
        if entry is None:
            redirect: HttpResponse = self._get_obj_does_not_exist_redirect(  # type: ignore[attr-defined]
                request, self.opts, object_id
            )
            return redirect
        if not self.has_change_permission(request, entry):
            raise PermissionDenied
        self._run_now(request, [entry])
        info = self.opts.app_label, self.opts.model_name
        return HttpResponseRedirect(
            reverse(f"{self.admin_site.name}:{info[0]}_{info[1]}_change", args=[entry.pk])
        )

    @admin.action(description="Run the selected periodic tasks now", permissions=["change"])
    def run_selected_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._run_now(request, list(queryset))

    def _run_now(self, request: HttpRequest, entries: Iterable[PeriodicTask]) -> None:
        sent: list[tuple[PeriodicTask, str]] = []
        failed: list[str] = []
        for entry in entries:
            try:
                with transaction.atomic():
                    result = run_now(entry)
            except Exception as exc:  # an unknown task, arguments it refuses, a broker outage
                failed.append(f"{entry.name}: {type(exc).__name__}: {safe_str(exc)}")
            else:
                sent.append((entry, str(result.id)))
        if sent:
            pks = dict(
                TaskResult.objects.filter(
                    task_id__in=[task_id for _e, task_id in sent]
                ).values_list("task_id", "pk")
            )
            parts = format_html_join(
                ", ",
                "{} ({})",
                (
                    (entry.name, self._task_link(task_id, pks.get(task_id)))
                    for entry, task_id in sent
                ),
            )
            self.message_user(
                request, format_html("Sent {} run(s) now: {}.", len(sent), parts), messages.SUCCESS
            )
        if failed:
            self.message_user(
                request, f"Could not run: {'; '.join(failed)}"[:2000], level=messages.ERROR
            )

    def _task_link(self, task_id: str, pk: int | None) -> SafeString:
        if pk is None:  # not stored (yet): its id, to look up later
            return format_html("task {}", task_id)
        url = reverse(f"{self.admin_site.name}:django_tasks_taskresult_change", args=[pk])
        return format_html('<a href="{}">task {}</a>', url, task_id)

    # -- the pages ----------------------------------------------------------------------

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        # Filters and search go into queries as text: PostgreSQL rejects a NUL character.
        for key, items in request.GET.lists():
            if not all(usable_text(text) for text in (key, *items)):
                raise BadRequest("A filter or the search holds a NUL character or broken text.")
        return super().changelist_view(request, extra_context)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> Any:
        entry = self.get_object(request, unquote(object_id))
        extra_context = dict(extra_context or {})
        if entry is not None and self.has_change_permission(request, entry):
            info = self.opts.app_label, self.opts.model_name
            extra_context["run_now_url"] = reverse(
                f"{self.admin_site.name}:{info[0]}_{info[1]}_run_now", args=[entry.pk]
            )
        return super().change_view(request, object_id, form_url, extra_context)

    # -- columns and fields -------------------------------------------------------------

    @admin.display(description="schedule")
    def schedule_display(self, obj: PeriodicTask) -> str:
        try:
            schedule = obj.get_schedule()
        except ValueError as exc:
            return format_html('<span class="errornote">invalid schedule: {}</span>', str(exc))
        text = schedule.describe()
        if isinstance(schedule, crontab):
            tz = beat_timezone()
            text = f"{text} in {getattr(tz, 'key', tz)}"
        return text

    @admin.display(description="source", ordering="source")
    def source_display(self, obj: PeriodicTask) -> str:
        if obj.source == PeriodicTask.SOURCE_CODE:
            return "settings (BEAT_SCHEDULE): only “enabled” can be changed here"
        return "made in the admin"

    @admin.display(description="next run", ordering="next_due")
    def next_run(self, obj: PeriodicTask) -> str:
        if not obj.enabled:
            return "- (disabled)"
        return display.short_time(obj.next_due)

    @admin.display(description="last run", ordering="last_run_at")
    def last_run(self, obj: PeriodicTask) -> str:
        return display.short_time(obj.last_run_at)

    @admin.display(description="last due time")
    def last_due_time(self, obj: PeriodicTask) -> str:
        return display.short_time(obj.last_due)

    @admin.display(description="last error")
    def last_error_display(self, obj: PeriodicTask) -> str:
        if not obj.last_error:
            return ""
        shown = obj.last_error if len(obj.last_error) <= 120 else f"{obj.last_error[:117]}…"
        return format_html('<span title="{}">{}</span>', obj.last_error, shown)

    @admin.display(description="recent runs")
    def recent_runs(self, obj: PeriodicTask) -> str:
        """The latest runs, newest first: each a link to its task, its state and when it
        finished (one query for them all)."""
        task_ids = [t for t in (obj.recent_task_ids or []) if isinstance(t, str)]
        if not task_ids:
            return display.EMPTY
        found = {
            row[0]: row[1:]
            for row in TaskResult.objects.filter(task_id__in=task_ids).values_list(
                "task_id", "pk", "state", "date_done"
            )
        }
        rows = []
        for task_id in task_ids:
            if task_id in found:
                pk, state, done = found[task_id]
                rows.append(
                    format_html(
                        "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                        self._task_link(task_id, pk),
                        display.state_badge(state),
                        display.short_time(done),
                    )
                )
            else:
                rows.append(
                    format_html(
                        "<tr><td>task {}</td><td colspan=2>not stored (purged?)</td></tr>", task_id
                    )
                )
        return format_html(
            '<table class="dt-recent-runs"><thead><tr><th>task</th><th>state</th>'
            "<th>done</th></tr></thead><tbody>{}</tbody></table>",
            format_html_join("", "{}", ((row,) for row in rows)),
        )
