"""In a real browser: live and stale workers beside the queue overview, with running tasks."""

from __future__ import annotations

import signal

import pytest
from django.utils import timezone

from django_tasks.models import WorkerRecord
from tests.browser.conftest import log_in
from tests.conftest import wait_until
from tests.taskapp import tasks
from tests.taskapp.models import Run

pytestmark = [pytest.mark.worker]

QUEUES = "/admin/django_tasks/taskresult/queues/"


def test_queue_overview_shows_live_and_stale_workers_and_links_running_tasks(
    page, live_server, start_worker, admin_user, screenshot, settings
):
    lease = 2.0
    settings.DJANGO_TASKS = {**settings.DJANGO_TASKS, "WORKER_LEASE_SECONDS": lease}
    live = start_worker("--pool", "threads", "--concurrency", "2", lease_seconds=lease)
    doomed = start_worker("--pool", "solo", "-Q", "lopri", lease_seconds=lease)
    for worker in (live, doomed):
        wait_until(lambda w=worker: WorkerRecord.objects.filter(pid=w.pid).exists(), what="rows")
    sleeper = tasks.sleep_then_record.delay(8, "browser")
    wait_until(lambda: Run.objects.filter(label="start:browser").exists(), what="the start")
    wait_until(
        lambda: any(
            t.get("task_id") == sleeper.id for t in WorkerRecord.objects.get(pid=live.pid).running
        ),
        what="the running task in the row",
    )
    doomed.signal(signal.SIGKILL)
    wait_until(
        lambda: (
            WorkerRecord.objects.get(pid=doomed.pid).status(timezone.now(), lease)
            == WorkerRecord.STALE
        ),
        timeout=lease + 5,
        what="stale",
    )
    log_in(page, live_server)
    page.goto(f"{live_server.url}{QUEUES}")
    live_row = page.locator(f'tr[data-worker$=":{live.pid}"]')
    assert live_row.get_attribute("data-status") == "live"
    assert page.locator(f'tr[data-worker$=":{doomed.pid}"]').get_attribute("data-status") == (
        "stale"
    )
    screenshot("admin-workers", full_page=True)
    live_row.locator('td[data-col="running"] a').first.click()
    page.wait_for_url("**/change/")
    assert sleeper.id in page.content()
