"""Shared fixtures: service gating (skip locally, fail under CI=true), worker subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _database_problem(config: pytest.Config) -> str | None:
    """Why the configured database server cannot be used, or None if it can."""
    from django.db import connection
    from pytest_django.plugin import blocking_manager_key

    if connection.vendor == "sqlite":
        return None
    db = settings.DATABASES["default"]
    try:
        # Django's own way to reach the server without the (test) database.
        with config.stash[blocking_manager_key].unblock(), connection._nodb_cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:
        return (
            f"{connection.display_name} at {db.get('HOST')}:{db.get('PORT')} is unreachable: {exc}"
        )
    return None


def broker_url() -> str:
    return settings.DJANGO_TASKS.get("BROKER_URL", "django://")


def on_broker() -> bool:
    return not broker_url().startswith("django://")


def _broker_problem() -> str | None:
    """Why the configured broker cannot be reached, or None (or no broker)."""
    if not on_broker():
        return None
    from kombu import Connection

    conn = Connection(broker_url(), connect_timeout=3)
    try:
        conn.ensure_connection(max_retries=0)
    except Exception as exc:
        return f"the broker at {conn.as_uri()} is unreachable: {exc}"
    finally:
        conn.release()
    return None


#: Every queue the tests send to; emptied before a broker run, so that messages a previous
#: run left behind cannot reach this run's workers.
TEST_QUEUES = ("default", "elsewhere", "explicit", "lopri", "nobody", "proxy")


def purge_broker_queues() -> None:
    from kombu import Connection

    from django_tasks.transports.broker import BrokerTransport

    transport = BrokerTransport(broker_url())
    with Connection(broker_url()) as conn:
        for name in TEST_QUEUES:
            queue = transport.kombu_queue(name)(conn.channel())
            queue.declare()
            queue.purge()
    # The sentinel tells workers that the broker still holds what it was given; put it there
    # now, so that no test's worker takes this run's start for a broker that forgot.
    transport.broker_forgot()
    transport.close()


def pytest_report_header(config: pytest.Config) -> str:
    db = settings.DATABASES["default"]
    return (
        f"django_tasks: database {db['ENGINE'].rsplit('.', 1)[-1]} ({db.get('NAME')}), "
        f"transport {broker_url()}"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if on_broker():
        skip_db = pytest.mark.skip(reason="about the database transport's rows and queries")
        for item in items:
            if "database_transport" in item.keywords:
                item.add_marker(skip_db)
    else:
        skip_broker = pytest.mark.skip(
            reason="needs a broker: set DJANGO_TASKS_BROKER_URL (make test-redis, test-rabbitmq)"
        )
        for item in items:
            if "broker" in item.keywords:
                item.add_marker(skip_broker)
    problem = _database_problem(config)
    if problem is None:
        problem = _broker_problem()
        hint = "start it or point DJANGO_TASKS_BROKER_URL elsewhere"
    else:
        hint = "start it or point DATABASE_URL elsewhere"
    if problem is None:
        if on_broker():
            purge_broker_queues()
        return
    if IN_CI:
        pytest.exit(f"{problem} (CI=true: a missing service is a failure)", returncode=1)
    skip = pytest.mark.skip(reason=f"{problem}; {hint}")
    for item in items:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def _task_write_guard() -> Iterator[None]:
    """Fail a test in which code outside django_tasks/store/ wrote task rows (see
    tests/write_guard.py; DJANGO_TASKS_WRITE_GUARD=0 switches it off)."""
    from tests import write_guard

    if not write_guard.ENABLED:
        yield
        return
    with write_guard.guard() as violations:
        yield
    if violations:
        pytest.fail(write_guard.describe(violations), pytrace=False)


@pytest.fixture(autouse=True)
def _close_result_waiters() -> Iterator[None]:
    """Result waiters hold a LISTEN connection on PostgreSQL; don't keep the test DB busy."""
    yield
    from django_tasks.testing import close_waiter

    close_waiter()


def database_url() -> str:
    """A URL for the database the tests use now (the test database), for subprocesses."""
    from django.db import connection

    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    scheme, port = {"postgresql": ("postgres", 5432), "mysql": ("mysql", 3306)}[connection.vendor]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"{scheme}://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or port}/{db['NAME']}"


class WorkerProcess:
    """A real ``manage.py runworker`` subprocess in its own process group."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "runworker", *args],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise AssertionError(
                f"worker did not exit within {timeout}s:\n{self.output()}"
            ) from None

    def close(self) -> None:
        # The whole session, even when its main process is gone already (a test killed
        # it): a child left behind must not take the next test's messages.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def start_worker(transactional_db: Any, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real workers against the test database; all are killed at the end of the test."""
    workers: list[WorkerProcess] = []

    def start(
        *args: str, lease_seconds: float = 30.0, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DJANGO_TASKS_WORKER_LEASE_SECONDS": str(lease_seconds),
            **(env or {}),
        }
        worker = WorkerProcess(list(args), env, tmp_path / f"worker-{len(workers)}.log")
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.close()


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
