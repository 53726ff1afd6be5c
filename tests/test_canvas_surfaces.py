"""The canvas in the admin and the HTTP API: parent, group and chord, as links and states."""

import pytest
from django.urls import reverse

from django_tasks import chain, chord, group
from django_tasks.models import TaskResult
from django_tasks.testing import run_until_empty
from tests.taskapp import tasks

pytestmark = pytest.mark.django_db


def drain():
    while run_until_empty():
        pass


def change_page(client, task_id):
    pk = TaskResult.objects.get(task_id=task_id).pk
    response = client.get(reverse("admin:django_tasks_taskresult_change", args=[pk]))
    assert response.status_code == 200
    return response.content.decode()


def test_the_admin_links_a_chain_step_to_its_parent(admin_client):
    res = chain(tasks.add.s(1, 1), tasks.add.s(1)).apply_async()
    drain()
    page = change_page(admin_client, res.id)
    parent_pk = TaskResult.objects.get(task_id=res.parent.id).pk
    parent_url = reverse("admin:django_tasks_taskresult_change", args=[parent_pk])
    assert f'href="{parent_url}"' in page


def test_the_admin_shows_a_group_and_its_progress(admin_client):
    g = group(tasks.add.s(1, 1), tasks.add.s(2, 2), tasks.add.s(3, 3)).apply_async()
    drain()
    page = change_page(admin_client, g.results[0].id)
    changelist = reverse("admin:django_tasks_taskresult_changelist")
    assert f'href="{changelist}?group_id={g.id}"' in page
    assert "3 of 3 done" in page
    other = tasks.add.delay(5, 5)
    response = admin_client.get(f"{changelist}?group_id={g.id}")
    assert response.status_code == 200
    listed = response.content.decode()
    assert all(r.id[:8] in listed for r in g.results)
    assert other.id[:8] not in listed


def test_the_admin_shows_progress_of_an_unfinished_group(admin_client):
    g = group(tasks.add.s(1, 1), tasks.add.s(2, 2)).apply_async()
    page = change_page(admin_client, g.results[1].id)
    assert "(task 2 of 2), 0 of 2 done" in page


def test_the_admin_shows_the_chord_state_on_header_and_body(admin_client):
    c = chord([tasks.add.s(1, 1), tasks.add.s(2, 2)], tasks.tsum.s()).apply_async()
    header_page = change_page(admin_client, c.parent.results[0].id)
    assert "waiting for 2 of 2 header tasks" in header_page
    assert f"{c.id} (not sent yet)" in header_page
    drain()
    header_page = change_page(admin_client, c.parent.results[0].id)
    assert "body sent" in header_page
    body_pk = TaskResult.objects.get(task_id=c.id).pk
    assert reverse("admin:django_tasks_taskresult_change", args=[body_pk]) in header_page
    body_page = change_page(admin_client, c.id)
    assert f"{c.parent.id} (body)" in body_page


def test_the_admin_names_the_header_task_that_failed_a_chord(admin_client):
    c = chord([tasks.fail.s(), tasks.add.s(2, 2)], tasks.tsum.s()).apply_async()
    drain()
    body_page = change_page(admin_client, c.id)
    assert "failed: a header task did not succeed" in body_page
    assert c.parent.results[0].id in body_page


def test_the_api_detail_has_parent_and_group_ids(admin_client):
    res = chain(tasks.add.s(1, 1), group(tasks.add.s(1), tasks.add.s(2))).apply_async()
    drain()
    first = res.parent.id
    member = res.results[1]
    data = admin_client.get(f"/tasks/{member.id}/").json()
    assert data["group_id"] == res.id
    assert data["parent_id"] == first
    plain = admin_client.get(f"/tasks/{first}/").json()
    assert plain["parent_id"] is None and plain["group_id"] is None
    step = chain(tasks.add.s(1, 1), tasks.add.s(1)).apply_async()
    drain()
    assert admin_client.get(f"/tasks/{step.id}/").json()["parent_id"] == step.parent.id
    unknown = admin_client.get("/tasks/never-sent/").json()
    assert unknown["parent_id"] is None and unknown["group_id"] is None
