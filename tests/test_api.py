"""The HTTP API: who sees what, the detail and list shapes, ETag/304, long-poll, revoke."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings
from django.urls import reverse

from django_tasks import states
from django_tasks.models import TaskResult
from django_tasks.store import store_custom_state
from django_tasks.testing import run_until_empty
from tests.taskapp import tasks

pytestmark = pytest.mark.django_db


def detail_url(task_id: str) -> str:
    return reverse("django_tasks:task-detail", args=[task_id])


def revoke_url(task_id: str) -> str:
    return reverse("django_tasks:task-revoke", args=[task_id])


LIST_URL = "/tasks/"


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("owner", password="pw")


@pytest.fixture
def other(django_user_model):
    return django_user_model.objects.create_user("other", password="pw")


@pytest.fixture
def staff(django_user_model):
    """Staff who may browse and operate on results in the admin: they read and revoke all."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_taskresult", "change_taskresult"])
    )
    return user


def client_for(client, user):
    client.force_login(user)
    return client


def run_all() -> None:
    while run_until_empty():
        pass


# -- access -------------------------------------------------------------------------------------


def test_anonymous_users_get_nothing(client, owner):
    res = tasks.add.apply_async((1, 2), owner=owner)
    for response in (
        client.get(LIST_URL),
        client.get(detail_url(res.id)),
        client.get(detail_url("never-sent")),
        client.post(revoke_url(res.id)),
        client.get(reverse("django_tasks:schema")),
    ):
        assert response.status_code in (401, 403), response.content
    assert TaskResult.objects.get(task_id=res.id).state == states.PENDING


def test_the_owner_reads_the_detail_with_its_history_but_no_arguments(client, owner):
    res = tasks.retry_until.apply_async((2,), owner=owner)
    run_all()
    data = client_for(client, owner).get(detail_url(res.id)).json()
    assert data["id"] == res.id
    assert data["name"] == "tests.taskapp.tasks.retry_until"
    assert data["state"] == "SUCCESS"
    assert data["ready"] is True
    assert data["result"] == 1
    assert data["retries"] == 1
    assert [s["state"] for s in data["states"]] == ["PENDING", "RETRY", "SUCCESS"]
    assert all(s["at"] for s in data["states"])
    assert data["date_created"] and data["date_done"]
    assert "args" not in data and "kwargs" not in data and "traceback" not in data


def test_a_failure_shows_type_and_message_and_hides_the_traceback_from_the_owner(client, owner):
    res = tasks.fail.apply_async(("kaput",), owner=owner)
    run_all()
    data = client_for(client, owner).get(detail_url(res.id)).json()
    assert data["state"] == "FAILURE"
    assert data["result"] == {"type": "CustomError", "message": "kaput"}
    assert "traceback" not in data
    assert "kaput" not in str({k: v for k, v in data.items() if k != "result"})


@override_settings(DJANGO_TASKS={"API_EXPOSE_TRACEBACKS": True, "API_EXPOSE_ARGUMENTS": True})
def test_settings_expose_tracebacks_and_arguments_to_owners(client, owner):
    res = tasks.fail.apply_async(("kaput",), owner=owner)
    run_all()
    data = client_for(client, owner).get(detail_url(res.id)).json()
    assert "Traceback (most recent call last)" in data["traceback"]
    assert data["args"] == ["kaput"]
    assert data["kwargs"] == {}


def test_staff_see_everything_including_tracebacks_and_arguments(client, owner, staff):
    mine = tasks.fail.apply_async(("kaput",), owner=owner)
    ownerless = tasks.add.delay(2, 3)
    run_all()
    staff_client = client_for(client, staff)
    data = staff_client.get(detail_url(mine.id)).json()
    assert "CustomError: kaput" in data["traceback"]
    assert data["args"] == ["kaput"]
    assert staff_client.get(detail_url(ownerless.id)).json()["result"] == 5
    listed = {row["id"] for row in staff_client.get(LIST_URL).json()["results"]}
    assert listed == {mine.id, ownerless.id}


def test_other_users_cannot_read_list_or_revoke_someone_elses_task(client, owner, other):
    res = tasks.add.apply_async((1, 2), owner=owner)
    ownerless = tasks.add.delay(1, 1)
    other_client = client_for(client, other)
    unknown = other_client.get(detail_url("no-such-task")).json()
    for task_id in (res.id, ownerless.id):
        # Exactly what an unknown id gets, so ids cannot be probed for existence.
        response = other_client.get(detail_url(task_id))
        assert response.status_code == 200
        assert {**response.json(), "id": "no-such-task"} == unknown
    assert other_client.get(LIST_URL).json()["results"] == []
    assert other_client.post(revoke_url(res.id)).status_code == 404
    assert TaskResult.objects.get(task_id=res.id).state == states.PENDING


def test_an_unknown_id_reads_pending_as_in_celery(client, owner):
    data = client_for(client, owner).get(detail_url("no-such-task")).json()
    assert data["state"] == "PENDING"
    assert data["ready"] is False
    assert data["states"] == []
    assert data["result"] is None


def test_progress_is_reported_through_meta_and_result(client, owner):
    res = tasks.progress.apply_async((4,), owner=owner)
    pk = TaskResult.objects.get(task_id=res.id).pk
    store_custom_state(res.id, "PROGRESS", {"current": 1, "total": 4})
    data = client_for(client, owner).get(detail_url(res.id)).json()
    assert data["state"] == "PROGRESS"
    assert data["meta"] == {"current": 1, "total": 4}
    assert data["result"] == {"current": 1, "total": 4}
    assert pk


# -- the list -----------------------------------------------------------------------------------


def test_the_list_filters_by_state_name_and_queue_and_paginates(client, owner, other):
    ok = [tasks.add.apply_async((i, i), owner=owner) for i in range(3)]
    bad = tasks.fail.apply_async(owner=owner)
    lopri = tasks.add.apply_async((9, 9), owner=owner, queue="lopri")
    tasks.add.apply_async((7, 7), owner=other)
    run_all()
    c = client_for(client, owner)

    def ids(**params: Any) -> set[str]:
        return {row["id"] for row in c.get(LIST_URL, params).json()["results"]}

    assert ids() == {r.id for r in [*ok, bad, lopri]}
    assert ids(state="FAILURE") == {bad.id}
    assert ids(state="SUCCESS") == {r.id for r in ok}
    assert ids(state="SUCCESS,FAILURE") == {r.id for r in [*ok, bad]}
    assert ids(name="tests.taskapp.tasks.fail") == {bad.id}
    assert ids(queue="lopri") == {lopri.id}
    assert ids(queue="lopri", state="PENDING") == {lopri.id}
    page = c.get(LIST_URL, {"page_size": 2}).json()
    assert page["count"] == 5
    assert len(page["results"]) == 2
    assert page["next"]
    second = c.get(page["next"]).json()
    assert len(second["results"]) == 2
    assert not {r["id"] for r in page["results"]} & {r["id"] for r in second["results"]}
    # Newest first.
    assert page["results"][0]["id"] == lopri.id


@override_settings(DJANGO_TASKS={"API_PAGE_SIZE": 2})
def test_the_page_size_setting_applies(client, staff):
    for i in range(3):
        tasks.add.delay(i, i)
    data = client_for(client, staff).get(LIST_URL).json()
    assert len(data["results"]) == 2
    assert data["count"] == 3


def test_the_list_costs_a_fixed_number_of_queries(client, staff, django_assert_max_num_queries):
    c = client_for(client, staff)
    for i in range(3):
        tasks.retry_until.delay(2)
        tasks.add.delay(i, i)
    run_all()
    # Session, user, the user's permissions (two), count, page, the page's history.
    with django_assert_max_num_queries(7) as few:
        assert len(c.get(LIST_URL).json()["results"]) == 6
    for _ in range(10):
        tasks.retry_until.delay(2)
    run_all()
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert len(c.get(LIST_URL).json()["results"]) == 16


# -- ETag and long-poll ---------------------------------------------------------------------------


def test_etag_answers_304_until_the_task_changes(client, owner):
    res = tasks.add.apply_async((1, 2), owner=owner)
    c = client_for(client, owner)
    first = c.get(detail_url(res.id))
    etag = first["ETag"]
    assert etag.startswith('"')
    again = c.get(detail_url(res.id), headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again["ETag"] == etag
    assert again.content == b""
    run_all()
    changed = c.get(detail_url(res.id), headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.json()["state"] == "SUCCESS"
    assert changed["ETag"] != etag


def _change_later(task_id: str, delay: float) -> threading.Thread:
    def change() -> None:
        time.sleep(delay)
        try:
            store_custom_state(task_id, "PROGRESS", {"current": 1, "total": 2})
        finally:
            connection.close()

    thread = threading.Thread(target=change)
    thread.start()
    return thread


def _timed_poll(c, task_id: str, etag: str, wait: float):
    """A conditional long-poll of the task; returns the response and the seconds it took."""
    started = time.monotonic()
    response = c.get(detail_url(task_id), {"wait": wait}, headers={"If-None-Match": etag})
    return response, time.monotonic() - started


@pytest.mark.django_db(transaction=True)
def test_long_poll_answers_as_soon_as_the_state_changes(client, owner):
    res = tasks.add.apply_async((1, 2), owner=owner)
    c = client_for(client, owner)
    etag = c.get(detail_url(res.id))["ETag"]
    thread = _change_later(res.id, 0.5)
    response, elapsed = _timed_poll(c, res.id, etag, 20)
    thread.join()
    assert response.status_code == 200
    assert response.json()["state"] == "PROGRESS"
    assert 0.4 <= elapsed < 10, elapsed


@pytest.mark.django_db(transaction=True)
def test_long_poll_on_someone_elses_task_does_not_reveal_its_changes(client, owner, other):
    res = tasks.add.apply_async((1, 2), owner=owner)
    c = client_for(client, other)
    etag = c.get(detail_url(res.id))["ETag"]
    thread = _change_later(res.id, 0.2)
    response, elapsed = _timed_poll(c, res.id, etag, 1.5)
    thread.join()
    assert response.status_code == 304
    assert elapsed >= 1.4, elapsed  # the owner's change did not end the poll early


@pytest.mark.django_db(transaction=True)
def test_long_poll_without_a_change_waits_then_answers_304(client, owner):
    res = tasks.add.apply_async((1, 2), owner=owner)
    c = client_for(client, owner)
    etag = c.get(detail_url(res.id))["ETag"]
    response, elapsed = _timed_poll(c, res.id, etag, 1)
    assert response.status_code == 304
    assert 0.9 <= elapsed < 8, elapsed


@override_settings(DJANGO_TASKS={"API_MAX_WAIT": 0.5})
def test_long_poll_is_capped_by_the_setting(client, owner):
    res = tasks.add.apply_async((1, 2), owner=owner)
    c = client_for(client, owner)
    etag = c.get(detail_url(res.id))["ETag"]
    response, elapsed = _timed_poll(c, res.id, etag, 600)
    assert response.status_code == 304
    assert elapsed < 8


def test_long_poll_on_a_finished_task_answers_at_once(client, owner):
    res = tasks.add.apply_async((1, 2), owner=owner)
    run_all()
    started = time.monotonic()
    response = client_for(client, owner).get(detail_url(res.id), {"wait": 30})
    assert response.json()["state"] == "SUCCESS"
    assert time.monotonic() - started < 5


def test_a_bad_wait_is_a_400(client, owner):
    res = tasks.add.apply_async((1, 2), owner=owner)
    c = client_for(client, owner)
    assert c.get(detail_url(res.id), {"wait": "soon"}).status_code == 400
    assert c.get(detail_url(res.id), {"wait": "-1"}).status_code == 400


# -- revoke -------------------------------------------------------------------------------------


def test_the_owner_revokes_a_pending_task_and_it_never_runs(client, owner):
    res = tasks.record.apply_async(("x",), owner=owner)
    response = client_for(client, owner).post(revoke_url(res.id))
    assert response.status_code == 200
    assert response.json()["state"] == "REVOKED"
    run_all()
    assert TaskResult.objects.get(task_id=res.id).state == states.REVOKED
    from tests.taskapp.models import Run

    assert not Run.objects.filter(task_id=res.id).exists()


def test_staff_revoke_any_task_finished_ones_answer_409_unknown_404(client, owner, staff):
    pending = tasks.add.apply_async((1, 2), owner=owner)
    done = tasks.add.delay(1, 1)
    run_until_empty(["other"])  # nothing
    TaskResult.objects.filter(task_id=done.id).update(state=states.SUCCESS)
    c = client_for(client, staff)
    assert c.post(revoke_url(pending.id)).json()["state"] == "REVOKED"
    conflict = c.post(revoke_url(done.id))
    assert conflict.status_code == 409
    assert "SUCCESS" in conflict.json()["detail"]
    assert c.post(revoke_url("no-such-task")).status_code == 404


# -- replaceable permissions and the schema -----------------------------------------------------


class EveryoneReadsEverything:
    """A replacement permission class for the test below."""

    def has_permission(self, request, view):
        return request.user.is_authenticated

    def has_object_permission(self, request, view, obj):
        return True

    def filter_queryset(self, request, queryset):
        return queryset


@override_settings(
    DJANGO_TASKS={"API_PERMISSION_CLASSES": ["tests.test_api.EveryoneReadsEverything"]}
)
def test_permission_classes_are_replaced_through_settings(client, owner, other):
    res = tasks.add.apply_async((1, 2), owner=owner)
    c = client_for(client, other)
    assert c.get(detail_url(res.id)).json()["state"] == "PENDING"
    assert [row["id"] for row in c.get(LIST_URL).json()["results"]] == [res.id]


def test_the_openapi_schema_describes_the_endpoints(client, owner):
    response = client_for(client, owner).get(
        reverse("django_tasks:schema"), headers={"Accept": "application/vnd.oai.openapi+json"}
    )
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    assert set(paths) == {"/tasks/", "/tasks/{task_id}/", "/tasks/{task_id}/revoke/"}
    list_params = {p["name"] for p in paths["/tasks/"]["get"]["parameters"]}
    assert {"state", "name", "queue", "page", "page_size"} <= list_params
    detail_params = {p["name"] for p in paths["/tasks/{task_id}/"]["get"]["parameters"]}
    assert "wait" in detail_params
    assert "post" in paths["/tasks/{task_id}/revoke/"]


@pytest.mark.django_db
def test_the_browsable_api_describes_each_view_in_plain_text(client, staff):
    from django_tasks.api import views

    c = client_for(client, staff)
    done = tasks.add.delay(1, 2)
    for url, view in [
        (LIST_URL, views.TaskResultList),
        (detail_url(done.id), views.TaskResultDetail),
        (revoke_url(done.id), views.TaskResultRevoke),
    ]:
        page = c.get(url, HTTP_ACCEPT="text/html").content.decode()
        assert "``" not in view().get_view_description()
        assert view.description.split(".")[0] in page, url
        assert "``" not in page, url
