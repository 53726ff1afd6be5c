"""The admin at its edges: hostile filters and purge input answer 4xx or a form error (never
500), and deeply nested values render depth-limited."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_tasks import states
from django_tasks.models import TaskResult, TaskStateChange
from tests.deep_values import nested, old_data
from tests.taskapp import tasks

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:django_tasks_taskresult_changelist"
PURGE = "admin:django_tasks_taskresult_purge"


@pytest.fixture
def admin_http(django_user_model) -> Client:
    """A superuser's client that answers a server error as a 500 instead of raising it."""
    c = Client(raise_request_exception=False)
    c.force_login(django_user_model.objects.create_superuser("admin", "a@example.com", "pw"))
    return c


# -- 1. NUL bytes in filters and search -------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"state__exact": "\x00"},
        {"task_name__exact": "a\x00b"},
        {"queue__exact": "\x00"},
        {"q": "\x00"},
        {"q": "needle\x00"},
        {"q": "0123abcd\x00"},
        {"state__exact": "SUCCESS", "q": "x\x00"},
    ],
)
def test_a_nul_byte_in_a_filter_or_the_search_is_a_400(admin_http, params):
    tasks.add.delay(1, 2)
    response = admin_http.get(reverse(CHANGELIST), params)
    assert response.status_code == 400, response.content[:500]


@pytest.mark.parametrize(
    "params",
    [
        {"date_created__gte": "\x00"},
        {"date_created__year": "\x00"},
        {"o": "\x00"},
        {"p": "\x00"},
        {"\x00": "1"},
    ],
)
def test_other_nul_bytes_in_the_changelist_are_not_server_errors(admin_http, params):
    """Django's own parameters: an unusable order or page is ignored or redirected."""
    tasks.add.delay(1, 2)
    response = admin_http.get(reverse(CHANGELIST), params)
    assert response.status_code in (200, 302, 400, 404), response.content[:500]


def test_a_nul_byte_in_an_object_id_is_not_a_server_error(admin_http):
    for url in (
        "/admin/django_tasks/taskresult/%00/change/",
        "/admin/django_tasks/taskresult/%00/history/",
        "/admin/django_tasks/taskresult/1%00/change/",
    ):
        response = admin_http.get(url)
        assert response.status_code in (302, 400, 404), (url, response.content[:500])


def test_broken_utf8_in_the_search_is_an_ordinary_search(admin_http):
    tasks.add.delay(1, 2)
    for query in ("q=%ED%A0%80", "q=%FF", "state__exact=%ED%B0%80"):
        response = admin_http.get(f"{reverse(CHANGELIST)}?{query}")
        assert response.status_code in (200, 302, 400), (query, response.content[:500])


# -- 2. the purge page's days -----------------------------------------------------------------


@pytest.mark.parametrize(
    "days", ["1e6", "1e300", "999999999", "nan", "inf", "-inf", "-1", "1e-400x", "", "\x00"]
)
def test_purge_days_out_of_range_is_a_form_error(admin_http, days):
    done = tasks.add.delay(1, 1)
    TaskResult.objects.filter(task_id=done.id).update(
        state=states.SUCCESS, date_done=timezone.now() - timezone.timedelta(days=3)
    )
    url = reverse(PURGE)
    counted = admin_http.get(url, {"days": days})
    assert counted.status_code in (200, 400), counted.content[:500]
    if counted.status_code == 200:
        assert "errorlist" in counted.content.decode()
        assert "Delete them" not in counted.content.decode()
    posted = admin_http.post(url, {"days": days})
    assert posted.status_code in (200, 400), posted.content[:500]
    assert TaskResult.objects.filter(task_id=done.id).exists()


def test_purge_accepts_a_century(admin_http):
    page = admin_http.get(reverse(PURGE), {"days": "36500"})
    assert page.status_code == 200
    assert "errorlist" not in page.content.decode()
    assert "finished result(s) are older than" in page.content.decode()


# -- 3. deeply nested values ------------------------------------------------------------------


def _deep_row(depth: int) -> TaskResult:
    now = timezone.now()
    with old_data():
        row = TaskResult.objects.create(
            task_id=str(uuid.uuid4()),
            task_name="tests.taskapp.tasks.progress",
            state="PROGRESS",
            args=[nested(depth)],
            kwargs={"deep": nested(depth)},
            result=nested(depth),
            meta=nested(depth),
            date_created=now,
            run_after=now,
        )
        TaskStateChange.objects.create(
            task=row, state="PROGRESS", at=now, meta=nested(depth), detail="deep"
        )
    return row


@pytest.mark.parametrize("depth", [25, 950])
def test_deeply_nested_values_render_depth_limited_on_the_detail_page(admin_http, depth):
    row = _deep_row(depth)
    response = admin_http.get(reverse("admin:django_tasks_taskresult_change", args=[row.pk]))
    assert response.status_code == 200, response.content[:2000]
    page = response.content.decode()
    assert page.count("…") >= 4  # args, kwargs, result, meta
    assert page.count('"k": {') <= 4 * 11  # nothing deeper than the limit is shown
    assert "deep" in page  # the history inline


def test_the_changelist_and_its_search_list_deeply_nested_rows(admin_http):
    row = _deep_row(950)
    url = reverse(CHANGELIST)
    for params in ({}, {"q": "deep"}, {"q": row.task_id}, {"state__exact": "PROGRESS"}):
        response = admin_http.get(url, params)
        assert response.status_code == 200, (params, response.content[:500])
        assert row.task_id[:8] in response.content.decode()


def test_the_rerun_action_reports_a_task_it_cannot_decode(admin_http):
    row = _deep_row(950)
    response = admin_http.post(
        reverse(CHANGELIST),
        {"action": "rerun_tasks", "_selected_action": [row.pk]},
        follow=True,
    )
    assert response.status_code == 200
