"""A loop told to stop mid-batch writes what it ran and gives back what it did not, even when
the database drops its connection at that moment (a restart while a worker shuts down)."""

import threading

import pytest
from django.db import connection

from django_tasks import states
from django_tasks.models import TaskResult
from django_tasks.worker.consumer import Consumer, new_lease_token
from tests.taskapp import tasks

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.database_transport]


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="kills a PostgreSQL backend")
def test_a_stopping_loop_gives_back_its_unstarted_tasks_through_a_lost_connection():
    stopper = tasks.stop_and_lose_connection.delay()
    waiting = [tasks.add.delay(i, i) for i in range(3)]
    stop = threading.Event()
    tasks.STOPPING["event"] = stop
    consumer = Consumer(
        ["default"], hostname="test", lease_token=new_lease_token(), stop=stop, burst=True
    )
    consumer.run()
    connection.close_if_unusable_or_obsolete()

    assert stopper.get(timeout=1) == "stopped"  # its outcome was written after all
    rows = TaskResult.objects.filter(task_id__in=[r.id for r in waiting])
    assert {(row.state, row.lease_token) for row in rows} == {(states.PENDING, None)}
