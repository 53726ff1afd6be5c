"""``tasks/metrics``: Prometheus text, permissions, the token, and a fixed query count."""

import datetime as dt

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from django_tasks import states
from django_tasks.checks import check_settings
from django_tasks.models import TaskResult, WorkerRecord
from django_tasks.testing import run_until_empty
from tests.conftest import wait_until
from tests.taskapp import tasks

URL = "/tasks/metrics"
TOKEN = "s3cret-metrics-token-0123456789"


def parse(response) -> dict[str, list]:
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    families = text_string_to_metric_families(response.content.decode())
    return {f.name: f.samples for f in families}


def sample(samples, name: str, **labels) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


@pytest.fixture
def staff(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("boss", "b@example.com", "pw"))
    return client


@pytest.mark.django_db
def test_metrics_report_depth_age_workers_finished_and_runtimes(staff):
    tasks.add.delay(1, 1)
    tasks.add.apply_async((2, 2), queue="lopri", countdown=600)
    old = tasks.add.apply_async((3, 3), queue="lopri")
    TaskResult.objects.filter(task_id=old.id).update(
        run_after=timezone.now() - dt.timedelta(seconds=90)
    )
    tasks.fail.apply_async(queue="done")
    tasks.add.apply_async((4, 4), queue="done")
    run_until_empty(["done"])
    now = timezone.now()
    common = {"queues": ["default"], "pool": "threads", "concurrency": 1}
    WorkerRecord.objects.create(hostname="a", pid=1, started=now, last_heartbeat=now, **common)
    stale = now - dt.timedelta(minutes=10)
    WorkerRecord.objects.create(hostname="b", pid=2, started=stale, last_heartbeat=stale, **common)
    m = parse(staff.get(URL))
    depth = m["django_tasks_queue_tasks"]
    assert sample(depth, "django_tasks_queue_tasks", queue="default", state="due") == 1
    assert sample(depth, "django_tasks_queue_tasks", queue="lopri", state="due") == 1
    assert sample(depth, "django_tasks_queue_tasks", queue="lopri", state="scheduled") == 1
    age = sample(
        m["django_tasks_queue_oldest_due_age_seconds"],
        "django_tasks_queue_oldest_due_age_seconds",
        queue="lopri",
    )
    assert 89 < age < 150
    hour = m["django_tasks_queue_finished_last_hour"]
    assert sample(hour, "django_tasks_queue_finished_last_hour", queue="done", state="FAILURE") == 1
    workers = m["django_tasks_workers"]
    assert sample(workers, "django_tasks_workers", status="live") == 1
    assert sample(workers, "django_tasks_workers", status="stale") == 1
    finished = m["django_tasks_tasks_finished_recent"]
    assert (
        sample(
            finished,
            "django_tasks_tasks_finished_recent",
            task=tasks.fail.name,
            state=states.FAILURE,
        )
        == 1
    )
    runtime = m["django_tasks_task_runtime_seconds"]
    assert sample(runtime, "django_tasks_task_runtime_seconds_count", task=tasks.add.name) == 1
    assert (
        sample(runtime, "django_tasks_task_runtime_seconds", task=tasks.add.name, quantile="0.99")
        >= 0
    )


def _bulk(start: int, n: int) -> None:
    now = timezone.now()
    TaskResult.objects.bulk_create(
        TaskResult(
            task_id=f"bulk-{start + i}",
            task_name=tasks.add.name,
            state=states.SUCCESS if i % 3 else states.FAILURE,
            queue=f"q{i % 4}",
            date_created=now,
            run_after=now,
            date_started=now - dt.timedelta(seconds=i % 7),
            date_done=now - dt.timedelta(seconds=i % 600),
        )
        for i in range(n)
    )


@pytest.mark.django_db
@override_settings(DJANGO_TASKS={"METRICS_TOKEN": TOKEN})
def test_a_scrape_costs_the_same_queries_whatever_the_table_size(client):
    counts = []
    for size in (10, 2000):
        have = TaskResult.objects.count()
        _bulk(have, size - have)
        with CaptureQueriesContext(connection) as queries:
            response = client.get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        assert response.status_code == 200
        counts.append(len(queries.captured_queries))
    assert counts == [4, 4]


@pytest.mark.django_db
@override_settings(DJANGO_TASKS={"METRICS_TOKEN": TOKEN})
def test_permissions_and_the_token(client, django_user_model):
    assert client.get(URL).status_code in (401, 403)  # anonymous
    assert client.get(URL, HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}x").status_code == 401
    assert client.get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN[:-1]}").status_code == 401
    assert client.get(URL, HTTP_AUTHORIZATION="Bearer ").status_code == 401
    assert client.get(URL, HTTP_AUTHORIZATION=f"bearer {TOKEN}").status_code == 200
    assert client.get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    assert client.post(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405
    # A signed-in user who may not read every result is refused; staff are let in.
    user = django_user_model.objects.create_user("u", "u@example.com", "pw")
    client.force_login(user)
    assert client.get(URL).status_code == 403
    user.is_staff = user.is_superuser = True
    user.save()
    assert client.get(URL).status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("token", [None, 12345, "short", "x" * 20 + " y", "ü" * 20])
def test_without_a_valid_token_setting_every_token_is_refused(client, token):
    with override_settings(DJANGO_TASKS={"METRICS_TOKEN": token}):
        for given in ["", "None", "12345", "short", "x" * 20 + " y", "ü" * 20]:
            response = client.get(URL, HTTP_AUTHORIZATION=f"Bearer {given}")
            assert response.status_code == 401
        errors = [e for e in check_settings() if e.id == "django_tasks.E032"]
        assert bool(errors) == (token is not None)
        if errors:
            assert "METRICS_TOKEN" in errors[0].msg


@pytest.mark.django_db
@override_settings(DJANGO_TASKS={"METRICS_TOKEN": TOKEN})
def test_bad_input_never_500(client):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
    for query in ["?", "?queue=%00", "?x=\x00", "?%ff=%fe", "?" + "a" * 5000]:
        assert client.get(URL + query, **auth).status_code == 200
    for header in ["Bearer \x00", "Bearer " + TOKEN + "\x00", "Bearer é", "Basic Zm9vOmJhcg=="]:
        assert client.get(URL, HTTP_AUTHORIZATION=header).status_code in (401, 403)


@pytest.mark.worker
def test_metrics_see_a_real_worker_and_its_work(start_worker, settings, client):
    settings.DJANGO_TASKS = {**settings.DJANGO_TASKS, "METRICS_TOKEN": TOKEN}
    worker = start_worker("--pool", "threads", "--concurrency", "2")
    results = [tasks.add.delay(i, i) for i in range(5)]
    wait_until(lambda: all(r.ready() for r in results), what="the tasks")
    wait_until(lambda: WorkerRecord.objects.filter(pid=worker.pid).exists(), what="the row")
    m = parse(client.get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}"))
    assert sample(m["django_tasks_workers"], "django_tasks_workers", status="live") == 1
    assert (
        sample(
            m["django_tasks_tasks_finished_recent"],
            "django_tasks_tasks_finished_recent",
            task=tasks.add.name,
            state=states.SUCCESS,
        )
        == 5
    )
