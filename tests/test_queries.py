"""What a task costs the database, pinned: one statement to send, three per claimed batch."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from django_tasks.testing import run_until_empty
from tests.taskapp import tasks

pytestmark = pytest.mark.django_db(transaction=True)

TRANSACTION_CONTROL = ("SAVEPOINT", "RELEASE SAVEPOINT", "BEGIN", "COMMIT")


def statements(captured):
    return [q["sql"] for q in captured if not q["sql"].startswith(TRANSACTION_CONTROL)]


def test_sending_is_one_statement():
    with CaptureQueriesContext(connection) as captured:
        tasks.add.delay(1, 2)
    assert len(statements(captured)) == 1
    assert statements(captured)[0].startswith("INSERT")


def test_one_task_costs_three_statements_in_the_worker():
    tasks.add.delay(1, 2)
    with CaptureQueriesContext(connection) as captured:
        assert run_until_empty() == 1
    sql = statements(captured)
    # claim, outcome UPDATE, history INSERT; then the empty claim that ends the burst.
    assert len(sql) == 4, sql
    assert sql[0].startswith("UPDATE") or sql[0].startswith("SELECT")
    assert "INSERT" in sql[2]


def test_batches_share_their_statements():
    for i in range(40):
        tasks.add.delay(i, i)
    with CaptureQueriesContext(connection) as captured:
        assert run_until_empty() == 40
    # Claims start at 4 tasks and grow; a statement per task would be 80+.
    assert len(statements(captured)) <= 3 * 10 + 1
