"""The HTTP API at its edges: hostile input answers 4xx (never 500), deeply nested values
render depth-limited, weak ETags match, long-polls share one LISTEN connection and are
bounded, and only staff with the view permission read every result."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from django.db import connection
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from django_tasks import states
from django_tasks.models import TaskResult
from django_tasks.store import store_custom_state
from django_tasks.testing import close_waiter
from tests.conftest import wait_until
from tests.deep_values import nested, old_data
from tests.taskapp import tasks

pytestmark = pytest.mark.django_db

LIST_URL = "/tasks/"
GZIP_MIDDLEWARE = "django.middleware.gzip.GZipMiddleware"


def detail_url(task_id: str) -> str:
    return reverse("django_tasks:task-detail", args=[task_id])


def revoke_url(task_id: str) -> str:
    return reverse("django_tasks:task-revoke", args=[task_id])


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("owner", password="pw")


@pytest.fixture
def staff(django_user_model):
    """Staff with the model's view permission: they read every result."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_taskresult"))
    return user


def http(user: Any = None) -> Client:
    """A client that answers a server error as a 500 instead of raising it in the test."""
    c = Client(raise_request_exception=False)
    if user is not None:
        c.force_login(user)
    return c


def depth_of(value: Any) -> int:
    depth = 0
    while isinstance(value, list | dict) and value:
        value = value[0] if isinstance(value, list) else next(iter(value.values()))
        depth += 1
    return depth


# -- 1. NUL bytes and broken unicode: 4xx, never 500 ----------------------------------------


@pytest.mark.parametrize("task_id", ["%00", "abc%00def", "%00%00"])
def test_a_nul_byte_in_a_task_id_is_a_client_error(staff, task_id):
    c = http(staff)
    for response in (
        c.get(f"/tasks/{task_id}/"),
        c.get(f"/tasks/{task_id}/", {"wait": "0.2"}),
        c.get(f"/tasks/{task_id}/", headers={"If-None-Match": '"x"'}),
        c.post(f"/tasks/{task_id}/revoke/"),
    ):
        assert response.status_code in (400, 404), response.content


@pytest.mark.parametrize("param", ["state", "name", "queue"])
@pytest.mark.parametrize("value", ["\x00", "SUCCESS,\x00", "a\x00b"])
def test_a_nul_byte_in_a_list_filter_is_a_400(staff, param, value):
    tasks.add.delay(1, 2)
    response = http(staff).get(LIST_URL, {param: value})
    assert response.status_code == 400, response.content
    assert param in response.json()


def test_nul_bytes_elsewhere_in_the_query_are_client_errors(staff):
    tasks.add.delay(1, 2)
    c = http(staff)
    for params in ({"page": "\x00"}, {"page_size": "\x00"}, {"wait": "\x00"}):
        response = c.get(LIST_URL, params)
        assert response.status_code in (200, 400, 404), (params, response.content)


@pytest.mark.parametrize("page_size", ["null", "0", "-3", "1.5", "\x00", "٣"])
def test_a_page_size_that_is_not_a_positive_whole_number_is_a_400(staff, page_size):
    response = http(staff).get(LIST_URL, {"page_size": page_size})
    assert response.status_code == 400
    assert response.json() == {"page_size": ["A whole number of results, 1 or more."]}


def test_a_bad_wait_is_a_400_naming_it_in_a_list(staff):
    response = http(staff).get(detail_url("some-id"), {"wait": "-1"})
    assert response.status_code == 400
    assert response.json() == {"wait": ["A number of seconds (>= 0)."]}


def test_broken_utf8_never_reaches_the_database_as_a_lone_surrogate(staff):
    """Percent-encoded surrogate halves (CESU-8) and stray bytes arrive as replacement
    characters or re-quoted text, never as lone surrogates: ordinary answers."""
    tasks.add.delay(1, 2)
    c = http(staff)
    for url in (
        "/tasks/%ED%A0%80/",
        "/tasks/%ED%A0%80/revoke/",
        "/tasks/?state=%ED%A0%80",
        "/tasks/?name=%ED%B0%80&queue=%FF",
        "/tasks/%FF%FE/",
    ):
        response = c.post(url) if url.endswith("revoke/") else c.get(url)
        assert response.status_code < 500, (url, response.content)


# -- 3. deeply nested values render depth-limited ---------------------------------------------


def _deep_row(depth: int, owner: Any = None) -> TaskResult:
    now = timezone.now()
    with old_data():
        return TaskResult.objects.create(
            task_id=str(uuid.uuid4()),
            task_name="tests.taskapp.tasks.add",
            state=states.SUCCESS,
            args=[nested(depth)],
            kwargs={"deep": nested(depth)},
            result=nested(depth),
            meta=nested(depth),
            owner=owner,
            date_created=now,
            run_after=now,
            date_done=now,
        )


@pytest.mark.parametrize("depth", [25, 950])
def test_deeply_nested_values_answer_depth_limited_in_the_detail_and_the_list(staff, depth):
    row = _deep_row(depth)
    c = http(staff)
    response = c.get(detail_url(row.task_id))
    assert response.status_code == 200, response.content[:2000]
    data = response.json()
    for key in ("args", "kwargs", "result", "meta"):
        assert depth_of(data[key]) <= 21, key
    assert "…" in response.content.decode()
    listed = c.get(LIST_URL)
    assert listed.status_code == 200, listed.content[:2000]
    (item,) = listed.json()["results"]
    assert depth_of(item["args"]) <= 21
    assert depth_of(item["result"]) <= 21


def test_values_up_to_the_depth_limit_are_shown_whole(staff):
    row = _deep_row(19)  # args and kwargs: 20 levels with their own list and dict
    data = http(staff).get(detail_url(row.task_id)).json()
    assert data["result"] == data["meta"] == nested(19)
    assert data["args"] == [nested(19)]
    assert data["kwargs"] == {"deep": nested(19)}
    assert "…" not in str(data)


@pytest.mark.django_db(transaction=True)
def test_a_long_poll_on_a_deeply_nested_task_answers(staff):
    row = _deep_row(950)
    TaskResult.objects.filter(pk=row.pk).update(state="PROGRESS", date_done=None)
    c = http(staff)
    first = c.get(detail_url(row.task_id))
    assert first.status_code == 200
    response = c.get(
        detail_url(row.task_id), {"wait": 0.3}, headers={"If-None-Match": first["ETag"]}
    )
    assert response.status_code == 304


# -- 4. ETags compare weakly ------------------------------------------------------------------


def test_a_weak_etag_matches_the_strong_one(owner):
    res = tasks.add.apply_async((1, 2), owner=owner)
    c = http(owner)
    etag = c.get(detail_url(res.id))["ETag"]
    for header in (f"W/{etag}", f'"nope", W/{etag}', f'{etag}, "nope"', "*"):
        response = c.get(detail_url(res.id), headers={"If-None-Match": header})
        assert response.status_code == 304, header
    assert c.get(detail_url(res.id), headers={"If-None-Match": 'W/"nope"'}).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_long_polls_wait_behind_gzip_middleware(owner, settings):
    settings.MIDDLEWARE = [GZIP_MIDDLEWARE, *settings.MIDDLEWARE]
    res = tasks.add.apply_async(("a" * 200, "b" * 200), owner=owner)  # big enough to gzip
    c = http(owner)
    first = c.get(detail_url(res.id), headers={"Accept-Encoding": "gzip"})
    assert first["Content-Encoding"] == "gzip"
    etag = first["ETag"]
    assert etag.startswith('W/"'), etag  # GZipMiddleware weakens the strong ETag
    again = c.get(detail_url(res.id), headers={"Accept-Encoding": "gzip", "If-None-Match": etag})
    assert again.status_code == 304
    started = time.monotonic()
    polled = c.get(
        detail_url(res.id),
        {"wait": 1},
        headers={"Accept-Encoding": "gzip", "If-None-Match": etag},
    )
    assert polled.status_code == 304
    assert time.monotonic() - started >= 0.9  # it waited: no busy loop


# -- 5. long-polls share one LISTEN connection, hold no database connection, and are bounded --


def _pg_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("LISTEN/NOTIFY needs PostgreSQL")


def _backends(where: str = "TRUE") -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            f"AND pid <> pg_backend_pid() AND {where}"
        )
        return int(cursor.fetchone()[0])


def _listen_connections() -> int:
    return _backends("query ILIKE 'LISTEN django_tasks_state%%'")


class Polls:
    """Long-polls running in threads, each with its own test client and connection."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.responses: list[Any] = []

    def start(self, user: Any, task_id: str, etag: str | None, wait: float) -> None:
        def poll() -> None:
            try:
                c = http(user)
                headers = {"If-None-Match": etag} if etag else {}
                self.responses.append(c.get(detail_url(task_id), {"wait": wait}, headers=headers))
            finally:
                connection.close()

        thread = threading.Thread(target=poll)
        thread.start()
        self.threads.append(thread)

    def join(self) -> list[Any]:
        for thread in self.threads:
            thread.join(30)
        return self.responses


def _waiting_polls() -> int:
    from django_tasks.api import longpoll

    return longpoll.active()


@pytest.mark.django_db(transaction=True)
def test_concurrent_long_polls_share_one_listen_connection_and_wake_on_a_change(owner):
    _pg_only()
    res = tasks.add.apply_async((1, 2), owner=owner)
    etag = http(owner).get(detail_url(res.id))["ETag"]
    connections_before = _backends("query NOT ILIKE 'LISTEN%%'")
    polls = Polls()
    for _ in range(6):
        polls.start(owner, res.id, etag, 20)
    wait_until(lambda: _waiting_polls() == 6, 10, "six waiting long-polls")
    time.sleep(0.2)
    assert _listen_connections() == 1
    # The waiting polls hold no Django connection of their own.
    assert _backends("query NOT ILIKE 'LISTEN%%'") <= connections_before
    started = time.monotonic()
    store_custom_state(res.id, "PROGRESS", {"current": 1, "total": 2})
    responses = polls.join()
    assert time.monotonic() - started < 5
    assert [r.status_code for r in responses] == [200] * 6
    assert {r.json()["state"] for r in responses} == {"PROGRESS"}
    close_waiter()  # nobody waits: the shared connection closes
    wait_until(lambda: _listen_connections() == 0, 5, "the LISTEN connection to close")


@pytest.mark.django_db(transaction=True)
def test_get_shares_the_listen_connection_with_long_polls(owner):
    _pg_only()
    res = tasks.add.apply_async((1, 2), owner=owner)
    etag = http(owner).get(detail_url(res.id))["ETag"]
    polls = Polls()
    polls.start(owner, res.id, etag, 20)
    wait_until(lambda: _waiting_polls() == 1, 10, "a waiting long-poll")
    got: list[Any] = []

    def get() -> None:
        try:
            got.append(tasks.add.AsyncResult(res.id).get(timeout=20))
        finally:
            connection.close()

    getter = threading.Thread(target=get)
    getter.start()
    time.sleep(0.5)
    assert _listen_connections() == 1
    from django_tasks.testing import run_until_empty

    run_until_empty()
    getter.join(20)
    assert got == [3]
    assert polls.join()[0].status_code == 200
    del getter  # its thread's waiter is collected with it, and lets go of the listener
    close_waiter()
    wait_until(lambda: _listen_connections() == 0, 5, "the LISTEN connection to close")


@pytest.mark.django_db(transaction=True)
@override_settings(DJANGO_TASKS={"API_MAX_LONG_POLLS": 1})
def test_long_polls_beyond_the_bound_answer_304_or_429_at_once(owner):
    c = http(owner)
    unknown = str(uuid.uuid4())  # reads PENDING: a long-poll on it waits
    etag = c.get(detail_url(unknown))["ETag"]
    polls = Polls()
    polls.start(owner, unknown, etag, 3)
    wait_until(lambda: _waiting_polls() == 1, 10, "a waiting long-poll")
    started = time.monotonic()
    matched = c.get(detail_url(unknown), {"wait": 3}, headers={"If-None-Match": etag})
    assert matched.status_code == 304
    assert matched["ETag"] == etag
    unconditional = c.get(detail_url(unknown), {"wait": 3})
    assert unconditional.status_code == 429
    assert int(unconditional["Retry-After"]) >= 1
    # Requests that need no waiting are answered as usual.
    assert c.get(detail_url(unknown)).status_code == 200
    assert c.get(detail_url(unknown), {"wait": 3}, headers={"If-None-Match": '"old"'}).json()
    assert time.monotonic() - started < 2
    assert polls.join()[0].status_code == 304
    assert _waiting_polls() == 0


# -- 6. who sees what -------------------------------------------------------------------------


def test_staff_without_the_view_permission_see_only_their_own(owner, django_user_model):
    bare = django_user_model.objects.create_user("bare", password="pw", is_staff=True)
    theirs = tasks.fail.apply_async(("kaput",), owner=owner)
    own = tasks.add.apply_async((1, 1), owner=bare)
    ownerless = tasks.add.delay(2, 2)
    c = http(bare)
    assert c.get(reverse("admin:django_tasks_taskresult_changelist")).status_code == 403
    unknown = c.get(detail_url("no-such-task")).json()
    for task_id in (theirs.id, ownerless.id):
        assert {**c.get(detail_url(task_id)).json(), "id": "no-such-task"} == unknown
    assert [row["id"] for row in c.get(LIST_URL).json()["results"]] == [own.id]
    mine = c.get(detail_url(own.id)).json()
    assert mine["state"] == "PENDING" and mine["name"] == "tests.taskapp.tasks.add"
    assert "args" not in mine and "traceback" not in mine
    assert c.post(revoke_url(theirs.id)).status_code == 404
    assert TaskResult.objects.get(task_id=theirs.id).state == states.PENDING


def test_staff_with_the_view_permission_and_superusers_see_everything(
    owner, staff, django_user_model
):
    boss = django_user_model.objects.create_superuser("boss", "b@example.com", "pw")
    theirs = tasks.fail.apply_async(("kaput",), owner=owner)
    ownerless = tasks.add.delay(2, 2)
    for user in (staff, boss):
        c = http(user)
        assert c.get(detail_url(theirs.id)).json()["args"] == ["kaput"]
        listed = {row["id"] for row in c.get(LIST_URL).json()["results"]}
        assert listed == {theirs.id, ownerless.id}


def test_revoking_someone_elses_task_needs_the_change_permission(owner, staff):
    res = tasks.add.apply_async((1, 2), owner=owner)
    assert http(staff).post(revoke_url(res.id)).status_code in (403, 404)
    assert TaskResult.objects.get(task_id=res.id).state == states.PENDING
    from django.contrib.auth.models import Permission

    staff.user_permissions.add(Permission.objects.get(codename="change_taskresult"))
    response = http(staff).post(revoke_url(res.id))
    assert response.status_code == 200
    assert response.json()["state"] == "REVOKED"


@override_settings(DJANGO_TASKS={"API_PERMISSION_CLASSES": []})
def test_no_permission_classes_deny_everything(owner, django_user_model):
    boss = django_user_model.objects.create_superuser("boss", "b@example.com", "pw")
    res = tasks.add.apply_async((1, 2), owner=owner)
    for user in (owner, boss):
        c = http(user)
        for response in (
            c.get(LIST_URL),
            c.get(detail_url(res.id)),
            c.post(revoke_url(res.id)),
        ):
            assert response.status_code == 403, response.content
    assert TaskResult.objects.get(task_id=res.id).state == states.PENDING


# -- 7. the OpenAPI schema is true ------------------------------------------------------------


def _schema(user: Any) -> dict[str, Any]:
    response = http(user).get(
        reverse("django_tasks:schema"), headers={"Accept": "application/vnd.oai.openapi+json"}
    )
    assert response.status_code == 200
    return response.json()


def test_the_schema_answers_json_by_format_and_yaml_by_default(owner):
    c = http(owner)
    url = reverse("django_tasks:schema")
    as_json = c.get(url, {"format": "openapi-json"})
    assert as_json.status_code == 200
    assert as_json.json()["paths"]
    as_yaml = c.get(url)
    assert as_yaml.status_code == 200
    assert as_yaml["Content-Type"].startswith("application/vnd.oai.openapi")
    assert as_yaml.content.startswith(b"openapi: 3.")


def test_the_schema_documents_the_real_statuses(owner):
    paths = _schema(owner)["paths"]
    detail = paths["/tasks/{task_id}/"]["get"]
    assert {"200", "304", "400", "429"} <= set(detail["responses"])
    revoke = paths["/tasks/{task_id}/revoke/"]["post"]
    assert {"200", "404", "409"} <= set(revoke["responses"])
    assert "201" not in revoke["responses"]
    listing = paths["/tasks/"]["get"]
    assert {"200", "400", "404"} <= set(listing["responses"])
    assert [detail["operationId"], revoke["operationId"], listing["operationId"]] == [
        "getTask",
        "revokeTask",
        "listTasks",
    ]


def test_the_schema_types_the_fields_truly(owner):
    schema = _schema(owner)
    task = schema["components"]["schemas"]["Task"]
    props = task["properties"]
    assert props["ready"]["type"] == "boolean"
    assert props["states"]["type"] == "array"
    change = schema["components"]["schemas"][props["states"]["items"]["$ref"].rsplit("/", 1)[1]]
    assert set(change["properties"]) == {"state", "at"}
    assert change["properties"]["state"]["type"] == "string"
    for date in ("date_started", "date_done"):
        assert props[date].get("nullable") is True, date
    assert props["state"]["type"] == "string"
    assert "enum" not in props["state"]  # custom states such as PROGRESS are allowed
    for key in ("result", "meta", "args", "kwargs"):
        assert "type" not in props[key] or props[key].get("nullable"), key
    assert props["args"].get("nullable") or "type" not in props["args"]
    assert set(task["required"]) >= {"id", "name", "state", "ready", "result", "states"}
    assert "args" not in task["required"]
