"""The admin lists results and shows each one's history; rows are read-only."""

import pytest
from django.urls import reverse

from django_tasks.models import TaskResult
from django_tasks.testing import run_until_empty
from tests.taskapp import tasks

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("admin", "a@example.com", "pw"))
    return client


def test_changelist_lists_results_and_filters_by_state(staff_client):
    ok = tasks.add.delay(1, 2)
    bad = tasks.fail.delay()
    run_until_empty()
    url = reverse("admin:django_tasks_taskresult_changelist")
    page = staff_client.get(url).content.decode()
    assert ok.id in page
    assert bad.id in page
    failed = staff_client.get(url, {"state__exact": "FAILURE"}).content.decode()
    assert bad.id in failed
    assert ok.id not in failed


def test_detail_page_shows_the_history_and_cannot_be_edited(staff_client):
    res = tasks.retry_until.delay(2)
    while run_until_empty():
        pass
    pk = TaskResult.objects.get(task_id=res.id).pk
    response = staff_client.get(reverse("admin:django_tasks_taskresult_change", args=[pk]))
    assert response.status_code == 200
    page = response.content.decode()
    assert "RETRY" in page
    assert "SUCCESS" in page
    assert 'name="_save"' not in page
    assert staff_client.get(reverse("admin:django_tasks_taskresult_add")).status_code == 403


def test_anonymous_users_are_sent_to_the_login_page(client):
    response = client.get(reverse("admin:django_tasks_taskresult_changelist"))
    assert response.status_code == 302
    assert "/login/" in response["Location"]
