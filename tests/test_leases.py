"""Leases: renewal, giving back, and recovering the tasks of a lost worker."""

import datetime as dt

import pytest
from django.utils import timezone

from django_tasks import states, store
from django_tasks.exceptions import WorkerLostError
from django_tasks.models import TaskResult
from django_tasks.registry import tasks_registry
from django_tasks.store import StateChange, record_states
from django_tasks.testing import run_until_empty
from django_tasks.transports import get_transport
from tests.taskapp import tasks
from tests.taskapp.models import Run

pytestmark = [pytest.mark.django_db, pytest.mark.database_transport]


def claim_all(token="lost-worker"):
    return get_transport().claim(store.Claim(["default"], 10, token, 30, "gone:1"))


def expire_leases():
    TaskResult.objects.update(lease_expires=timezone.now() - dt.timedelta(seconds=1))


def test_claim_takes_a_lease_and_hides_the_task_from_other_workers():
    tasks.add.delay(1, 1)
    (claimed,) = claim_all()
    row = TaskResult.objects.get(pk=claimed.pk)
    assert row.lease_token == "lost-worker"
    assert row.lease_expires > timezone.now()
    assert claim_all("other") == []


def test_renew_extends_and_release_gives_back():
    tasks.add.delay(1, 1)
    (claimed,) = claim_all()
    TaskResult.objects.update(lease_expires=timezone.now())
    assert store.renew(["lost-worker"], 60) == 1
    assert TaskResult.objects.get().lease_expires > timezone.now() + dt.timedelta(seconds=50)
    assert get_transport().release("lost-worker", [claimed]) == 1
    assert run_until_empty() == 1


def test_expired_lease_of_an_acks_late_task_is_queued_again_and_runs():
    res = tasks.sleep_acks_late.delay(0, "again")
    claim_all()
    expire_leases()
    assert store.recover_lost(tasks_registry.acks_late) == 1
    row = TaskResult.objects.get(task_id=res.id)
    assert (row.state, row.lease_token) == (states.PENDING, None)
    assert "acks_late" in row.history.get().detail
    run_until_empty()
    assert res.get(timeout=1) == "again"


def test_expired_lease_of_an_ordinary_task_fails_with_worker_lost_error():
    res = tasks.record.delay("x")
    claim_all()
    expire_leases()
    assert store.recover_lost(tasks_registry.acks_late) == 1
    assert res.state == states.FAILURE
    with pytest.raises(WorkerLostError):
        res.get(timeout=1)
    assert run_until_empty() == 0
    assert not Run.objects.exists()


def test_live_leases_are_left_alone():
    tasks.record.delay("x")
    claim_all()
    assert store.recover_lost(tasks_registry.acks_late) == 0
    assert TaskResult.objects.get().lease_token == "lost-worker"


def test_a_late_outcome_does_not_overwrite_a_recovered_task():
    res = tasks.record.delay("x")
    (claimed,) = claim_all()
    expire_leases()
    store.recover_lost(tasks_registry.acks_late)
    late = StateChange(claimed.pk, states.SUCCESS, {"result": "late", "date_done": timezone.now()})
    assert record_states([late], lease_token="lost-worker") == 0
    assert res.state == states.FAILURE


def test_revoke_of_a_claimed_task_marks_it_and_the_worker_skips_it():
    res = tasks.record.delay("x")
    (claimed,) = claim_all()
    assert res.revoke()
    assert TaskResult.objects.get().revoked
    get_transport().release("lost-worker", [claimed])  # e.g. a warm shutdown gave it back
    run_until_empty()
    assert res.state == states.REVOKED
    assert not Run.objects.exists()
