"""Publish retries on the database transport: a refused database connection is retried with
the policy's sleeps, then raised as kombu's OperationalError with the cause chained."""

import contextlib
import logging
import socket
import time

import pytest
from django.db import OperationalError as DjangoOperationalError
from django.db import connection
from kombu.exceptions import OperationalError

from django_tasks.models import TaskResult
from tests.taskapp import tasks

# The database transport's own connection errors; tests/test_broker.py has the broker ones.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.database_transport]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once it is closed


@contextlib.contextmanager
def database_unreachable(tmp_path):
    """Point this thread's default connection at a closed port (a missing file on SQLite)."""
    saved = dict(connection.settings_dict)
    connection.close()
    if connection.vendor == "sqlite":
        connection.settings_dict["NAME"] = str(tmp_path / "missing-dir" / "db.sqlite3")
    else:
        connection.settings_dict.update(HOST="127.0.0.1", PORT=str(closed_port()))
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


def send_timed(tmp_path, caplog, **options):
    caplog.set_level(logging.WARNING, logger="django_tasks.transport")
    started = time.monotonic()
    with database_unreachable(tmp_path), pytest.raises(OperationalError) as info:
        tasks.add.apply_async((1, 1), task_id="never-sent", **options)
    elapsed = time.monotonic() - started
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert isinstance(info.value.__cause__, DjangoOperationalError)
    assert "database is unreachable" in str(info.value)
    assert not TaskResult.objects.filter(task_id="never-sent").exists()  # no orphan row
    return elapsed, retries


def test_the_policy_sleeps_between_attempts_then_raises(tmp_path, caplog):
    policy = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.1, "interval_max": 0.5}
    elapsed, retries = send_timed(tmp_path, caplog, retry_policy=policy)
    assert len(retries) == 2
    assert [r.args[-1] for r in retries] == [pytest.approx(0.1), pytest.approx(0.2)]
    assert 0.3 <= elapsed < 5  # the sleeps, plus refused connects (a generous bound)


def test_the_default_policy_is_celerys(tmp_path, caplog):
    elapsed, retries = send_timed(tmp_path, caplog)
    assert [r.args[-1] for r in retries] == [0, pytest.approx(0.2), pytest.approx(0.2)]
    assert 0.4 <= elapsed < 5


def test_retry_false_raises_at_once(tmp_path, caplog):
    policy = {"max_retries": 3, "interval_start": 10}
    elapsed, retries = send_timed(tmp_path, caplog, retry=False, retry_policy=policy)
    assert retries == []
    assert elapsed < 5  # far below the policy's 10 s sleeps


def test_task_publish_retry_false_setting(tmp_path, caplog, settings):
    settings.DJANGO_TASKS = {"TASK_PUBLISH_RETRY": False}
    elapsed, retries = send_timed(tmp_path, caplog, retry_policy={"interval_start": 10})
    assert retries == [] and elapsed < 5


def test_sending_works_again_once_the_database_is_back(tmp_path):
    with database_unreachable(tmp_path), pytest.raises(OperationalError):
        tasks.add.apply_async((1, 1), retry=False)
    assert tasks.add.delay(1, 1).exists()
