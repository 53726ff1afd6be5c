"""``purge_results`` and ``purge_finished``: old finished results go, everything else stays."""

import datetime as dt
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

from django_tasks.models import TaskResult, TaskStateChange
from django_tasks.store import purge_finished
from django_tasks.testing import run_until_empty
from tests.taskapp import tasks

pytestmark = pytest.mark.django_db


@pytest.fixture
def aged():
    """Finished 10 days ago (with history), finished now, and waiting since 10 days ago."""
    old = tasks.retry_until.delay(2)
    recent = tasks.add.delay(1, 1)
    while run_until_empty():
        pass
    waiting = tasks.add.delay(2, 2)
    long_ago = timezone.now() - dt.timedelta(days=10)
    TaskResult.objects.filter(task_id__in=[old.id, waiting.id]).update(date_created=long_ago)
    TaskResult.objects.filter(task_id=old.id).update(date_done=long_ago)
    return old.id, recent.id, waiting.id


def purge(*args: str) -> str:
    out = StringIO()
    call_command("purge_results", *args, stdout=out)
    return out.getvalue()


def remaining() -> set[str]:
    return set(TaskResult.objects.values_list("task_id", flat=True))


def test_dry_run_only_counts(aged):
    assert "Would delete 1 finished result(s)" in purge("--older-than", "7", "--dry-run")
    assert remaining() == set(aged)


def test_purge_deletes_old_finished_results_and_their_history(aged):
    old, recent, waiting = aged
    assert TaskStateChange.objects.filter(task__task_id=old).exists()
    assert "Deleted 1 finished result(s)" in purge("--older-than", "7")
    assert remaining() == {recent, waiting}
    assert not TaskStateChange.objects.filter(task__task_id=old).exists()


@override_settings(DJANGO_TASKS={"RESULT_EXPIRES": 86400 * 5})
def test_the_default_age_is_result_expires(aged):
    assert "Deleted 1 finished result(s) older than 5 days" in purge()


@override_settings(DJANGO_TASKS={"RESULT_EXPIRES": None})
def test_without_result_expires_an_age_is_required(aged):
    with pytest.raises(CommandError, match="--older-than"):
        purge()
    with pytest.raises(CommandError, match=">= 0"):
        purge("--older-than", "-1")


def test_purging_in_batches_keeps_reruns_and_unlinks_them():
    originals = [tasks.add.delay(i, i) for i in range(5)]
    while run_until_empty():
        pass
    rerun = tasks.add.delay(0, 0)
    first = TaskResult.objects.get(task_id=originals[0].id)
    TaskResult.objects.filter(task_id=rerun.id).update(rerun_of=first)
    TaskResult.objects.filter(task_id__in=[r.id for r in originals]).update(
        date_done=timezone.now() - dt.timedelta(days=2)
    )
    assert purge_finished(dt.timedelta(days=1), batch_size=2) == 5
    assert remaining() == {rerun.id}
    assert TaskResult.objects.get(task_id=rerun.id).rerun_of_id is None


@pytest.mark.django_db
@pytest.mark.parametrize("days", ["1e6", "nan", "inf", "-1"])
def test_an_age_out_of_range_is_a_command_error_not_a_crash(days):
    with pytest.raises(CommandError, match="number of days >= 0 and <= 36500"):
        call_command("purge_results", "--older-than", days, stdout=StringIO())
