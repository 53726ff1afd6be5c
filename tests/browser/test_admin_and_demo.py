"""In a real browser, against a live server and a real worker: the admin and the demo page."""

from __future__ import annotations

import contextlib
import re
import time
from typing import Any

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from django_tasks.models import TaskResult
from django_tasks.testing import run_until_empty
from tests.browser.conftest import log_in
from tests.conftest import wait_until
from tests.taskapp import tasks

pytestmark = [pytest.mark.worker]

CHANGELIST = "/admin/django_tasks/taskresult/"


def finished(*results: Any) -> bool:
    ids = [r.id for r in results]
    return TaskResult.objects.filter(
        task_id__in=ids, state__in=("SUCCESS", "FAILURE", "REVOKED")
    ).count() == len(ids)


def row_for(page: Any, task_id: str) -> Any:
    return page.locator("#result_list tbody tr").filter(has=page.locator(f'[title="{task_id}"]'))


def test_browse_filter_search_history_rerun_revoke_and_queues(
    page, live_server, start_worker, admin_user, screenshot
):
    start_worker("--queues", "default,lopri", "--pool", "threads", "--concurrency", "2")
    ok = tasks.add.delay(20, 22)
    needle = tasks.add.delay(8675309, 1)
    bad = tasks.fail.delay("the disk is full")
    retried = tasks.retry_until.delay(3)
    slow = tasks.progress.apply_async((5,), queue="lopri")
    wait_until(lambda: finished(ok, needle, bad, retried, slow), 60, "the worker")
    later = tasks.record.apply_async(("never",), countdown=3600)

    log_in(page, live_server)
    page.goto(live_server.url + CHANGELIST)
    for result in (ok, needle, bad, retried, slow, later):
        assert row_for(page, result.id).count() == 1
    assert row_for(page, bad.id).locator(".dt-badge").inner_text() == "FAILURE"
    assert row_for(page, ok.id).locator(".dt-badge").inner_text() == "SUCCESS"
    screenshot("admin-changelist")

    # Filter by state (the sidebar), then clear it; search by an argument.
    page.locator("#changelist-filter").get_by_role("link", name="FAILURE").click()
    page.wait_for_url(re.compile(r"state__exact=FAILURE"))
    assert page.locator("#result_list tbody tr").count() == 1
    assert row_for(page, bad.id).count() == 1
    page.goto(live_server.url + CHANGELIST)
    page.fill("#searchbar", "8675309")
    page.press("#searchbar", "Enter")
    page.wait_for_url(re.compile(r"q=8675309"))
    assert page.locator("#result_list tbody tr").count() == 1
    assert row_for(page, needle.id).count() == 1
    screenshot("admin-search")

    # The retried task's history: the whole path, and the inline rows.
    page.goto(live_server.url + CHANGELIST)
    row_for(page, retried.id).locator("th a, td a").first.click()
    path = page.locator(".field-state_path .readonly")
    assert re.sub(r"\s", "", path.inner_text()) == "PENDING→RETRY→RETRY→SUCCESS"
    history = page.locator(".inline-related tbody tr")
    assert "not yet" in history.first.inner_text()
    screenshot("admin-detail-retried", full_page=True)

    # A failure's traceback is collapsed until clicked.
    page.goto(live_server.url + CHANGELIST)
    row_for(page, bad.id).locator("th a, td a").first.click()
    traceback = page.locator("details.dt-traceback")
    assert "CustomError: the disk is full" in traceback.locator("summary").inner_text()
    assert not traceback.locator("pre").is_visible()
    screenshot("admin-detail-failure", full_page=True)
    traceback.locator("summary").click()
    assert "Traceback (most recent call last)" in traceback.locator("pre").inner_text()
    screenshot("admin-detail-traceback", full_page=True)

    # Re-run: a new task, same name and arguments, linked to the original; the worker runs it.
    page.goto(live_server.url + CHANGELIST)
    row_for(page, ok.id).locator("input.action-select").check()
    page.select_option("select[name=action]", "rerun_tasks")
    page.click("button[name=index]")
    assert "Sent 1 new task(s)" in page.locator(".messagelist").inner_text()
    rerun = TaskResult.objects.get(rerun_of__task_id=ok.id)
    wait_until(
        lambda: TaskResult.objects.filter(pk=rerun.pk, state="SUCCESS").exists(), 30, "re-run"
    )
    rerun.refresh_from_db()
    assert (rerun.args, rerun.result) == ([20, 22], 42)
    page.goto(live_server.url + CHANGELIST)
    row_for(page, ok.id).locator("th a, td a").first.click()
    page.locator(".field-reruns_links a").click()
    assert rerun.task_id in page.locator(".field-task_id").inner_text()
    assert ok.id in page.locator(".field-rerun_of_link").inner_text()

    # Revoke a task that waits for its eta: it becomes REVOKED and never runs.
    page.goto(live_server.url + CHANGELIST)
    row_for(page, later.id).locator("input.action-select").check()
    page.select_option("select[name=action]", "revoke_tasks")
    page.click("button[name=index]")
    assert "Revoked 1 task(s)." in page.locator(".messagelist").inner_text()
    assert row_for(page, later.id).locator(".dt-badge").inner_text() == "REVOKED"
    screenshot("admin-actions")

    # The queue overview answers "are my workers keeping up?".
    page.click("text=Queue overview")
    default_row = page.locator('tr[data-queue="default"]')
    assert default_row.locator('[data-col="due"]').inner_text() == "0"
    assert int(default_row.locator('[data-col="succeeded"]').inner_text()) >= 3
    assert default_row.locator('[data-col="failed"]').inner_text() == "1"
    assert "keeping up" in default_row.inner_text()
    assert page.locator('tr[data-queue="lopri"] [data-col="succeeded"]').inner_text() == "1"
    screenshot("admin-queues")


def test_demo_page_shows_progress_then_the_result_or_the_error(
    page, live_server, start_worker, admin_user, screenshot
):
    start_worker("--pool", "threads", "--concurrency", "2")
    log_in(page, live_server)
    page.set_viewport_size({"width": 1000, "height": 420})
    page.goto(live_server.url + "/demo/")
    bar = page.locator("#bar")
    started = time.monotonic()
    page.click("#run")
    # Progress shows before the end: the page follows the task while it runs.
    page.wait_for_function(
        "() => { const v = Number(document.getElementById('bar').getAttribute('aria-valuenow'));"
        " return v > 0 && v < 100; }"
    )
    with contextlib.suppress(PlaywrightTimeoutError):  # only for a nicer screenshot
        page.wait_for_function(
            "() => Number(document.getElementById('bar').getAttribute('aria-valuenow')) >= 30",
            timeout=3000,
        )
    screenshot("demo-progress-running")
    page.wait_for_function(
        "() => document.getElementById('bar').getAttribute('aria-valuenow') === '100'"
    )
    page.wait_for_selector("#outcome:has-text('Result:')")
    assert page.locator("#outcome").inner_text() == 'Result: {"steps":20}'
    assert page.locator("#state").inner_text() == "SUCCESS"
    assert "done" in (bar.get_attribute("class") or "")
    assert time.monotonic() - started < 60
    task_id = page.locator("#task-id").inner_text()
    task = TaskResult.objects.get(task_id=task_id)
    assert task.owner_id == TaskResult._meta.get_field("owner").related_model.objects.get().pk
    assert [s for s, _ in task.state_history()][:3] == ["PENDING", "STARTED", "PROGRESS"]
    screenshot("demo-progress-done")

    page.click("#fail")
    page.wait_for_selector("#outcome.error")
    assert page.locator("#outcome").inner_text() == ("Error: ZeroDivisionError: division by zero")
    assert page.locator("#state").inner_text() == "FAILURE"
    screenshot("demo-error")


def test_the_result_list_fits_1400_pixels_with_its_time_columns(page, live_server, admin_user):
    done = tasks.add.delay(20, 22)
    long = tasks.fail.apply_async(("the disk is full",), queue="invoices-and-reminders")
    # A real project's task name: a dotted path a good deal longer than the test app's.
    TaskResult.objects.filter(task_id=long.id).update(
        task_name="shop.billing.tasks.send_overdue_invoice_reminders"
    )
    # Finished, with every time column filled, as a worker leaves it (in a second).
    run_until_empty()
    page.set_viewport_size({"width": 1400, "height": 900})
    log_in(page, live_server)
    page.goto(live_server.url + CHANGELIST)
    assert row_for(page, done.id).locator("td.field-done_in_list").inner_text() != "-"
    # No horizontal scrolling: neither the page nor the list's own scroll box.
    assert page.evaluate("document.documentElement.scrollWidth") <= 1400
    results = page.locator("#changelist .results")
    assert results.evaluate("box => box.scrollWidth <= box.clientWidth"), results.evaluate(
        "box => [box.scrollWidth, box.clientWidth]"
    )
    right = results.bounding_box()
    for column in ("created", "started_in_list", "done_in_list", "runtime_display"):
        header = page.locator(f"#result_list thead th.column-{column}")
        box = header.bounding_box()
        assert box is not None and header.is_visible(), column
        assert box["x"] + box["width"] <= right["x"] + right["width"], (column, box, right)
