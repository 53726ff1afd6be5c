"""The periodic task admin: adding and checking entries, settings entries read-only but for
``enabled``, next runs recomputed when they should be, and "run now"."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_tasks.models import PeriodicTask, TaskResult
from django_tasks.testing import run_until_empty

pytestmark = pytest.mark.django_db

ADD = "admin:django_tasks_periodictask_add"
CHANGELIST = "admin:django_tasks_periodictask_changelist"
ADD_TASK = "tests.taskapp.tasks.add"
RECORD_TASK = "tests.taskapp.tasks.record"


def change_url(entry: PeriodicTask) -> str:
    return reverse("admin:django_tasks_periodictask_change", args=[entry.pk])


def run_now_url(entry: PeriodicTask) -> str:
    return reverse("admin:django_tasks_periodictask_run_now", args=[entry.pk])


def form_data(**changes: str) -> dict[str, str]:
    data = {
        "name": "every half minute",
        "task": ADD_TASK,
        "enabled": "on",
        "interval_seconds": "30",
        "minute": "",
        "hour": "",
        "day_of_week": "",
        "day_of_month": "",
        "month_of_year": "",
        "args": "[1, 2]",
        "kwargs": "",
        "options": "",
    }
    data.update(changes)
    return {key: value for key, value in data.items() if value is not None}


def make_entry(**fields) -> PeriodicTask:
    values = {
        "name": "nightly",
        "task": ADD_TASK,
        "interval_seconds": 60.0,
        "args": [1, 2],
        "next_due": timezone.now() + dt.timedelta(seconds=60),
        **fields,
    }
    return PeriodicTask.objects.create(**values)


def form_errors(response) -> dict[str, list[str]]:
    form = response.context["adminform"].form
    return {key: list(value) for key, value in form.errors.items()}


# -- adding and checking entries --------------------------------------------------------------


def test_adding_an_interval_entry_schedules_its_first_run(admin_client):
    before = timezone.now()
    response = admin_client.post(reverse(ADD), form_data())
    assert response.status_code == 302, form_errors(response)
    entry = PeriodicTask.objects.get(name="every half minute")
    assert entry.source == PeriodicTask.SOURCE_ADMIN
    assert (entry.task, entry.args, entry.kwargs, entry.options) == (ADD_TASK, [1, 2], {}, {})
    assert entry.interval_seconds == 30
    assert entry.next_due is not None
    assert before + dt.timedelta(seconds=30) <= entry.next_due
    assert entry.next_due <= timezone.now() + dt.timedelta(seconds=30)


def test_adding_a_crontab_entry_schedules_it_at_its_next_time(admin_client):
    response = admin_client.post(
        reverse(ADD),
        form_data(name="quarterly", interval_seconds="", minute="*/15", kwargs="{}", args="[3, 4]"),
    )
    assert response.status_code == 302, form_errors(response)
    entry = PeriodicTask.objects.get(name="quarterly")
    assert entry.is_crontab
    assert entry.next_due is not None
    assert entry.next_due.minute % 15 == 0 and entry.next_due.second == 0
    assert timezone.now() < entry.next_due <= timezone.now() + dt.timedelta(minutes=15)


def test_the_add_form_suggests_the_registered_task_names(admin_client):
    page = admin_client.get(reverse(ADD)).content.decode()
    assert 'list="id_task_choices"' in page
    assert f'<option value="{ADD_TASK}">' in page
    assert "Run now" not in page  # nothing to run yet


DEEP = "[" * 200 + "]" * 200


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        ({"interval_seconds": "", "minute": "61"}, "minute", "Not a valid crontab field"),
        ({"interval_seconds": "", "day_of_week": "funday"}, "day_of_week", "crontab field"),
        (
            {"interval_seconds": "", "day_of_month": "31", "month_of_year": "2", "minute": "0"},
            "__all__",
            "never matches",
        ),
        ({"minute": "5"}, "__all__", "not both"),
        ({"interval_seconds": ""}, "__all__", "Give a schedule"),
        ({"interval_seconds": "0"}, "interval_seconds", "Not a usable interval"),
        ({"interval_seconds": "-5"}, "interval_seconds", "Not a usable interval"),
        ({"interval_seconds": "1e999"}, "interval_seconds", "number"),
        ({"interval_seconds": "nan"}, "interval_seconds", "number"),
        ({"task": "tests.taskapp.tasks.ad"}, "task", f"Did you mean: {ADD_TASK}"),
        ({"task": "somewhere.else.record"}, "task", RECORD_TASK),
        ({"task": "no.such.thing"}, "task", "No task named 'no.such.thing' is registered"),
        ({"args": "[1, 2"}, "args", "Enter valid JSON"),
        ({"args": "[NaN, 2]"}, "args", "NaN"),
        ({"args": "[Infinity, 2]"}, "args", "Infinity"),
        ({"args": "[1e999, 2]"}, "args", "inf"),
        ({"args": "[" + "9" * 5000 + ", 2]"}, "args", "JSON"),
        ({"args": "[99999999999999999999999, 2]"}, "args", "too large"),
        ({"args": f"[{DEEP}, 2]"}, "args", "Nested too deep"),
        ({"args": "[" * 50_000}, "args", "Nested too deep"),
        ({"args": '["' + "x" * 100_000 + '", 2]'}, "args", "Too long"),
        ({"args": '["a\\u0000b", 2]'}, "args", "cannot be stored"),
        ({"args": '["\\ud800", 2]'}, "args", "cannot be stored"),
        ({"args": '{"x": 1}'}, "args", "Enter a JSON list"),
        ({"args": "[1]"}, "args", "does not take these arguments"),
        ({"args": "", "kwargs": "[1, 2]"}, "kwargs", "Enter a JSON object"),
        ({"args": "", "kwargs": '{"x": 1, "y": [NaN]}'}, "kwargs", "NaN"),
        ({"args": "", "kwargs": '{"x": 1, "not a name": 2}'}, "kwargs", "keyword argument"),
        ({"options": '{"task_id": "abc"}'}, "options", "'task_id'"),
        ({"options": '{"chord": {}}'}, "options", "'chord'"),
        ({"options": '{"colour": "blue"}'}, "options", "'colour'"),
        ({"options": '{"priority": 9999}'}, "options", "priority"),
        ({"options": '{"queue": ""}'}, "options", "queue"),
        ({"options": '{"headers": [1]}'}, "options", "headers"),
        ({"options": "[1]"}, "options", "Enter a JSON object"),
    ],
)
def test_a_bad_entry_is_a_form_error_never_a_server_error(admin_client, changes, field, says):
    response = admin_client.post(reverse(ADD), form_data(**changes))
    assert response.status_code == 200
    errors = form_errors(response)
    assert field in errors, errors
    assert says in " ".join(errors[field]), errors
    assert not PeriodicTask.objects.exists()
    # The form is shown again with what was typed.
    assert "errornote" in response.content.decode()


def test_typed_json_values_are_kept(admin_client):
    response = admin_client.post(
        reverse(ADD),
        form_data(
            task=RECORD_TASK,
            args="",
            kwargs='{"label": "n\\u00e4chtlich"}',
            options='{"queue": "lopri", "priority": 3, "headers": {"who": "ops"}}',
        ),
    )
    assert response.status_code == 302, form_errors(response)
    entry = PeriodicTask.objects.get()
    assert (entry.args, entry.kwargs) == ([], {"label": "nächtlich"})
    assert entry.options == {"queue": "lopri", "priority": 3, "headers": {"who": "ops"}}


def test_changing_a_schedule_reschedules_and_other_changes_do_not(admin_client):
    entry = make_entry(next_due=timezone.now() + dt.timedelta(hours=5), total_runs=4)
    response = admin_client.post(
        change_url(entry), form_data(name="nightly", interval_seconds="60", args="[5, 6]")
    )
    assert response.status_code == 302, form_errors(response)
    kept = PeriodicTask.objects.get(pk=entry.pk)
    assert kept.args == [5, 6]
    assert kept.next_due == entry.next_due
    assert kept.total_runs == 4

    # The interval changes: next due is the new interval from now.
    response = admin_client.post(change_url(entry), form_data(name="nightly", interval_seconds="7"))
    assert response.status_code == 302, form_errors(response)
    kept.refresh_from_db()
    assert kept.next_due is not None
    assert kept.next_due <= timezone.now() + dt.timedelta(seconds=7)
    assert kept.total_runs == 4


def test_saving_keeps_runs_a_scheduler_recorded_meanwhile(admin_client):
    entry = make_entry(next_due=timezone.now() + dt.timedelta(hours=5))
    page = admin_client.get(change_url(entry))
    assert page.status_code == 200
    # A scheduler sends a run while the page is open.
    PeriodicTask.objects.filter(pk=entry.pk).update(
        total_runs=1, recent_task_ids=["some-id"], last_run_at=timezone.now()
    )
    response = admin_client.post(
        change_url(entry), form_data(name="nightly", interval_seconds="60", enabled="")
    )
    assert response.status_code == 302, form_errors(response)
    entry.refresh_from_db()
    assert not entry.enabled
    assert (entry.total_runs, entry.recent_task_ids) == (1, ["some-id"])


def test_reenabling_an_entry_does_not_catch_up_the_runs_it_missed(admin_client):
    stale = timezone.now() - dt.timedelta(days=3)
    entry = make_entry(enabled=False, next_due=stale, interval_seconds=3600.0)
    before = timezone.now()
    response = admin_client.post(
        change_url(entry), form_data(name="nightly", interval_seconds="3600")
    )
    assert response.status_code == 302, form_errors(response)
    entry.refresh_from_db()
    assert entry.enabled
    assert entry.next_due is not None
    assert entry.next_due >= before + dt.timedelta(hours=1)


# -- settings entries ---------------------------------------------------------------------------


def test_a_settings_entry_is_read_only_but_for_enabled(admin_client):
    entry = make_entry(source=PeriodicTask.SOURCE_CODE, enabled=False, next_due=None)
    response = admin_client.get(change_url(entry))
    assert response.status_code == 200
    page = response.content.decode()
    assert 'name="enabled"' in page
    for field in ("name", "task", "interval_seconds", "minute", "args", "kwargs", "options"):
        assert f'name="{field}"' not in page
    assert "BEAT_SCHEDULE" in page
    assert "cannot be deleted here" in page
    assert "deletelink" not in page
    assert "Switch this settings entry off or on" in page
    assert "suggestions appear" not in page

    # Whatever else is posted, only enabled changes; switched on, it is scheduled from now.
    response = admin_client.post(
        change_url(entry), form_data(name="renamed", task=RECORD_TASK, interval_seconds="1")
    )
    assert response.status_code == 302, form_errors(response)
    entry.refresh_from_db()
    assert entry.enabled
    assert (entry.name, entry.task, entry.interval_seconds) == ("nightly", ADD_TASK, 60.0)
    assert entry.next_due is not None
    assert entry.next_due > timezone.now() + dt.timedelta(seconds=50)

    response = admin_client.post(change_url(entry), {"enabled": ""})
    assert response.status_code == 302
    entry.refresh_from_db()
    assert not entry.enabled

    delete = reverse("admin:django_tasks_periodictask_delete", args=[entry.pk])
    assert admin_client.get(delete).status_code == 403
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert PeriodicTask.objects.filter(pk=entry.pk).exists()


def test_an_admin_entry_can_be_deleted(admin_client):
    entry = make_entry()
    delete = reverse("admin:django_tasks_periodictask_delete", args=[entry.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 302
    assert not PeriodicTask.objects.exists()


# -- the list -----------------------------------------------------------------------------------


def test_the_list_shows_schedules_runs_and_errors_and_filters(admin_client):
    now = timezone.now()
    make_entry(name="often", interval_seconds=90.0, next_due=now, total_runs=12)
    make_entry(
        name="from-settings",
        source=PeriodicTask.SOURCE_CODE,
        interval_seconds=None,
        minute="0",
        hour="3",
        last_error="run due at X not sent: NotRegistered: gone",
    )
    make_entry(name="broken", interval_seconds=5.0, minute="7", enabled=False)
    url = reverse(CHANGELIST)
    page = admin_client.get(url).content.decode()
    assert "every 90 seconds" in page
    assert "crontab(minute=&#x27;0&#x27;, hour=&#x27;3&#x27;" in page
    assert "invalid schedule" in page
    assert "NotRegistered: gone" in page
    assert timezone.localtime(now).strftime("%Y-%m-%d %H:%M:%S") in page
    assert "settings (BEAT_SCHEDULE)" in page

    def listed(**params) -> set[str]:
        response = admin_client.get(url, params)
        return {entry.name for entry in response.context["cl"].result_list}

    assert listed() == {"often", "from-settings", "broken"}
    assert listed(enabled__exact="0") == {"broken"}
    assert listed(source__exact="code") == {"from-settings"}
    assert listed(q="oft") == {"often"}
    assert listed(q="taskapp.tasks.add") == {"often", "from-settings", "broken"}


def test_next_runs_show_in_the_current_time_zone(admin_client, settings):
    settings.TIME_ZONE = "Asia/Kathmandu"  # +05:45
    due = dt.datetime(2030, 1, 1, 0, 0, tzinfo=dt.UTC)
    make_entry(next_due=due)
    page = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert "2030-01-01 05:45:00" in page


# -- run now ------------------------------------------------------------------------------------


def test_run_now_sends_a_run_and_links_to_it(admin_client):
    entry = make_entry(options={"headers": {"who": "ops"}})
    response = admin_client.post(run_now_url(entry), follow=True)
    assert response.status_code == 200
    run = TaskResult.objects.get()
    assert run.task_name == ADD_TASK
    assert run.options["headers"] == {"who": "ops", "periodic_task_name": "nightly"}
    entry.refresh_from_db()
    assert entry.total_runs == 1
    assert entry.recent_task_ids == [run.task_id]
    assert entry.last_run_at is not None
    result_url = reverse("admin:django_tasks_taskresult_change", args=[run.pk])
    shown = [str(m) for m in response.context["messages"]]
    assert any(result_url in m and run.task_id in m and "Sent 1 run" in m for m in shown), shown
    assert response.redirect_chain[-1][0] == change_url(entry)

    # The run is listed with its state, then its outcome once it ran.
    page = response.content.decode()
    assert f'<a href="{result_url}">task {run.task_id}</a>' in page
    assert "dt-badge dt-waiting" in page
    run_until_empty()
    page = admin_client.get(change_url(entry)).content.decode()
    assert '<span class="dt-badge dt-success">SUCCESS</span>' in page
    run.refresh_from_db()
    assert timezone.localtime(run.date_done).strftime("%Y-%m-%d %H:%M:%S") in page
    assert run.result == 3


def test_run_now_is_post_only_and_csrf_checked(admin_client, admin_user):
    entry = make_entry()
    assert admin_client.get(run_now_url(entry)).status_code == 405
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(admin_user)
    assert strict.post(run_now_url(entry)).status_code == 403
    # With the change page's token it works.
    page = strict.get(change_url(entry))
    token = page.context["csrf_token"]
    assert strict.post(run_now_url(entry), {"csrfmiddlewaretoken": str(token)}).status_code == 302
    assert TaskResult.objects.count() == 1
    missing = reverse("admin:django_tasks_periodictask_run_now", args=[987654])
    assert admin_client.post(missing).status_code == 302  # the admin's "does not exist"
    assert TaskResult.objects.count() == 1


def test_run_now_needs_the_change_permission(client, django_user_model):
    entry = make_entry()
    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_periodictask"))
    client.force_login(viewer)
    page = client.get(change_url(entry))
    assert page.status_code == 200
    assert "Run now" not in page.content.decode()
    assert client.post(run_now_url(entry)).status_code == 403
    assert not TaskResult.objects.exists()
    changelist = client.get(reverse(CHANGELIST))
    assert "run_selected_now" not in changelist.content.decode()


def test_run_now_action_sends_each_selected_entry(admin_client):
    first = make_entry(name="first")
    second = make_entry(name="second", task=RECORD_TASK, args=[], kwargs={"label": "x"})
    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": "run_selected_now", "_selected_action": [first.pk, second.pk]},
        follow=True,
    )
    assert response.status_code == 200
    runs = {run.task_name: run for run in TaskResult.objects.all()}
    assert set(runs) == {ADD_TASK, RECORD_TASK}
    assert runs[RECORD_TASK].options["headers"] == {"periodic_task_name": "second"}
    shown = " ".join(str(m) for m in response.context["messages"])
    assert "Sent 2 run(s)" in shown
    for run in runs.values():
        assert reverse("admin:django_tasks_taskresult_change", args=[run.pk]) in shown
    assert [e.total_runs for e in PeriodicTask.objects.order_by("name")] == [1, 1]


def test_run_now_errors_are_messages_not_server_errors(admin_client):
    gone = make_entry(name="gone", task="tests.taskapp.tasks.no_longer_there")
    bad = make_entry(name="bad-args", args=[1])  # add() needs two
    ok = make_entry(name="fine")
    response = admin_client.post(run_now_url(gone), follow=True)
    assert response.status_code == 200
    shown = " ".join(str(m) for m in response.context["messages"])
    assert "Could not run: gone: NotRegistered" in shown
    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": "run_selected_now", "_selected_action": [gone.pk, bad.pk, ok.pk]},
        follow=True,
    )
    assert response.status_code == 200
    shown = " ".join(str(m) for m in response.context["messages"])
    assert "Sent 1 run(s)" in shown
    assert "gone: NotRegistered" in shown
    assert "bad-args: TypeError" in shown
    assert list(TaskResult.objects.values_list("task_name", flat=True)) == [ADD_TASK]
    totals = dict(PeriodicTask.objects.values_list("name", "total_runs"))
    assert totals == {"gone": 0, "bad-args": 0, "fine": 1}


def test_recent_runs_show_purged_runs_without_a_link(admin_client):
    entry = make_entry(recent_task_ids=["0d6f2a43-0000-4000-8000-000000000000"])
    page = admin_client.get(change_url(entry)).content.decode()
    assert "task 0d6f2a43-0000-4000-8000-000000000000" in page
    assert "not stored" in page


def test_a_nul_character_in_the_search_is_a_bad_request(admin_client):
    make_entry()
    assert admin_client.get(reverse(CHANGELIST), {"q": "a\x00b"}).status_code == 400
