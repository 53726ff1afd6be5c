"""The canvas: chains, groups and chords, run by the worker's loop in-process and eagerly.

Real worker processes (two at once, one killed mid-chord) are in test_canvas_workers.py.
"""

import copy
import gc
import time
import uuid

import pytest

from django_tasks import AsyncResult, GroupResult, Signature, chain, chord, group, states
from django_tasks.exceptions import ChordError, TaskRevokedError
from django_tasks.models import TaskGroup, TaskResult
from django_tasks.testing import run_until_empty
from tests.taskapp import tasks
from tests.taskapp.models import Run

pytestmark = pytest.mark.django_db


def drain():
    while run_until_empty():
        pass


@pytest.fixture(params=["worker", "eager"])
def mode(request, settings):
    """Each test runs with the worker's loop, then eagerly: the results must be the same."""
    settings.DJANGO_TASKS = {"TASK_ALWAYS_EAGER": request.param == "eager"}
    return request.param


# -- building -----------------------------------------------------------------------------------


def test_the_pipe_builds_a_chain_never_a_merged_dict():
    built = tasks.add.s(1, 2) | tasks.add.s(3)
    assert isinstance(built, chain)
    assert [t.args for t in built.tasks] == [[1, 2], [3]]
    longer = built | tasks.mul.s(2) | (tasks.add.s(1) | tasks.add.s(2))
    assert [t.task.rsplit(".", 1)[-1] for t in longer.tasks] == ["add", "add", "mul", "add", "add"]
    assert isinstance(tasks.add.s(1) | group(tasks.add.s(2)), chain)


def test_a_group_followed_by_a_task_becomes_a_chord():
    upgraded = group(tasks.add.s(1, 1), tasks.add.s(2, 2)) | tasks.tsum.s()
    assert isinstance(upgraded, chord)
    assert upgraded.body.task == tasks.tsum.name
    in_chain = chain(tasks.add.s(1, 1), group(tasks.add.s(1), tasks.add.s(2)), tasks.tsum.s())
    assert isinstance(in_chain.tasks[1], chord)


def test_canvas_signatures_survive_a_json_round_trip():
    import json

    sig = chain(tasks.add.s(1, 1), chord([tasks.add.s(1), tasks.add.s(2)], tasks.tsum.s()))
    again = Signature.from_dict(json.loads(json.dumps(sig)))
    assert isinstance(again, chain)
    assert isinstance(again.tasks[1], chord)
    assert again.tasks[1].header.tasks[1].args == [2]


# -- chains -------------------------------------------------------------------------------------


def test_a_chain_passes_each_result_on_and_knows_its_parents(mode):
    res = chain(tasks.add.s(2, 2), tasks.add.s(4), tasks.add.s(8)).apply_async()
    drain()
    assert res.get(timeout=10) == 16
    assert res.parent.get(timeout=1) == 8
    assert res.parent.parent.get(timeout=1) == 4
    assert res.parent.parent.parent is None
    called = (tasks.add.s(2, 2) | tasks.add.s(4) | tasks.add.s(8))()
    drain()
    assert called.get(timeout=10) == 16


def test_chain_rows_store_their_parent_and_a_restored_result_finds_it():
    res = chain(tasks.add.s(1, 1), tasks.add.s(1), tasks.add.s(1)).apply_async()
    drain()
    last = TaskResult.objects.get(task_id=res.id)
    assert last.parent_id == res.parent.id
    restored = AsyncResult(res.id)
    assert restored.parent.id == res.parent.id
    assert restored.parent.parent.id == res.parent.parent.id


def test_immutable_steps_ignore_the_previous_result(mode):
    res = chain(tasks.add.s(1, 1), tasks.add.si(10, 10), tasks.add.s(1)).apply_async()
    drain()
    assert res.get(timeout=10) == 21


def test_a_failed_step_stops_the_chain_and_get_raises_its_error_at_once(mode):
    res = chain(tasks.add.s(1, 1), tasks.fail.s(), tasks.record.s("never")).apply_async()
    drain()
    started = time.monotonic()
    with pytest.raises(tasks.CustomError):
        res.get(timeout=30)
    assert time.monotonic() - started < 5  # not the timeout
    assert isinstance(res.get(timeout=30, propagate=False), tasks.CustomError)
    assert not Run.objects.exists()
    if mode == "worker":
        assert not AsyncResult(res.id).exists()  # the last step was never sent


def test_get_on_a_chain_fails_fast_while_it_waits():
    """The failure comes while get() is already waiting (a real chain in flight)."""
    res = chain(tasks.add.s(1, 1), tasks.fail.s(), tasks.add.s(1)).apply_async()
    run_until_empty()  # the first step, then the failing one (linked)
    run_until_empty()
    started = time.monotonic()
    with pytest.raises(tasks.CustomError):
        res.get(timeout=30)
    assert time.monotonic() - started < 5


def test_chain_options_link_and_link_error(mode, django_capture_on_commit_callbacks):
    ok = chain(tasks.add.s(1, 1), tasks.add.s(1)).apply_async(
        link=tasks.record.s(), queue="default", task_id="the-chain"
    )
    failing = chain(tasks.add.s(1, 1), tasks.fail.s(), tasks.add.s(1)).apply_async(
        link_error=tasks.on_error.s()
    )
    drain()
    assert ok.id == "the-chain"
    assert ok.get(timeout=10) == 3
    labels = sorted(Run.objects.values_list("label", flat=True))
    assert labels == ["3", "errback:CustomError:True"]
    # The errback was applied to the step that failed.
    assert Run.objects.get(label__startswith="errback").task_id == failing.parent.id


# -- groups -------------------------------------------------------------------------------------


def test_a_group_returns_its_results_in_order(mode):
    g = group(tasks.add.s(i, i) for i in range(10)).apply_async()
    assert isinstance(g, GroupResult)
    drain()
    assert g.get(timeout=10) == [i * 2 for i in range(10)]
    assert g.join(timeout=10) == [i * 2 for i in range(10)]
    assert g.ready() and g.successful() and not g.failed() and not g.waiting()
    assert g.completed_count() == 10
    assert [r.id for r in g.results] == [r.id for r in g]
    called = group(tasks.add.s(1, 1), tasks.add.s(2, 2))()
    drain()
    assert called.get(timeout=10) == [2, 4]


def test_a_group_is_stored_when_sent_and_restored_anywhere():
    g = group(tasks.add.s(i, 1) for i in range(3)).apply_async()
    restored = GroupResult.restore(g.id)
    assert [r.id for r in restored.results] == [r.id for r in g.results]
    assert restored.waiting() and not restored.ready() and restored.completed_count() == 0
    drain()
    assert GroupResult.restore(g.id).get(timeout=10) == [1, 2, 3]
    assert GroupResult.restore("no-such-group") is None
    rows = TaskResult.objects.filter(group_id=g.id).order_by("group_index")
    assert [r.task_id for r in rows] == [r.id for r in g.results]
    assert [r.group_index for r in rows] == [0, 1, 2]


def test_group_progress_with_a_failure(mode):
    g = group(tasks.add.s(1, 1), tasks.fail.s("bad"), tasks.add.s(2, 2)).apply_async()
    drain()
    assert g.ready() and g.failed() and not g.successful()
    assert g.completed_count() == 2
    with pytest.raises(tasks.CustomError):
        g.get(timeout=10)
    values = g.get(timeout=10, propagate=False)
    assert values[0] == 2 and values[2] == 4 and isinstance(values[1], tasks.CustomError)


def test_revoking_a_group_revokes_what_has_not_run():
    g = group(tasks.record.s(str(i)) for i in range(3)).apply_async()
    g.revoke()
    drain()
    assert not Run.objects.exists()
    assert [r.state for r in g.results] == [states.REVOKED] * 3
    with pytest.raises(TaskRevokedError):
        g.get(timeout=5)


def test_a_group_of_chains_and_a_chain_of_groups(mode):
    g = group(chain(tasks.add.s(i, i), tasks.mul.s(10)) for i in range(3)).apply_async()
    drain()
    assert g.get(timeout=10) == [0, 20, 40]
    assert g.results[1].parent.get(timeout=1) == 2
    res = chain(
        tasks.add.s(1, 1),
        group(tasks.add.s(1), tasks.add.s(2)),
        tasks.tsum.s(),
        group(tasks.add.s(1), tasks.mul.s(2)),
    ).apply_async()
    drain()
    # 2 -> [3, 4] -> 7 -> [8, 14]
    assert res.get(timeout=10) == [8, 14]


def test_group_args_are_prepended_to_each_member(mode):
    g = group(tasks.add.s(1), tasks.mul.s(3)).apply_async((10,))
    drain()
    assert g.get(timeout=10) == [11, 30]


# -- chords -------------------------------------------------------------------------------------


def test_a_chord_runs_its_body_with_the_header_results(mode):
    c = chord((tasks.add.s(i, i) for i in range(10)), tasks.tsum.s()).apply_async()
    drain()
    assert c.get(timeout=10) == 90
    assert isinstance(c.parent, GroupResult)
    assert c.parent.get(timeout=1) == [i * 2 for i in range(10)]
    again = chord(tasks.add.s(i, i) for i in range(3))(tasks.tsum.s())
    drain()
    assert again.get(timeout=10) == 6


def test_a_chord_body_gets_results_in_header_order_with_chains_in_the_header(mode):
    c = chord(
        [chain(tasks.add.s(1, 1), tasks.mul.s(5)), tasks.add.s(3, 3), tasks.add.s(0, 1)],
        tasks.listing.s("extra"),
    ).apply_async()
    drain()
    assert c.get(timeout=10) == [[10, 6, 1], "extra"]


def test_the_chord_row_counts_down_and_records_its_state():
    c = chord([tasks.add.s(1, 1), tasks.add.s(2, 2)], tasks.tsum.s()).apply_async()
    row = TaskGroup.objects.get(group_id=c.parent.id)
    assert (row.chord_state, row.remaining, row.body_task_id) == ("PENDING", 2, c.id)
    assert set(
        TaskResult.objects.filter(chord_id=row.group_id).values_list("task_id", flat=True)
    ) == {r.id for r in c.parent.results}
    drain()
    row.refresh_from_db()
    assert (row.chord_state, row.remaining) == ("SENT", 0)
    assert c.get(timeout=10) == 6


def test_an_empty_header_runs_the_body_at_once(mode):
    c = chord([], tasks.tsum.s()).apply_async()
    drain()
    assert c.get(timeout=10) == 0


def test_a_failed_header_task_fails_the_chord_naming_it(mode, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        c = chord(
            [tasks.add.s(1, 1), tasks.fail.s("header"), tasks.add.s(2, 2)],
            tasks.record_body.s(),
        ).apply_async(link_error=tasks.record_failed_id.s())
        drain()
    drain()  # the errback, sent once the failure committed
    failed_id = c.parent.results[1].id
    with pytest.raises(ChordError, match=failed_id):
        c.get(timeout=10)
    assert c.state == states.FAILURE
    assert "CustomError" in str(c.result)
    assert not Run.objects.filter(label__startswith="body").exists()
    # The body's errback: sent as a task with the (body's) failed id.
    assert list(Run.objects.values_list("task_id", "label")) == [(c.id, "errback-task")]
    if mode == "worker":
        assert TaskGroup.objects.get(group_id=c.parent.id).failed_task_id == failed_id


def test_a_header_task_that_retries_then_succeeds_counts_once():
    c = chord([tasks.retry_until.s(2), tasks.add.s(1, 1)], tasks.tsum.s()).apply_async()
    drain()
    assert c.get(timeout=10) == 3


def test_revoking_the_chord_revokes_what_has_not_run():
    c = chord([tasks.record.s("a"), tasks.record.s("b")], tasks.record_body.s()).apply_async()
    assert c.revoke() is True
    drain()
    assert not Run.objects.exists()
    assert c.state == states.REVOKED
    assert [r.state for r in c.parent.results] == [states.REVOKED] * 2
    assert TaskGroup.objects.get(group_id=c.parent.id).chord_state == "REVOKED"


def test_a_body_that_cannot_be_sent_fails_the_chord_and_keeps_the_header_outcome():
    # add() needs two arguments; the body gets one (the results): refused at send time.
    c = chord([tasks.add.s(1, 1)], tasks.add.s()).apply_async()
    drain()
    assert c.parent.results[0].get(timeout=1) == 2
    with pytest.raises(ChordError, match="could not be sent"):
        c.get(timeout=10)


def test_chord_options_and_links_apply_to_the_body(mode):
    c = chord([tasks.add.s(1, 1), tasks.add.s(2, 2)], tasks.tsum.s()).apply_async(
        link=tasks.record.s(), task_id="chord-body"
    )
    drain()
    assert c.id == "chord-body"
    assert c.get(timeout=10) == 6
    assert list(Run.objects.values_list("label", flat=True)) == ["6"]


def test_a_chord_of_chords_and_a_chord_in_a_chain(mode):
    inner = [chord([tasks.add.s(i, i), tasks.add.s(i, 1)], tasks.tsum.s()) for i in range(3)]
    c = chord(inner, tasks.tsum.s()).apply_async()
    drain()
    # (0+1) + (2+2) + (4+3) = 12
    assert c.get(timeout=10) == 12
    res = (
        tasks.add.s(1, 1)
        | chord([tasks.add.s(1), tasks.add.s(2)], tasks.tsum.s())
        | tasks.mul.s(10)
    )()
    drain()
    assert res.get(timeout=10) == 70


def test_a_failure_inside_an_inner_chord_fails_the_outer_chord():
    inner = chord([tasks.fail.s("deep")], tasks.tsum.s())
    c = chord([inner, tasks.add.s(1, 1)], tasks.record_body.s()).apply_async()
    drain()
    with pytest.raises(ChordError):
        c.get(timeout=10)
    assert not Run.objects.exists()


def test_ignore_result_header_tasks_still_give_the_body_their_results():
    c = chord([tasks.add.s(1, 1).set(ignore_result=True)], tasks.tsum.s()).apply_async()
    drain()
    assert c.get(timeout=10) == 2


# -- bulk sends -----------------------------------------------------------------------------


def _task_inserts(queries):
    table = TaskResult._meta.db_table
    return [
        q["sql"]
        for q in queries
        if q["sql"].lstrip().upper().startswith(("INSERT", "COPY")) and table in q["sql"]
    ]


def test_a_group_is_sent_with_one_insert_per_thousand_tasks():
    """One statement per 1,000 rows: a multi-row INSERT, or on PostgreSQL a COPY."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        g = group(tasks.add.s(i, 1) for i in range(2500)).apply_async()
    assert len(_task_inserts(captured.captured_queries)) == 3
    assert TaskResult.objects.filter(group_id=g.id).count() == 2500
    drain()
    assert g.get(timeout=30) == [i + 1 for i in range(2500)]


def test_a_group_member_row_holds_what_a_single_send_writes():
    """The bulk send prepares values per column (on PostgreSQL for its COPY): what it stores
    reads back as the one-row INSERT's does (kombu's JSON types, naive and aware times,
    headers, no options), save for the group columns."""
    import datetime as dt
    import decimal
    import uuid

    from django.utils import timezone

    when = dt.datetime(2031, 5, 6, 7, 8, 9, 123456)  # naive: the current time zone
    value = {"d": decimal.Decimal("1.50"), "u": uuid.UUID(int=7), "t": when, "s": "a\tb\\n"}
    options = {"eta": when, "expires": timezone.now() + dt.timedelta(days=2)}
    single = tasks.untyped.apply_async((value,), headers={"h": "\n"}, **options)
    g = group(
        tasks.untyped.s(value).set(headers={"h": "\n"}, **options), tasks.ignored.si()
    ).apply_async()
    columns = ["args", "kwargs", "body", "content_type", "run_after", "expires", "priority"]
    sent = TaskResult.objects.get(task_id=single.id)
    member = TaskResult.objects.get(task_id=g.results[0].id)
    assert [getattr(member, c) for c in columns] == [getattr(sent, c) for c in columns]
    assert member.args == [value]
    assert {k: v for k, v in member.options.items() if k not in ("group_id", "group_index")} == (
        sent.options
    )
    plain = TaskResult.objects.get(task_id=g.results[1].id)
    assert (plain.args, plain.kwargs, plain.owner_id) == ([], {}, None)
    assert plain.options["group_id"] == g.id


def test_group_members_keep_their_own_options_and_share_the_send_time():
    """A bulk send resolves what members have alike once: members that differ in their task
    or options still get their own queue, priority, limits and headers (a dict), a bad option
    is named even after members like it, and the whole group runs at one time."""
    import datetime as dt

    g = group(
        tasks.add.s(1, 1).set(queue="q1"),
        tasks.add.s(2, 2).set(queue="q2", priority=3),
        tasks.add.s(3, 3),
        tasks.add.s(4, 4).set(headers={"h": 1}),
        tasks.add.s(5, 5).set(headers={"h": 2}),
        tasks.hard_limited.s(),
        tasks.add.s(6, 6).set(queue="q1"),
    ).apply_async(countdown=60)
    rows = {r.task_id: r for r in TaskResult.objects.filter(group_id=g.id)}
    members = [rows[r.id] for r in g.results]
    assert [m.queue for m in members] == ["q1", "q2", "default", *["default"] * 3, "q1"]
    assert [m.priority for m in members] == [0, 3, 0, 0, 0, 0, 0]
    assert [(m.options or {}).get("headers") for m in members[3:5]] == [{"h": 1}, {"h": 2}]
    assert members[5].options["time_limit"] == 1
    assert "time_limit" not in members[0].options
    assert len({m.run_after for m in members}) == 1
    assert members[0].run_after - members[0].date_created == dt.timedelta(seconds=60)
    with pytest.raises(ValueError, match="priority"):
        group(tasks.add.s(1, 1), tasks.add.s(2, 2).set(priority=256)).apply_async()
    assert TaskResult.objects.count() == len(members)


def test_a_group_is_sent_all_or_nothing():
    tasks.add.apply_async((1, 1), task_id="taken")
    with pytest.raises(ValueError, match="taken"):
        group(tasks.add.s(1, 1), tasks.add.s(2, 2).set(task_id="taken")).apply_async()
    with pytest.raises(ValueError, match="twice"):
        group(tasks.add.si(1, 1).set(task_id="twice"), tasks.add.si(2, 2).set(task_id="twice"))()
    with pytest.raises(TypeError, match="add"):
        group(tasks.add.s(1, 1), tasks.add.s(1, 2, 3)).apply_async()
    assert TaskResult.objects.count() == 1
    assert not TaskGroup.objects.exists()


def test_a_member_refused_after_a_thousand_sent_leaves_nothing_stored():
    """Members are prepared while the ones before them are written (a COPY per 1,000 on
    PostgreSQL): one refused after the first thousand still sends nothing at all."""
    members = [tasks.add.s(i, i) for i in range(1500)]
    members[1200] = tasks.add.s(1, float("nan"))
    members.append(chain(tasks.add.s(1, 1), tasks.add.s(2)))
    with pytest.raises(Exception, match="nan") as raised:
        group(members).apply_async()
    assert "args" in str(raised.value)
    assert not TaskResult.objects.exists()
    assert not TaskGroup.objects.exists()


@pytest.fixture
def collector_seen(monkeypatch):
    """Whether Python's garbage collector was on each time a group row was written."""
    from django_tasks import store

    seen = []
    create_group = store.create_group

    def spy(*args, **kwargs):
        seen.append(gc.isenabled())
        return create_group(*args, **kwargs)

    monkeypatch.setattr(store, "create_group", spy)
    return seen


def test_the_collector_pauses_for_a_group_sent_on_commit_too(
    collector_seen, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        group(tasks.add.s(1, 1)).apply_async(on_commit=True)
        assert collector_seen == []
    assert collector_seen == [False]
    assert gc.isenabled()


def test_the_collector_pauses_for_a_group_send_and_is_on_again_after(collector_seen):
    """Collections over the whole heap cost a large group a third of its send time; the
    caller must still find the collector as it left it, whatever happened in the send."""
    assert gc.isenabled()
    group(tasks.add.s(i, i) for i in range(3)).apply_async()
    chord([tasks.add.s(1, 1)], tasks.tsum.s()).apply_async()
    assert collector_seen == [False, False]
    assert gc.isenabled()
    with pytest.raises(TypeError, match="add"):
        group(tasks.add.s(1, 1), tasks.add.s(1, 2, 3)).apply_async()
    assert gc.isenabled()
    gc.disable()
    try:
        group(tasks.add.s(1, 1)).apply_async()
        assert not gc.isenabled()  # the caller's choice is kept
    finally:
        gc.enable()


def test_the_collector_is_on_again_once_the_last_of_concurrent_sends_ends():
    from django_tasks.canvas import _collector_paused

    first, second = _collector_paused(), _collector_paused()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()  # the second send is still going
    second.__exit__(None, None, None)
    assert gc.isenabled()


def test_new_ids_are_random_version_4_uuids():
    ids = [tasks.add.s(1, 1).freeze().id for _ in range(1000)]
    ids += [r.id for r in group(tasks.add.s(1, 1), tasks.add.s(2, 2)).freeze().results]
    assert len(set(ids)) == len(ids)
    for task_id in ids:
        parsed = uuid.UUID(task_id)
        assert (str(parsed), parsed.version, parsed.variant) == (task_id, 4, uuid.RFC_4122)


@pytest.mark.parametrize(
    ("bad", "culprit"),
    [
        (float("nan"), "is nan"),
        ("a\x00b", "NUL"),
        ("\ud800", "surrogate"),
    ],
)
def test_a_bad_argument_in_a_canvas_is_refused_at_call_time_and_nothing_is_sent(mode, bad, culprit):
    """The same check as delay(): the culprit is named, and no member, step or group row
    is stored (eagerly, nothing runs)."""
    tasks.add.apply_async((1, 1), task_id="before")
    stored = set(TaskResult.objects.values_list("task_id", flat=True))
    canvases = [
        group(tasks.add.s(1, 1), tasks.add.s(bad, 1)),
        chain(tasks.add.s(1, 1), tasks.add.s(bad)),
        chord([tasks.add.s(1, 1), tasks.add.s(bad, 2)], tasks.tsum.s()),
    ]
    for canvas in canvases:
        with pytest.raises(Exception, match=culprit) as raised:
            canvas.apply_async()
        assert "tests.taskapp.tasks.add" in str(raised.value)
        assert "args" in str(raised.value)  # the path to it: args[i], or a link's ['args'][i]
    assert set(TaskResult.objects.values_list("task_id", flat=True)) == stored
    assert not TaskGroup.objects.exists()


def test_a_group_sent_on_commit_waits_for_the_commit(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        g = group(tasks.add.s(1, 1), tasks.add.s(2, 2)).apply_async(on_commit=True)
        assert not TaskResult.objects.exists()
    for callback in callbacks:
        callback()
    drain()
    assert g.get(timeout=10) == [2, 4]


def test_the_count_and_the_success_commit_together(monkeypatch):
    """If counting the success fails, the success is not stored either: the header task
    fails (the database refused its outcome) and so does the chord, never a success that the
    counter missed (which would leave the chord waiting forever)."""
    from django_tasks.store import canvas as store_canvas

    def broken(chord_id, count=1):
        raise RuntimeError("the counter could not be written")

    monkeypatch.setattr(store_canvas, "_count_success", broken)
    c = chord([tasks.add.s(1, 1)], tasks.tsum.s()).apply_async()
    drain()
    header = c.parent.results[0]
    assert header.state == states.FAILURE
    assert TaskGroup.objects.get(group_id=c.parent.id).chord_state == "FAILURE"
    with pytest.raises(ChordError, match=header.id):
        c.get(timeout=10)


def test_groups_are_purged_with_their_tasks():
    import datetime as dt

    from django_tasks.store import purge_finished

    done = group(tasks.add.s(1, 1), tasks.add.s(2, 2)).apply_async()
    chorded = chord([tasks.add.s(1, 1)], tasks.tsum.s()).apply_async()
    drain()
    waiting = group(tasks.add.s(3, 3)).apply_async()
    assert purge_finished(dt.timedelta(0)) == 4  # the group's 2, the chord's header and body
    assert not TaskGroup.objects.filter(group_id__in=[done.id, chorded.parent.id]).exists()
    assert TaskGroup.objects.filter(group_id=waiting.id).exists()
    assert GroupResult.restore(waiting.id) is not None


def test_forgetting_a_group_deletes_it_and_its_results():
    g = group(tasks.add.s(1, 1), tasks.add.s(2, 2)).apply_async()
    drain()
    g.forget()
    assert GroupResult.restore(g.id) is None
    assert not TaskResult.objects.filter(group_id=g.id).exists()


def test_waiting_on_a_plain_task_costs_no_parent_queries(monkeypatch):
    """Looking for a failed parent reads nothing more for a task without parents."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from django_tasks.exceptions import TimeoutError
    from django_tasks.store import notify

    waits = []
    real_waiter = notify.waiter

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def watch(self, task_id):
            self.inner.watch(task_id)

        def wait(self, *args, **kwargs):
            waits.append(1)
            return self.inner.wait(*args, **kwargs)

    monkeypatch.setattr(notify, "waiter", lambda: Counting(real_waiter()))
    res = tasks.add.delay(1, 1)
    with CaptureQueriesContext(connection) as captured, pytest.raises(TimeoutError):
        AsyncResult(res.id).get(timeout=0.1)
    assert len(captured.captured_queries) == len(waits) + 1  # one read of the row per look


def test_revoking_the_header_fails_the_chord():
    c = chord([tasks.record.s("a"), tasks.record.s("b")], tasks.record_body.s()).apply_async()
    c.parent.results[0].revoke()
    drain()
    with pytest.raises(ChordError, match=f"{c.parent.results[0].id} was revoked"):
        c.get(timeout=10)
    assert list(Run.objects.values_list("label", flat=True)) == ["b"]


def test_group_state_methods_read_all_members_in_one_query():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    g = group(tasks.add.s(i, i) for i in range(20)).apply_async()
    restored = GroupResult.restore(g.id)
    with CaptureQueriesContext(connection) as captured:
        assert restored.completed_count() == 0
    assert len(captured.captured_queries) == 1


def test_a_header_task_lost_with_its_worker_fails_the_chord():
    """The lost-worker rule records the failure outside the worker's own write (the chord
    is found from the row); the chord fails with it, naming the task."""
    from django_tasks import store
    from django_tasks.exceptions import WorkerLostError

    c = chord([tasks.add.s(1, 1), tasks.add.s(2, 2)], tasks.tsum.s()).apply_async()
    lost = c.parent.results[0]
    claimed = store.claim(store.Claim(["default"], 10, "dead-worker", 30.0, "gone", [lost.id]))
    assert [t.task_id for t in claimed] == [lost.id]
    assert store.recover_lost(lambda name: False, ["dead-worker"]) == 1
    assert isinstance(lost.result, WorkerLostError)
    drain()
    with pytest.raises(ChordError, match=lost.id):
        c.get(timeout=10)


def test_sending_a_canvas_leaves_the_callers_signatures_as_they_were(mode):
    """A sent copy gets ids, membership and links; the caller's canvas gets none of them,
    so it can be sent again (a new group each time)."""
    members = [tasks.add.s(i, i).set(link=tasks.add.s(100)) for i in range(3)]
    header = group(members)
    steps = chain(tasks.add.s(1, 1), tasks.add.s(2).set(link=tasks.add.s(100)))
    canvases = [header, chord(header, tasks.tsum.s()), steps, group(header, steps)]
    before = [copy.deepcopy(dict(c)) for c in canvases]
    options_before = [copy.deepcopy(m.options) for m in members]
    assert options_before[0]["link"]
    for canvas in canvases:
        first, second = canvas.apply_async(), canvas.apply_async(link_error=tasks.add.s(0))
        assert first.id != second.id
    drain()
    assert [dict(c) for c in canvases] == before
    assert [m.options for m in members] == options_before


def test_a_deep_copy_of_a_signature_is_still_deep():
    sig = tasks.add.s([1, 2], {"x": [3]})
    copied = copy.deepcopy(sig)
    assert copied == sig
    assert copied.args[0] is not sig.args[0]
    assert copied.args[1]["x"] is not sig.args[1]["x"]


def test_cloning_a_canvas_gives_the_arguments_to_the_tasks_it_starts_with(mode):
    partial = chain(tasks.add.s(1), tasks.mul.s(10)).clone((4,))
    assert partial.tasks[0].args == [4, 1] and partial.tasks[1].args == [10]
    g = group(tasks.add.s(1), tasks.add.si(5, 5)).clone((2,))
    assert [t.args for t in g.tasks] == [[2, 1], [5, 5]]
    res = partial.apply_async()
    drain()
    assert res.get(timeout=10) == 50


def test_eager_canvases_sent_on_commit_run_when_the_transaction_commits(
    settings, django_capture_on_commit_callbacks
):
    settings.DJANGO_TASKS = {"TASK_ALWAYS_EAGER": True}
    with django_capture_on_commit_callbacks(execute=True):
        res = chain(tasks.add.s(2, 2), tasks.add.s(4)).apply_async(on_commit=True)
        g = group(tasks.add.s(1, 1), tasks.add.s(2, 2)).apply_async(on_commit=True)
        c = chord([tasks.add.s(1, 1)], tasks.tsum.s()).apply_async(on_commit=True)
        assert (res.state, c.state) == (states.PENDING, states.PENDING)
        assert not g.ready()
    assert res.get() == 8 and res.parent.get() == 4
    assert g.get() == [2, 4]
    assert c.get() == 2 and c.parent.get() == [2]
    assert not TaskResult.objects.exists()
