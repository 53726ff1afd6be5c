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
