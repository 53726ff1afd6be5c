"""What a task costs the database, pinned: one statement to send, two (PostgreSQL) or three
per claimed batch."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from django_tasks.testing import run_until_empty
from tests.taskapp import tasks

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.database_transport]

TRANSACTION_CONTROL = ("SAVEPOINT", "RELEASE SAVEPOINT", "BEGIN", "COMMIT")


def statements(captured):
    return [q["sql"] for q in captured if not q["sql"].startswith(TRANSACTION_CONTROL)]


def test_sending_is_one_statement():
    with CaptureQueriesContext(connection) as captured:
        tasks.add.delay(1, 2)
    assert len(statements(captured)) == 1
    assert statements(captured)[0].startswith("INSERT")


def test_one_task_costs_two_or_three_statements_in_the_worker():
    tasks.add.delay(1, 2)
    with CaptureQueriesContext(connection) as captured:
        assert run_until_empty() == 1
    sql = statements(captured)
    # The claim, the outcome, then the empty claim that ends the burst. The outcome is one
    # statement on PostgreSQL (UPDATE feeding the history INSERT), two elsewhere; the claim
    # is one UPDATE … RETURNING, except on MySQL/MariaDB (SELECT … FOR UPDATE, then UPDATE).
    outcome = 1 if connection.vendor == "postgresql" else 2
    claim = 2 if connection.vendor == "mysql" else 1
    assert len(sql) == claim + outcome + 1, sql
    assert "INSERT" in sql[claim + outcome - 1]


def test_batches_share_their_statements():
    for i in range(40):
        tasks.add.delay(i, i)
    with CaptureQueriesContext(connection) as captured:
        assert run_until_empty() == 40
    # Claims start at 4 tasks and grow; a statement per task would be 80+.
    assert len(statements(captured)) <= 3 * 10 + 1


def _header_outcomes(size, token="chord-worker"):
    """A chord of ``size`` add tasks, all claimed under ``token``: the chord's id and a
    success per header task, as the worker builds them."""
    from django.utils import timezone

    from django_tasks import chord, states, store

    c = chord([tasks.add.s(i, i) for i in range(size)], tasks.tsum.s()).apply_async()
    claimed = store.claim(store.Claim(["default"], size, token, 30.0, "w"))
    assert len(claimed) == size
    changes = [
        store.StateChange(
            t.pk,
            states.SUCCESS,
            {"result": sum(t.args), "traceback": None, "date_done": timezone.now()},
            chord=t.options["chord"],
            counts=True,
        )
        for t in claimed
    ]
    return c, changes


@pytest.mark.parametrize("size", [3, 40])
def test_a_batch_of_chord_header_outcomes_costs_the_same_statements_whatever_its_size(size):
    """The header outcomes of a chord are written as one batch (not row by row) and counted
    into the chord with one write of its counter: the statements do not grow with the
    batch. Recording the last one sends the body in the same transaction."""
    from django_tasks import store
    from django_tasks.models import TaskGroup

    c, changes = _header_outcomes(size)
    with CaptureQueriesContext(connection) as captured:
        assert store.record_states(changes, worker="w", lease_token="chord-worker") == size
    sql = statements(captured)
    # PostgreSQL: the outcomes with their history (1), the counter and its read (2), then
    # the body: the chord's row (1), the header's results (1), the body's row (1).
    # Elsewhere one more for the history rows.
    expected = 6 if connection.vendor == "postgresql" else 7
    assert len(sql) == expected, "\n".join(sql)
    assert TaskGroup.objects.get(group_id=c.parent.id).chord_state == TaskGroup.CHORD_SENT
    assert run_until_empty() == 1
    assert c.get(timeout=10) == sum(2 * i for i in range(size))


def test_a_header_outcome_whose_lease_was_lost_is_not_counted_in_its_batch():
    """Only the outcomes that applied count into the chord: one whose lease went to another
    worker meanwhile is left out, and the chord waits for it."""
    from django_tasks import store
    from django_tasks.models import TaskGroup, TaskResult

    c, changes = _header_outcomes(5)
    TaskResult.objects.filter(pk=changes[2].pk).update(lease_token="another-worker")
    assert store.record_states(changes, worker="w", lease_token="chord-worker") == 4
    group = TaskGroup.objects.get(group_id=c.parent.id)
    assert (group.chord_state, group.remaining) == (TaskGroup.CHORD_PENDING, 1)
    succeeded = set(TaskResult.objects.filter(state="SUCCESS").values_list("pk", flat=True))
    assert succeeded == {ch.pk for i, ch in enumerate(changes) if i != 2}


def test_a_failure_in_a_batch_of_header_outcomes_fails_the_chord_once():
    """Successes and a failure of one chord in one batch: the failure decides the chord, the
    body is never sent, and the body's FAILURE names the failed task."""
    from django_tasks import states, store
    from django_tasks.exceptions import ChordError
    from django_tasks.models import TaskGroup

    c, changes = _header_outcomes(4)
    failed = store.failure_change(changes[1].pk, ValueError("boom"))
    failed.chord, failed.counts = changes[1].chord, True
    changes[1] = failed
    assert store.record_states(changes, worker="w", lease_token="chord-worker") == 4
    assert TaskGroup.objects.get(group_id=c.parent.id).chord_state == TaskGroup.CHORD_FAILED
    assert run_until_empty() == 0
    assert c.state == states.FAILURE
    with pytest.raises(ChordError, match=c.parent.results[1].id):
        c.get(timeout=1)
