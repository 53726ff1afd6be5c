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


# -- the result browser -------------------------------------------------------------------------

CHANGELIST = "admin:django_tasks_taskresult_changelist"


def change_url(task_id: str) -> str:
    return reverse(
        "admin:django_tasks_taskresult_change",
        args=[TaskResult.objects.get(task_id=task_id).pk],
    )


def run_all() -> None:
    while run_until_empty(["default", "lopri"]):
        pass


def test_changelist_columns_show_short_ids_badges_and_runtimes(staff_client):
    ok = tasks.add.delay(1, 2)
    bad = tasks.fail.delay()
    run_all()
    page = staff_client.get(reverse(CHANGELIST)).content.decode()
    assert f'title="{ok.id}">{ok.id[:8]}</span>' in page
    assert '<span class="dt-badge dt-success">SUCCESS</span>' in page
    assert '<span class="dt-badge dt-failure">FAILURE</span>' in page
    for column in ("task name", "Queue", "Retries", "Created", "Started", "Done", "Runtime"):
        assert column.lower() in page.lower()
    assert bad.id[:8] in page
    assert " ms</td>" in page or " s</td>" in page


def test_changelist_filters_by_task_name_and_queue_and_searches_arguments(staff_client):
    a = tasks.add.delay(1234567, 2)
    b = tasks.add.apply_async((5, 5), queue="lopri")
    c = tasks.record.delay(label="needle-in-kwargs")
    url = reverse(CHANGELIST)

    def listed(**params) -> set[str]:
        page = staff_client.get(url, params).content.decode()
        return {r.id for r in (a, b, c) if r.id[:8] in page}

    assert listed() == {a.id, b.id, c.id}
    assert listed(queue__exact="lopri") == {b.id}
    assert listed(task_name__exact="tests.taskapp.tasks.record") == {c.id}
    assert listed(q="1234567") == {a.id}
    assert listed(q="needle-in") == {c.id}
    assert listed(q=b.id[:13]) == {b.id}
    assert listed(q=f" {c.id} ") == {c.id}
    assert listed(q="taskapp.tasks.record") == {c.id}
    today = a.date_created
    assert listed(
        date_created__year=today.year, date_created__month=today.month, date_created__day=today.day
    ) == {a.id, b.id, c.id}


def test_search_by_short_id_in_any_case_uses_the_prefix(staff_client):
    a = tasks.add.delay(1, 1)
    b = tasks.add.delay(2, 2)
    c = tasks.add.delay(12345678, 0)
    page = staff_client.get(reverse(CHANGELIST), {"q": a.id[:8].upper()}).content.decode()
    assert a.id[:8] in page
    assert b.id[:8] not in page
    # Eight digits that start no id are searched for in the arguments.
    page = staff_client.get(reverse(CHANGELIST), {"q": "12345678"}).content.decode()
    assert c.id[:8] in page
    assert a.id[:8] not in page


def test_search_results_are_paged_and_counted(staff_client, django_assert_max_num_queries):
    found = [tasks.record.delay(label=f"batch-{i}") for i in range(53)]
    tasks.add.delay(1, 1)
    url = reverse(CHANGELIST)
    staff_client.get(url)  # warm the session and content types
    with django_assert_max_num_queries(20) as first_page:
        page = staff_client.get(url, {"q": "batch-"}).content.decode()
    assert "53 results" in page
    assert page.count('class="action-select"') == 50
    counts = [q["sql"] for q in first_page.captured_queries if "COUNT(" in q["sql"].upper()]
    assert len(counts) == 1 and "OVER" in counts[0].upper()  # counted in the page's own query
    second = staff_client.get(url, {"q": "batch-", "p": 2}).content.decode()
    assert second.count('class="action-select"') == 3
    shown = {r.id for r in found if r.id[:8] in page + second}
    assert shown == {r.id for r in found}
    assert staff_client.get(url, {"q": "batch-", "p": 3}).status_code == 302  # past the end
    nothing = staff_client.get(url, {"q": "no-such-text"}).content.decode()
    assert "0 results" in nothing


def test_changelist_query_count_does_not_grow_with_rows(
    staff_client, django_assert_max_num_queries
):
    url = reverse(CHANGELIST)
    for i in range(3):
        tasks.add.delay(i, i)
    staff_client.get(url)  # warm the session and content types
    with django_assert_max_num_queries(20) as few:
        staff_client.get(url)
    for i in range(40):
        tasks.retry_until.apply_async((2,), queue="lopri" if i % 2 else "default")
    run_all()
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert staff_client.get(url).status_code == 200


def test_detail_shows_path_pretty_json_traceback_and_progress(staff_client):
    retried = tasks.retry_until.delay(3)
    run_all()
    page = staff_client.get(change_url(retried.id)).content.decode()
    arrow = '<span class="dt-arrow">→</span>'
    badge = '<span class="dt-badge dt-{}">{}</span>'
    path = arrow.join(
        badge.format(kind, state)
        for kind, state in [
            ("waiting", "PENDING"),
            ("retry", "RETRY"),
            ("retry", "RETRY"),
            ("success", "SUCCESS"),
        ]
    )
    assert path in page
    assert '<pre class="dt-json">[\n  3\n]</pre>' in page
    assert "not yet" in page  # the retry's reason in the history inline

    failed = tasks.fail.delay("kaput")
    run_all()
    page = staff_client.get(change_url(failed.id)).content.decode()
    assert '<details class="dt-traceback"><summary>' in page
    assert "CustomError: kaput</summary>" in page

    progressing = tasks.progress.delay(4)
    from django_tasks.store import store_custom_state

    store_custom_state(progressing.id, "PROGRESS", {"current": 1, "total": 4})
    page = staff_client.get(change_url(progressing.id)).content.decode()
    assert '<progress max="4" value="1"></progress>' in page
    assert "1 / 4 (25%)" in page


def test_rerun_sends_the_same_task_and_links_it_to_the_original(staff_client):
    original = tasks.add.apply_async((20, 22), queue="lopri", priority=3)
    run_all()
    pk = TaskResult.objects.get(task_id=original.id).pk
    response = staff_client.post(
        reverse(CHANGELIST),
        {"action": "rerun_tasks", "_selected_action": [pk]},
        follow=True,
    )
    assert "Sent 1 new task(s)" in response.content.decode()
    rerun = TaskResult.objects.get(rerun_of_id=pk)
    assert rerun.task_id != original.id
    assert (rerun.task_name, rerun.args, rerun.kwargs) == (
        "tests.taskapp.tasks.add",
        [20, 22],
        {},
    )
    assert (rerun.queue, rerun.priority, rerun.state) == ("lopri", 3, "PENDING")
    run_all()
    rerun.refresh_from_db()
    assert rerun.result == 42
    original_page = staff_client.get(change_url(original.id)).content.decode()
    assert rerun.task_id in original_page
    assert original.id in staff_client.get(change_url(rerun.task_id)).content.decode()


def test_revoke_action_revokes_waiting_tasks_and_leaves_finished_ones(staff_client):
    done = tasks.add.delay(1, 1)
    run_all()
    waiting = tasks.record.delay("never")
    pks = list(TaskResult.objects.values_list("pk", flat=True))
    page = staff_client.post(
        reverse(CHANGELIST), {"action": "revoke_tasks", "_selected_action": pks}, follow=True
    ).content.decode()
    assert "Revoked 1 task(s)." in page
    assert "1 task(s) had already finished" in page
    assert TaskResult.objects.get(task_id=waiting.id).state == "REVOKED"
    assert TaskResult.objects.get(task_id=done.id).state == "SUCCESS"
    run_all()
    from tests.taskapp.models import Run

    assert not Run.objects.exists()


def test_view_only_staff_browse_but_get_no_actions_and_no_purge(client, django_user_model):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(
        Permission.objects.get(codename="view_taskresult"),
        Permission.objects.get(codename="view_taskstatechange"),
    )
    client.force_login(viewer)
    res = tasks.add.delay(1, 1)
    page = client.get(reverse(CHANGELIST)).content.decode()
    assert res.id[:8] in page
    assert "rerun_tasks" not in page
    assert "Purge old results" not in page
    assert client.get(reverse("admin:django_tasks_taskresult_purge")).status_code == 403
    pk = TaskResult.objects.get(task_id=res.id).pk
    client.post(reverse(CHANGELIST), {"action": "revoke_tasks", "_selected_action": [pk]})
    assert TaskResult.objects.get(pk=pk).state == "PENDING"
    assert client.get(reverse("admin:django_tasks_taskresult_delete", args=[pk])).status_code == 403


def test_queue_overview_counts_per_queue(staff_client):
    import datetime as dt

    from django.utils import timezone

    tasks.add.delay(1, 1)
    tasks.add.delay(2, 2)
    tasks.add.apply_async((3, 3), queue="lopri", countdown=3600)
    tasks.fail.apply_async(queue="lopri")
    tasks.add.apply_async((4, 4), queue="lopri")
    run_until_empty(["lopri"])
    old = tasks.add.delay(5, 5)
    TaskResult.objects.filter(task_id=old.id).update(
        run_after=timezone.now() - dt.timedelta(minutes=5)
    )
    page = staff_client.get(reverse("admin:django_tasks_taskresult_queues")).content.decode()

    def cell(queue: str, col: str) -> str:
        row = page.split(f'<tr data-queue="{queue}">')[1].split("</tr>")[0]
        return row.split(f'data-col="{col}">')[1].split("</td>")[0]

    assert cell("default", "due") == "3"
    assert cell("default", "oldest_due").startswith("5 min")
    assert "falling behind" in page.split('<tr data-queue="default">')[1].split("</tr>")[0]
    assert cell("lopri", "due") == "0"
    assert cell("lopri", "scheduled") == "1"
    assert ">1</a>" in cell("lopri", "failed")
    assert cell("lopri", "succeeded") == "1"
    assert "keeping up" in page.split('<tr data-queue="lopri">')[1].split("</tr>")[0]


def test_purge_page_counts_then_deletes_only_old_finished_results(staff_client):
    import datetime as dt

    from django.utils import timezone

    old_done = tasks.add.delay(1, 1)
    recent_done = tasks.add.delay(2, 2)
    run_all()
    old_waiting = tasks.add.delay(3, 3)
    long_ago = timezone.now() - dt.timedelta(days=10)
    TaskResult.objects.filter(task_id__in=[old_done.id, old_waiting.id]).update(
        date_created=long_ago
    )
    TaskResult.objects.filter(task_id=old_done.id).update(date_done=long_ago)
    url = reverse("admin:django_tasks_taskresult_purge")
    page = staff_client.get(url, {"days": 7}).content.decode()
    assert "<strong>1</strong> finished result(s) are older than 7" in page
    response = staff_client.post(url, {"days": 7}, follow=True)
    assert "Deleted 1 finished result(s) older than 7 day(s)." in response.content.decode()
    assert set(TaskResult.objects.values_list("task_id", flat=True)) == {
        recent_done.id,
        old_waiting.id,
    }


def test_the_date_hierarchy_drills_down_from_the_first_and_last_dates(staff_client):
    import datetime as dt

    from django.utils import timezone

    a = tasks.add.delay(1, 1)
    b = tasks.add.delay(2, 2)
    c = tasks.add.delay(3, 3)
    now = timezone.now()
    TaskResult.objects.filter(task_id=a.id).update(
        date_created=dt.datetime(2024, 11, 3, tzinfo=dt.UTC)
    )
    TaskResult.objects.filter(task_id=b.id).update(
        date_created=dt.datetime(2025, 1, 30, tzinfo=dt.UTC)
    )
    url = reverse(CHANGELIST)
    page = staff_client.get(url).content.decode()
    for year in range(2024, now.year + 1):
        assert f"?date_created__year={year}" in page
    page = staff_client.get(url, {"date_created__year": 2025}).content.decode()
    assert "date_created__month=1" in page
    assert b.id[:8] in page and a.id[:8] not in page and c.id[:8] not in page
    page = staff_client.get(
        url, {"date_created__year": 2025, "date_created__month": 1}
    ).content.decode()
    assert "date_created__day=30" in page
    assert "date_created__day=31" not in page  # after the last date
    page = staff_client.get(
        url, {"date_created__year": 2024, "date_created__month": 11, "date_created__day": 3}
    ).content.decode()
    assert a.id[:8] in page and b.id[:8] not in page


def test_a_task_id_in_the_change_url_redirects_to_the_results_page(staff_client):
    res = tasks.add.delay(1, 2)
    pk = TaskResult.objects.get(task_id=res.id).pk
    by_pk = reverse("admin:django_tasks_taskresult_change", args=[pk])
    for given in (res.id, res.id.upper()):
        response = staff_client.get(f"/admin/django_tasks/taskresult/{given}/change/")
        assert response.status_code == 302
        assert response["Location"] == by_pk
    assert staff_client.get(by_pk).status_code == 200
    # An unknown id is the admin's own "does not exist" answer (a redirect to the list).
    unknown = staff_client.get("/admin/django_tasks/taskresult/no-such-task/change/")
    assert unknown.status_code == 302
    assert unknown["Location"] == reverse("admin:index")
