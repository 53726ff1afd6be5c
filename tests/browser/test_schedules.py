"""In a real browser, against a live server and a real worker with its scheduler on: a periodic
task made in the admin runs every second, shows its runs, stops once disabled, and runs now."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from django_tasks.models import PeriodicTask, TaskResult
from tests.browser.conftest import log_in
from tests.conftest import wait_until

pytestmark = [pytest.mark.worker]

CHANGELIST = "/admin/django_tasks/periodictask/"
TASK = "tests.taskapp.tasks.record"


def runs_sent() -> int:
    return TaskResult.objects.filter(task_name=TASK).count()


def shown_total_runs(page: Any) -> int:
    return int(page.locator(".field-total_runs .readonly").inner_text().strip() or 0)


def test_an_admin_made_schedule_runs_shows_its_runs_and_stops_when_disabled(
    page, live_server, start_worker, admin_user, screenshot
):
    # The scheduler is on: no --without-beat.
    worker = start_worker("--pool", "threads", "--concurrency", "2")
    log_in(page, live_server)

    # Add an entry: every second, a registered task (suggested as one types).
    page.goto(live_server.url + CHANGELIST)
    page.click("text=Add periodic task")
    page.fill("#id_name", "heartbeat")
    page.fill("#id_task", TASK)
    assert page.locator(f'#id_task_choices option[value="{TASK}"]').count() == 1
    page.fill("#id_interval_seconds", "1")
    page.fill("#id_kwargs", '{"label": "beat"}')
    screenshot("schedules-add", full_page=True)
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist .success")
    entry = PeriodicTask.objects.get(name="heartbeat")
    assert entry.source == PeriodicTask.SOURCE_ADMIN
    assert entry.enabled and entry.next_due is not None
    assert "every 1 second" in page.locator(".field-schedule_display .readonly").inner_text()

    # The worker's scheduler sends it; the change page shows the runs within ~10 s.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        page.reload()
        if shown_total_runs(page) >= 2 and page.locator(".field-recent_runs a").count() >= 2:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"no runs shown in 15 s; worker log:\n{worker.output()}")
    run = TaskResult.objects.filter(task_name=TASK).order_by("date_created").first()
    assert run is not None
    assert run.options["headers"]["periodic_task_name"] == "heartbeat"
    assert "periodic_due" in run.options["headers"]
    wait_until(
        lambda: TaskResult.objects.filter(task_name=TASK, state="SUCCESS").exists(),
        20,
        "a run to finish",
    )
    page.reload()
    assert page.locator(".field-recent_runs .dt-badge").first.is_visible()
    assert "SUCCESS" in page.locator(".field-recent_runs").inner_text()
    assert page.locator(".field-last_error_display .readonly").inner_text().strip() in ("", "-")
    screenshot("schedules-running", full_page=True)

    # A recent run's link leads to its task.
    link = page.locator(".field-recent_runs a").last
    task_id = link.inner_text().removeprefix("task ").strip()
    assert TaskResult.objects.filter(task_id=task_id, task_name=TASK).exists()
    link.click()
    page.wait_for_url(re.compile(r"/taskresult/\d+/change/"))
    assert task_id in page.locator(".field-task_id").inner_text()
    page.go_back()

    # Disable it: no run is sent after the save.
    page.uncheck("#id_enabled")
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist .success")
    assert not PeriodicTask.objects.get(pk=entry.pk).enabled
    sent = runs_sent()
    total = PeriodicTask.objects.get(pk=entry.pk).total_runs
    time.sleep(3.5)
    assert runs_sent() == sent
    assert PeriodicTask.objects.get(pk=entry.pk).total_runs == total
    assert page.locator(".field-next_run .readonly").inner_text().strip() == "- (disabled)"

    # "Run now" still sends one run at once, linked from the message; the worker runs it.
    page.click("#run-now")
    message = page.locator(".messagelist .success")
    assert "Sent 1 run(s) now" in message.inner_text()
    assert runs_sent() == sent + 1
    manual = TaskResult.objects.filter(task_name=TASK).order_by("-date_created", "-id").first()
    assert manual is not None
    assert manual.task_id in message.inner_text()
    assert shown_total_runs(page) == total + 1
    screenshot("schedules-run-now", full_page=True)
    wait_until(
        lambda: TaskResult.objects.filter(pk=manual.pk, state="SUCCESS").exists(), 20, "run now"
    )
    message.locator("a").click()
    page.wait_for_url(re.compile(r"/taskresult/\d+/change/"))
    assert manual.task_id in page.locator(".field-task_id").inner_text()

    # The list: disabled, its schedule, its runs.
    page.goto(live_server.url + CHANGELIST)
    row = page.locator("#result_list tbody tr").filter(has_text="heartbeat")
    assert "every 1 second" in row.inner_text()
    assert row.locator(".field-enabled img").get_attribute("alt") == "False"
    assert row.locator(".field-total_runs").inner_text() == str(total + 1)
    screenshot("schedules-changelist")

    # An entry from the settings: read-only but for "enabled", and not deletable here.
    code = PeriodicTask.objects.create(
        name="from-settings",
        task=TASK,
        source=PeriodicTask.SOURCE_CODE,
        interval_seconds=None,
        minute="0",
        hour="3",
        kwargs={"label": "nightly"},
        enabled=False,
    )
    page.goto(f"{live_server.url}{CHANGELIST}{code.pk}/change/")
    assert "BEAT_SCHEDULE" in page.locator("#content fieldset.module").first.inner_text()
    assert page.locator("#id_enabled").count() == 1
    assert page.locator("#id_task, #id_minute, #id_kwargs").count() == 0
    assert "crontab(minute='0', hour='3'" in page.locator(".field-schedule_display").inner_text()
    assert page.locator(".deletelink").count() == 0
    screenshot("schedules-settings-entry", full_page=True)
