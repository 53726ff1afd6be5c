"""Soak test: many tasks through real workers while processes are killed and services restart.

Not part of the test suite. It sends ``--n`` tasks at a steady ``--rate`` from two producer
processes (half of them ``acks_late``), runs them with two ``manage.py runworker --pool
prefork --concurrency 2`` workers, and meanwhile SIGKILLs a random worker process (a
supervisor or one of its children) every 2-5 s, restarting killed supervisors, and now and
then stops a worker with SIGTERM (a warm shutdown) and starts it again. With
``--restart-broker`` and ``--restart-postgres`` it also restarts the broker and PostgreSQL
once each, mid-run.

Every run of a task writes one row to a ledger (SQLite files of the run, through a connection
the task opens itself, never Django's), so the number of times each task really ran is known
apart from the task rows. After the sends, the workers get ``--drain`` seconds to finish
everything; then the run is checked:

* lost: sent (the call returned), never run, and not explained by a final state with a
  reason (``FAILURE`` with an exception, ``REVOKED`` with a reason);
* run twice: split by ``acks_late``; for each, whether the task's history says why (a
  ``PENDING`` row "worker ... lost; queued again");
* final states, and rows left unfinished (``PENDING``/``STARTED``/``RETRY``).

The exit status is 1 if a task was lost, a task without ``acks_late`` ran twice, or rows are
left unfinished; 2 if the run could not be set up. See bench/README.md ("Soak test").

    .venv/bin/python bench/soak.py                                  # 20,000 tasks, django://
    .venv/bin/python bench/soak.py --n 1000 --rate 40               # a short run
    .venv/bin/python bench/soak.py --transport-url redis://127.0.0.1:6379/12 --restart-broker
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
#: The test settings: the demo project plus tests.taskapp, where the soak tasks live.
SETTINGS = "tests.settings"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/django_tasks_soak"
TASKS = {False: "tests.taskapp.tasks.soak", True: "tests.taskapp.tasks.soak_acks_late"}
WORKERS = 2
CONCURRENCY = 2
#: How a Redis the soak stopped is started again (as .ci/run starts it, with no persistence).
REDIS_SERVER = (
    "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port {port} --save '' "
    "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
)
WORKER_ARGS = ("--pool", "prefork", "--concurrency", str(CONCURRENCY), "--loglevel", "info")
PRODUCERS = 2
READY_STATES = ("SUCCESS", "FAILURE", "REVOKED")
RESULT_TABLE = "django_tasks_taskresult"
HISTORY_TABLE = "django_tasks_taskstatechange"
#: A warm shutdown that takes longer than this gets a second SIGTERM (cold shutdown).
WARM_SHUTDOWN_PATIENCE = 60.0


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP reached the soak: clean up and stop."""


class SetupError(Exception):
    """The run cannot start (a service is unreachable, a bad option)."""


def say(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def is_broker(url: str) -> bool:
    return urlsplit(url).scheme not in ("", "django")


def broker_kind(url: str) -> str | None:
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss"):
        return "redis"
    if scheme in ("amqp", "amqps", "pyamqp"):
        return "rabbitmq"
    return None


def run_quietly(cmd: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise SetupError(f"timed out after {timeout:.0f}s waiting for {what}")


# -- the database: a scratch one, read with raw connections ----------------------------------------


class Database:
    """The scratch database of the run: created, migrated, read and dropped here without Django
    (the soak process never sets Django up; producers and workers do)."""

    def __init__(self, url: str, run_dir: Path) -> None:
        if url in ("sqlite", "sqlite:"):
            url = f"sqlite:///{run_dir / 'soak.sqlite3'}"
        self.url = url
        parts = urlsplit(url)
        self.vendor = "sqlite" if parts.scheme.startswith("sqlite") else "postgresql"
        if self.vendor == "postgresql" and parts.scheme not in ("postgres", "postgresql", "pgsql"):
            raise SetupError(f"--database-url: PostgreSQL or SQLite only, not {parts.scheme}://")
        self.name = parts.path.lstrip("/") if self.vendor == "postgresql" else parts.path[1:]
        if self.vendor == "postgresql" and "soak" not in self.name:
            raise SetupError(
                f"--database-url names {self.name!r}: the soak drops and creates its database, "
                "so its name must contain 'soak' (e.g. django_tasks_soak)"
            )

    def _maintenance(self) -> Any:
        import psycopg

        parts = urlsplit(self.url)
        return psycopg.connect(
            urlunsplit(parts._replace(path="/postgres")), autocommit=True, connect_timeout=5
        )

    def create(self) -> None:
        if self.vendor == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(self.name + suffix).unlink(missing_ok=True)
            return
        from psycopg import sql

        try:
            with self._maintenance() as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(self.name)
                    )
                )
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        except Exception as exc:
            raise SetupError(f"PostgreSQL at {redact(self.url)}: {exc}") from exc

    def drop(self) -> None:
        if self.vendor == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(self.name + suffix).unlink(missing_ok=True)
            return
        from psycopg import sql

        with self._maintenance() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
            )

    @contextlib.contextmanager
    def connect(self) -> Iterator[Any]:
        if self.vendor == "sqlite":
            conn = sqlite3.connect(self.name, timeout=30)
        else:
            import psycopg

            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
        try:
            yield conn
        finally:
            conn.close()

    def query(self, sql_text: str) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            return list(conn.execute(sql_text).fetchall())

    def json(self, value: Any) -> Any:
        if isinstance(value, str | bytes) and self.vendor == "sqlite":
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    def latencies(self) -> list[float]:
        """Seconds from send to done of every finished task, sorted."""
        if self.vendor == "sqlite":
            span = "(julianday(date_done) - julianday(date_created)) * 86400"
        else:
            span = "EXTRACT(EPOCH FROM date_done - date_created)"
        rows = self.query(f"SELECT {span} FROM {RESULT_TABLE} WHERE date_done IS NOT NULL")
        return sorted(float(value) for (value,) in rows)

    def unfinished(self) -> dict[str, int]:
        marks = ", ".join(f"'{s}'" for s in READY_STATES)
        rows = self.query(
            f"SELECT state, count(*) FROM {RESULT_TABLE} WHERE state NOT IN ({marks}) "
            "GROUP BY state"
        )
        return {state: count for state, count in rows}


# -- the ledger: one row per run of a task ---------------------------------------------------------


class Ledger:
    """A directory of SQLite files, one per worker process, each with a ``runs`` table that
    the soak tasks write one row to per run (see tests/taskapp/tasks.py)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()

    def _rows(self, sql_text: str) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for file in sorted(self.path.glob("runs-*.sqlite3")):
            with (
                contextlib.closing(sqlite3.connect(file, timeout=30)) as conn,
                contextlib.suppress(sqlite3.OperationalError),  # no table yet
            ):
                rows.extend(conn.execute(sql_text).fetchall())
        return rows

    def count(self) -> int:
        return sum(n for (n,) in self._rows("SELECT count(*) FROM runs"))

    def runs(self) -> collections.Counter[str]:
        counts: collections.Counter[str] = collections.Counter()
        for task_id, n in self._rows("SELECT task_id, count(*) FROM runs GROUP BY task_id"):
            counts[task_id] += n
        return counts


# -- the broker: purge our queue, count what is left, restart it -----------------------------------


def broker_queue_depth(url: str, queue: str, purge: bool = False) -> int | None:
    """Messages ready in ``queue`` (not those a consumer holds); with ``purge``, empty it.
    None when the broker cannot be asked."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
            channel = conn.channel()
            try:
                count = int(channel.queue_declare(queue=queue, passive=True).message_count)
            except conn.channel_errors:
                return 0  # no such queue (Redis: an empty list does not exist)
            if purge:
                conn.channel().queue_purge(queue)
            return count
    except Exception as exc:
        say(f"could not look at broker queue {queue!r}: {exc}")
        return None


def redis_holdings(url: str, queue: str) -> dict[str, str]:
    """Task id -> where Redis holds a message for it: in the queue's lists, or among the
    messages delivered and not acknowledged (redelivered after the visibility timeout)."""
    from kombu import Connection

    held: dict[str, str] = {}
    try:
        with Connection(url, connect_timeout=5) as conn:
            channel = conn.channel()
            client = channel.client
            for key in client.scan_iter(match=f"{queue}*"):
                if client.type(key) == b"list":
                    for item in client.lrange(key, 0, -1):
                        with contextlib.suppress(ValueError, KeyError, TypeError):
                            held[json.loads(item)["headers"]["id"]] = "in the queue"
            for item in client.hvals(channel.unacked_key):
                with contextlib.suppress(ValueError, KeyError, TypeError, IndexError):
                    held[json.loads(item)[0]["headers"]["id"]] = "delivered, not acknowledged"
    except Exception as exc:
        say(f"could not look into Redis: {exc}")
    return held


def check_broker(url: str) -> None:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=0)
    except Exception as exc:
        raise SetupError(f"the broker at {redact(url)} is unreachable: {exc}") from exc


class Services:
    """Stops and starts the broker and PostgreSQL; whatever it stopped, it starts again."""

    def __init__(self, broker_url: str, database: Database, outage: float) -> None:
        self.broker_url = broker_url
        self.database = database
        self.outage = outage
        self.stopped: set[str] = set()
        self.log: list[str] = []

    def _note(self, message: str) -> None:
        self.log.append(f"{time.strftime('%H:%M:%S')} {message}")
        say(message)

    # Redis -------------------------------------------------------------------------------------

    def _redis_address(self) -> tuple[str, int]:
        parts = urlsplit(self.broker_url)
        return parts.hostname or "127.0.0.1", parts.port or 6379

    def stop_redis(self) -> None:
        host, port = self._redis_address()
        self.stopped.add("redis")
        run_quietly(["redis-cli", "-h", host, "-p", str(port), "shutdown", "nosave"])
        wait_for(lambda: not port_open(host, port), 20, "Redis to stop")

    def start_redis(self) -> None:
        host, port = self._redis_address()
        if not port_open(host, port):
            done = run_quietly(shlex.split(REDIS_SERVER.format(port=port)))
            if done.returncode:
                raise SetupError(f"redis-server did not start: {done.stderr or done.stdout}")
        wait_for(
            lambda: (
                run_quietly(["redis-cli", "-h", host, "-p", str(port), "ping"]).stdout.strip()
                == "PONG"
            ),
            30,
            "Redis to answer",
        )
        self.stopped.discard("redis")

    # RabbitMQ ----------------------------------------------------------------------------------

    def stop_rabbitmq(self) -> None:
        self.stopped.add("rabbitmq")
        done = run_quietly(["rabbitmqctl", "stop_app"])
        if done.returncode:
            raise SetupError(f"rabbitmqctl stop_app failed: {done.stderr or done.stdout}")

    def start_rabbitmq(self) -> None:
        done = run_quietly(["rabbitmqctl", "start_app"], timeout=180)
        if done.returncode:
            raise SetupError(f"rabbitmqctl start_app failed: {done.stderr or done.stdout}")
        run_quietly(["rabbitmqctl", "await_startup"], timeout=180)
        parts = urlsplit(self.broker_url)
        wait_for(lambda: port_open(parts.hostname or "127.0.0.1", parts.port or 5672), 60, "AMQP")
        self.stopped.discard("rabbitmq")

    # PostgreSQL --------------------------------------------------------------------------------

    @staticmethod
    def _pg_version() -> str:
        versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
        if not versions:
            raise SetupError("no /etc/postgresql/<version>: cannot restart PostgreSQL")
        return versions[-1]

    def _pg_ctl(self, action: str) -> None:
        cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", self._pg_version(), "main", action]
        if action == "stop":
            cmd += ["-m", "fast"]
        done = run_quietly(cmd)
        if done.returncode:
            raise SetupError(f"{' '.join(cmd)} failed: {done.stderr or done.stdout}")

    def stop_postgres(self) -> None:
        self.stopped.add("postgres")
        self._pg_ctl("stop")

    def start_postgres(self) -> None:
        self._pg_ctl("start")
        parts = urlsplit(self.database.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 5432

        def ready() -> bool:
            return run_quietly(["pg_isready", "-q", "-h", host, "-p", str(port)]).returncode == 0

        wait_for(ready, 60, "PostgreSQL to accept connections")
        self.stopped.discard("postgres")

    # -------------------------------------------------------------------------------------------

    def restart(self, what: str) -> None:
        stop, start = {
            "redis": (self.stop_redis, self.start_redis),
            "rabbitmq": (self.stop_rabbitmq, self.start_rabbitmq),
            "postgres": (self.stop_postgres, self.start_postgres),
        }[what]
        began = time.monotonic()
        self._note(f"stopping {what} (outage {self.outage:.0f}s)")
        stop()
        time.sleep(self.outage)
        start()
        self._note(f"{what} is back after {time.monotonic() - began:.1f}s")

    def start_stopped(self) -> None:
        for what in sorted(self.stopped):
            say(f"starting {what} again (the soak stopped it)")
            try:
                {"redis": self.start_redis, "rabbitmq": self.start_rabbitmq}.get(
                    what, self.start_postgres
                )()
            except Exception as exc:
                print(f"!!! could not start {what} again: {exc}", file=sys.stderr, flush=True)


# -- processes -------------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    try:  # Linux: cheap, no process to start
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        out = run_quietly(["pgrep", "-P", str(pid)], timeout=10).stdout
        return [int(p) for p in out.split()]


def group_members(pgid: int) -> list[int]:
    out = run_quietly(["pgrep", "-g", str(pgid)], timeout=10).stdout
    members = []
    for pid in map(int, out.split()):
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/stat").read_text()
            if status.rsplit(")", 1)[1].split()[0] != "Z":  # a zombie is already dead
                members.append(pid)
    return members


def kill_group(pgid: int, signum: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


@dataclass
class Worker:
    """One ``runworker`` supervisor, in a process group of its own, restarted when it exits."""

    slot: int
    env: dict[str, str]
    run_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    generation: int = 0
    terminating_since: float | None = None
    cold_sent: bool = False
    expected_exit: str = ""
    logs: list[Path] = field(default_factory=list)

    def start(self) -> None:
        self.generation += 1
        path = self.run_dir / f"worker-{self.slot}-{self.generation}.log"
        self.logs.append(path)
        with path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "runworker", *WORKER_ARGS],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.terminating_since = None
        self.cold_sent = False
        self.expected_exit = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def banner_seen(self) -> bool:
        return b"django_tasks worker" in self.logs[-1].read_bytes()

    def kill_all(self) -> None:
        if self.proc is not None:
            kill_group(self.proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)


@dataclass
class Chaos:
    """What the chaos loop did, and what it saw."""

    kills_parent: int = 0
    kills_child: int = 0
    terms: int = 0
    restarts: int = 0
    unexpected_exits: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    slow_warm_shutdowns: int = 0
    events: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {message}")


# -- the producer (a child process of the soak) ----------------------------------------------------


def produce(argv: list[str]) -> int:
    """Send every ``--of``-th task from ``--index`` on a steady schedule; one JSON line per
    call in ``--out``: sent, or the error it raised."""
    parser = argparse.ArgumentParser(prog="soak.py _produce")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--of", type=int, required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seed", required=True)
    parser.add_argument("--work-ms", type=float, required=True)
    parser.add_argument("--start", type=float, required=True)
    parser.add_argument("--deadline", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.db import connection

    from tests.taskapp import tasks

    by_acks_late = {False: tasks.soak, True: tasks.soak_acks_late}
    with args.out.open("a", buffering=1) as out:
        for seq in range(args.index, args.n, args.of):
            if stopping or time.time() > args.deadline:
                break
            delay = args.start + seq / args.rate - time.time()
            if delay > 0:
                time.sleep(delay)
            rng = random.Random(f"{args.seed}:{seq}")
            acks_late = rng.random() < 0.5
            work_ms = round(rng.uniform(0, args.work_ms), 2)
            task_id = str(uuid.uuid4())
            line: dict[str, Any] = {"seq": seq, "id": task_id, "acks_late": acks_late}
            try:
                by_acks_late[acks_late].apply_async((seq, work_ms), task_id=task_id)
            except Exception as exc:
                line["error"] = f"{type(exc).__name__}: {exc}"[:300]
                with contextlib.suppress(Exception):
                    connection.close()  # reconnect for the next send
            out.write(json.dumps(line) + "\n")
    return 0


# -- the soak -------------------------------------------------------------------------------------


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.run_dir = Path(tempfile.mkdtemp(prefix="django-tasks-soak-"))
        self.database = Database(args.database_url, self.run_dir)
        self.broker_url = args.transport_url
        self.kind = broker_kind(self.broker_url) if is_broker(self.broker_url) else None
        if args.restart_broker and self.kind is None:
            raise SetupError("--restart-broker needs a redis:// or amqp:// --transport-url")
        if args.restart_postgres and self.database.vendor != "postgresql":
            raise SetupError("--restart-postgres needs a PostgreSQL --database-url")
        self.services = Services(self.broker_url, self.database, args.outage)
        self.ledger: Ledger | None = None
        self.workers: list[Worker] = []
        self.producers: list[subprocess.Popen[bytes]] = []
        self.chaos = Chaos()
        self.dying_groups: list[tuple[float, int, str]] = []
        #: Every worker process seen: its supervisor's pid (itself for a supervisor).
        self.supervisor_of: dict[int, int] = {}
        #: How each process the soak signalled was signalled.
        self.signalled: dict[int, str] = {}
        self.database_created = False
        self.timings: dict[str, float] = {}

    # -- set-up --------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.database.url,
            "DJANGO_SETTINGS_MODULE": SETTINGS,
            "DJANGO_TASKS_BROKER_URL": self.broker_url,
            "DJANGO_TASKS_TASK_DEFAULT_QUEUE": self.args.queue,
            "DJANGO_TASKS_WORKER_LEASE_SECONDS": str(self.args.lease_seconds),
            "DJANGO_TASKS_SOAK_LEDGER": str(self.run_dir / "ledger"),
            "PYTHONPATH": str(REPO),
        }

    def set_up(self) -> None:
        a = self.args
        say(
            f"n={a.n} rate={a.rate}/s seed={a.seed} transport={redact(self.broker_url)} "
            f"queue={a.queue!r} database={redact(self.database.url)} "
            f"kills={'off' if a.no_kills else 'on'} restart-broker={a.restart_broker} "
            f"restart-postgres={a.restart_postgres} lease={a.lease_seconds}s "
            f"run dir={self.run_dir}"
        )
        if self.kind is not None:
            check_broker(self.broker_url)
            dropped = broker_queue_depth(self.broker_url, a.queue, purge=True)
            if dropped:
                say(f"purged {dropped} message(s) left in broker queue {a.queue!r}")
        self.database.create()
        self.database_created = True
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if migrate.returncode:
            raise SetupError(f"migrate failed:\n{migrate.stdout}{migrate.stderr}")
        self.ledger = Ledger(self.run_dir / "ledger")
        for slot in range(WORKERS):
            worker = Worker(slot, self.env(), self.run_dir)
            worker.start()
            self.workers.append(worker)
        wait_for(
            lambda: all(w.banner_seen() or not w.running() for w in self.workers),
            60,
            "the workers' banners",
        )
        for worker in self.workers:
            if not worker.running():
                raise SetupError(
                    f"worker {worker.slot} exited at start-up:\n"
                    + worker.logs[-1].read_text(errors="replace")[-3000:]
                )

    def start_producers(self) -> float:
        a = self.args
        start = time.time() + 3.0  # after each producer has set Django up
        deadline = start + a.duration
        options = {
            "--of": PRODUCERS,
            "--n": a.n,
            "--rate": a.rate,
            "--seed": a.seed,
            "--work-ms": a.work_ms,
            "--start": start,
            "--deadline": deadline,
        }
        for index in range(PRODUCERS):
            options.update({"--index": index, "--out": self.run_dir / f"sent-{index}.jsonl"})
            cmd = [sys.executable, str(Path(__file__).resolve()), "_produce"]
            cmd += [str(item) for pair in options.items() for item in pair]
            with (self.run_dir / f"producer-{index}.log").open("wb") as log:
                self.producers.append(
                    subprocess.Popen(
                        cmd,
                        cwd=REPO,
                        env=self.env(),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        return start

    # -- the chaos loop ------------------------------------------------------------------------

    def tend_workers(self, *, restart: bool = True) -> None:
        """Restart supervisors that exited; note exits we did not cause; look for orphans."""
        now = time.monotonic()
        for worker in self.workers:
            proc = worker.proc
            assert proc is not None
            code = proc.poll()
            if code is None:
                self.supervisor_of[proc.pid] = proc.pid
                for child in children_of(proc.pid):
                    self.supervisor_of[child] = proc.pid
                if worker.terminating_since is not None:
                    waited = now - worker.terminating_since
                    if waited > WARM_SHUTDOWN_PATIENCE and not worker.cold_sent:
                        self.chaos.slow_warm_shutdowns += 1
                        self.chaos.note(f"worker {worker.slot}: warm shutdown > 60s; cold")
                        proc.send_signal(signal.SIGTERM)
                        worker.cold_sent = True
                    elif waited > WARM_SHUTDOWN_PATIENCE + 15:
                        kill_group(proc.pid)
                continue
            expected = {"kill": (-signal.SIGKILL,), "term": (0,)}.get(worker.expected_exit, ())
            if worker.expected_exit == "term" and not worker.banner_seen():
                expected = (0, -signal.SIGTERM)  # signalled before it set its handlers up
            if worker.cold_sent:
                expected = (0, 1)
            if code not in expected:
                tail = worker.logs[-1].read_text(errors="replace")[-1500:]
                self.chaos.unexpected_exits.append(
                    f"worker {worker.slot} (pid {proc.pid}) exited with {code} "
                    f"(expected {worker.expected_exit or 'no exit'}); log tail:\n{tail}"
                )
                self.chaos.note(f"worker {worker.slot}: unexpected exit {code}")
            self.dying_groups.append((now + 2.0, proc.pid, f"worker {worker.slot}"))
            if restart:
                worker.start()
                self.chaos.restarts += 1
        for entry in list(self.dying_groups):
            when, pgid, label = entry
            if now < when:
                continue
            self.dying_groups.remove(entry)
            left = group_members(pgid)
            if left:
                self.chaos.orphans.append(
                    f"{label}: {len(left)} process(es) {left} still alive 2s after the "
                    "supervisor exited"
                )
                kill_group(pgid)

    def strike(self) -> None:
        """SIGKILL a random worker process (supervisor or child), or SIGTERM a supervisor."""
        live = [w for w in self.workers if w.running() and w.terminating_since is None]
        if not live:
            return
        if self.rng.random() < self.args.term_probability:
            worker = self.rng.choice(live)
            worker.expected_exit = "term"
            worker.terminating_since = time.monotonic()
            worker.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            self.signalled[worker.pid] = "SIGTERM"
            self.chaos.terms += 1
            self.chaos.note(f"SIGTERM worker {worker.slot} (pid {worker.pid})")
            return
        targets = []
        for worker in live:
            targets.append((worker, worker.pid, "supervisor"))
            targets.extend((worker, child, "child") for child in children_of(worker.pid))
        worker, pid, role = self.rng.choice(targets)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.signalled[pid] = f"{role} SIGKILL"
        if role == "supervisor":
            worker.expected_exit = "kill"
            self.chaos.kills_parent += 1
        else:
            self.chaos.kills_child += 1
        self.chaos.note(f"SIGKILL worker {worker.slot} {role} {pid}")

    def sent_so_far(self) -> int:
        total = 0
        for index in range(PRODUCERS):
            path = self.run_dir / f"sent-{index}.jsonl"
            if path.exists():
                with path.open("rb") as f:
                    total += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))
        return total

    def progress(self, phase: str) -> None:
        assert self.ledger is not None
        try:
            runs = self.ledger.count()
        except sqlite3.Error:
            runs = -1
        c = self.chaos
        say(
            f"{phase}: calls {self.sent_so_far()}/{self.args.n}, runs {runs}, kills "
            f"{c.kills_parent} supervisor + {c.kills_child} child, SIGTERMs {c.terms}, "
            f"restarts {c.restarts}"
        )

    def send_phase(self) -> None:
        a = self.args
        start = self.start_producers()
        planned = a.n / a.rate
        restarts: list[tuple[float, str]] = []
        if a.restart_broker:
            restarts.append((start + 0.35 * planned, self.kind or ""))
        if a.restart_postgres:
            restarts.append((start + 0.65 * planned, "postgres"))
        next_strike = time.time() + self.rng.uniform(*a.kill_interval)
        next_progress = time.time() + 5
        while any(p.poll() is None for p in self.producers):
            now = time.time()
            self.tend_workers()
            if restarts and now >= restarts[0][0]:
                _, what = restarts.pop(0)
                self.services.restart(what)
                self.chaos.note(f"restarted {what}")
            if not a.no_kills and now >= next_strike:
                self.strike()
                next_strike = now + self.rng.uniform(*a.kill_interval)
            if now >= next_progress:
                self.progress("sending")
                next_progress = now + 5
            time.sleep(0.1)
        for what in [w for _, w in restarts]:
            self.services.restart(what)  # the sends ended early (e.g. --duration)
        for index, proc in enumerate(self.producers):
            if proc.returncode:
                log = (self.run_dir / f"producer-{index}.log").read_text(errors="replace")
                raise SetupError(f"producer {index} exited with {proc.returncode}:\n{log[-3000:]}")
        self.timings["send"] = time.time() - start

    def drain_phase(self) -> dict[str, int]:
        """Keep the workers up (no chaos) until no row is unfinished. A backlog that shrinks
        is waited for (up to ``--drain-max`` seconds); the drain gives up once the number of
        unfinished rows has not gone down for ``--drain`` seconds."""
        began = time.time()
        hard_deadline = began + self.args.drain_max
        stalled_since = began
        fewest: int | None = None
        settled = 0
        unfinished: dict[str, int] = {}
        next_progress = time.time() + 5
        while time.time() < hard_deadline and time.time() - stalled_since < self.args.drain:
            self.tend_workers()
            try:
                unfinished = self.database.unfinished()
            except Exception as exc:
                say(f"drain: could not read the database ({exc})")
                unfinished = {"?": -1}
            left = sum(unfinished.values())
            if fewest is None or (left < fewest and "?" not in unfinished):
                fewest, stalled_since = left, time.time()
            settled = settled + 1 if not unfinished else 0
            if settled >= 2:
                break
            if time.time() >= next_progress:
                self.progress(f"draining (unfinished: {unfinished or 0})")
                next_progress = time.time() + 5
            time.sleep(1.0)
        self.timings["drain"] = time.time() - began
        return unfinished

    def stop_workers(self) -> list[str]:
        """Warm-stop every worker; what did not stop cleanly."""
        problems = []
        for worker in self.workers:
            if worker.running():
                worker.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for worker in self.workers:
            assert worker.proc is not None
            try:
                code = worker.proc.wait(WARM_SHUTDOWN_PATIENCE)
            except subprocess.TimeoutExpired:
                problems.append(f"worker {worker.slot} did not stop within 60s of SIGTERM")
                worker.kill_all()
                continue
            if code != 0 and worker.expected_exit == "":
                problems.append(f"worker {worker.slot} exited with {code} after a warm shutdown")
            left = group_members(worker.proc.pid)
            if left:
                problems.append(f"worker {worker.slot}: {left} alive after its supervisor exited")
                kill_group(worker.proc.pid)
        return problems

    # -- the verdict ---------------------------------------------------------------------------

    def read_sent(self) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        sent: dict[str, dict[str, Any]] = {}
        errors: list[dict[str, Any]] = []
        for index in range(PRODUCERS):
            path = self.run_dir / f"sent-{index}.jsonl"
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    (
                        errors.append(entry)
                        if "error" in entry
                        else sent.__setitem__(entry["id"], entry)
                    )
        return sent, errors

    def analyse(
        self, unfinished_at_end: dict[str, int], stop_problems: list[str]
    ) -> dict[str, Any]:
        assert self.ledger is not None
        sent, send_errors = self.read_sent()
        runs = self.ledger.runs()
        db = self.database
        rows = {
            task_id: {
                "state": state,
                "result": db.json(result),
                "meta": db.json(meta),
                "dispatched": bool(dispatched),
                "leased": leased is not None,
            }
            for task_id, state, result, meta, dispatched, leased in db.query(
                f"SELECT task_id, state, result, meta, dispatched, lease_token FROM {RESULT_TABLE}"
            )
        }
        held = redis_holdings(self.broker_url, self.args.queue) if self.kind == "redis" else None
        history: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
        for task_id, state, detail in db.query(
            f"SELECT r.task_id, h.state, h.detail FROM {HISTORY_TABLE} h "
            f"JOIN {RESULT_TABLE} r ON r.id = h.task_id ORDER BY h.at, h.id"
        ):
            history[task_id].append((state, detail or ""))

        final_states: collections.Counter[str] = collections.Counter()
        reasons: collections.Counter[str] = collections.Counter()
        not_run_explained: collections.Counter[str] = collections.Counter()
        lost: list[str] = []
        unfinished: list[str] = []
        anomalies: list[str] = []
        twice = {
            acks: {"tasks": 0, "with_reason": 0, "examples": []} for acks in ("acks_late", "plain")
        }
        lost_worker: collections.Counter[str] = collections.Counter()
        for task_id, entry in sent.items():
            row = rows.get(task_id)
            state = row["state"] if row else "(no row)"
            final_states[state] += 1
            n_runs = runs.get(task_id, 0)
            kind = "acks_late" if entry["acks_late"] else "not acks_late"
            for s, detail in history.get(task_id, []):
                if "lost" in detail:
                    verdict = "queued again" if s == "PENDING" else s
                    lost_worker[
                        f"{kind}, {verdict}, {'ran' if n_runs else 'never ran'}: "
                        f"{self.cause_of(detail)}"
                    ] += 1
            reason = self.reason_of(row, history.get(task_id, [])) if row else ""
            if state in ("FAILURE", "REVOKED"):
                reasons[f"{state}: {reason or '(no reason)'}"] += 1
            if row and state not in READY_STATES:
                unfinished.append(
                    f"{task_id} {kind} {state} runs={n_runs} dispatched={row['dispatched']} "
                    f"leased={row['leased']} history={history.get(task_id, [])} "
                    f"broker: {held.get(task_id, 'no message') if held is not None else '?'}"
                )
            if n_runs == 0:
                if state == "SUCCESS":
                    anomalies.append(f"{task_id}: SUCCESS without a run in the ledger")
                elif state in ("FAILURE", "REVOKED") and reason:
                    not_run_explained[f"{state}: {reason}"] += 1
                else:
                    lost.append(f"{task_id} (seq {entry['seq']}) {state}")
            if n_runs >= 2:
                bucket = twice["acks_late" if entry["acks_late"] else "plain"]
                requeued = sum(
                    1
                    for s, detail in history.get(task_id, [])
                    if s == "PENDING" and ("lost" in detail or "queued again" in detail)
                )
                bucket["tasks"] += 1
                if requeued >= n_runs - 1:
                    bucket["with_reason"] += 1
                if len(bucket["examples"]) < 5:
                    bucket["examples"].append(
                        f"{task_id} ran {n_runs}x, {state}, history {history.get(task_id, [])}"
                    )
        latencies = db.latencies()

        def percentile(q: float) -> float | None:
            return (
                round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)
                if latencies
                else None
            )

        failed_sends_run = [e["id"] for e in send_errors if runs.get(e["id"], 0)]
        strangers = [t for t in runs if t not in sent and t not in {e["id"] for e in send_errors}]
        left_in_broker = None
        if self.kind is not None:
            left_in_broker = broker_queue_depth(self.broker_url, self.args.queue)
        logs = sorted(self.run_dir.glob("worker-*.log"))
        log_text = "".join(p.read_text(errors="replace") for p in logs)
        errors = [line for line in log_text.splitlines() if ": ERROR/" in line]
        return {
            "transport": redact(self.broker_url),
            "database": db.vendor,
            "n": self.args.n,
            "rate": self.args.rate,
            "seed": self.args.seed,
            "sent": len(sent),
            "sent_acks_late": sum(1 for e in sent.values() if e["acks_late"]),
            "send_errors": len(send_errors),
            "send_error_examples": collections.Counter(
                re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<id>", e["error"])[:160] for e in send_errors
            ).most_common(5),
            "failed_sends_that_ran": len(failed_sends_run),
            "runs_total": sum(runs.values()),
            "runs_of_unsent_ids": len(strangers),
            "lost": len(lost),
            "lost_examples": lost[:10],
            "not_run_but_explained": dict(not_run_explained.most_common()),
            "run_twice_acks_late": twice["acks_late"],
            "run_twice_plain": twice["plain"],
            "final_states": dict(final_states.most_common()),
            "failure_reasons": dict(reasons.most_common(12)),
            "lost_worker_recoveries": dict(sorted(lost_worker.items())),
            "send_to_done_seconds": {
                "p50": percentile(0.5),
                "p99": percentile(0.99),
                "max": round(latencies[-1], 2) if latencies else None,
                "over_60s": sum(1 for x in latencies if x > 60),
            },
            "unfinished": len(unfinished),
            "unfinished_examples": unfinished[:10],
            "unfinished_at_end_of_drain": unfinished_at_end,
            "anomalies": anomalies[:10],
            "left_in_broker_queue": left_in_broker,
            "chaos": {
                "supervisor_kills": self.chaos.kills_parent,
                "child_kills": self.chaos.kills_child,
                "sigterms": self.chaos.terms,
                "restarts": self.chaos.restarts,
                "unexpected_exits": self.chaos.unexpected_exits,
                "orphans": self.chaos.orphans,
                "slow_warm_shutdowns": self.chaos.slow_warm_shutdowns,
                "services": self.services.log,
            },
            "worker_stop_problems": stop_problems,
            "worker_log": {
                "tracebacks": log_text.count("Traceback (most recent call last)"),
                "error_lines": len(errors),
                "error_examples": collections.Counter(
                    re.sub(r"\d+", "#", line.split("] ", 1)[-1])[:160] for line in errors
                ).most_common(8),
                "recovered": log_text.count("Recovered task"),
            },
            "timings": {k: round(v, 1) for k, v in self.timings.items()},
        }

    def cause_of(self, text: str) -> str:
        """What the soak did to the worker process a lost-worker message names."""
        match = re.search(r"[Ww]orker \S+?:(\d+)", text)
        if not match:
            return "no worker named"
        pid = int(match.group(1))
        if pid in self.signalled:
            return self.signalled[pid]
        supervisor = self.supervisor_of.get(pid)
        if supervisor is not None and supervisor != pid and supervisor in self.signalled:
            return f"its supervisor got {self.signalled[supervisor]}"
        if pid in self.supervisor_of:
            return "a worker process the soak did not signal"
        return "an unknown process"

    @staticmethod
    def reason_of(row: dict[str, Any], history: list[tuple[str, str]]) -> str:
        """Why a task ended FAILURE or REVOKED, shortened (numbers, hosts and ids masked)."""
        text = ""
        result, meta = row.get("result"), row.get("meta")
        if isinstance(result, dict) and result.get("exc_type"):
            message = result.get("exc_message")
            first = message[0] if isinstance(message, list) and message else message
            text = f"{result['exc_type']}: {first}"
        elif isinstance(meta, dict) and meta.get("reason"):
            text = str(meta["reason"])
        elif history:
            text = history[-1][1]
        text = re.sub(r"[\w.-]+:\d+", "<host:pid>", str(text))
        text = re.sub(r"\d+", "#", text)
        return text[:120]

    # -- the whole run -------------------------------------------------------------------------

    def run(self) -> int:
        began = time.time()
        self.set_up()
        self.timings["setup"] = time.time() - began
        self.send_phase()
        say(
            f"sends done in {self.timings['send']:.0f}s; draining (until no progress for "
            f"{self.args.drain:.0f}s, at most {self.args.drain_max:.0f}s)"
        )
        unfinished = self.drain_phase()
        problems = self.stop_workers()
        self.timings["total"] = time.time() - began
        verdict = self.analyse(unfinished, problems)
        report(verdict)
        if self.args.json:
            Path(self.args.json).write_text(json.dumps(verdict, indent=2, default=str))
        failed = (
            verdict["lost"]
            or verdict["run_twice_plain"]["tasks"]
            or verdict["unfinished"]
            or verdict["anomalies"]
        )
        self.keep_run_dir = bool(failed) or self.args.keep
        return 1 if failed else 0

    def clean_up(self) -> None:
        for proc in self.producers:
            if proc.poll() is None:
                kill_group(proc.pid)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        for worker in self.workers:
            worker.kill_all()
            if worker.proc is not None:
                for pid in group_members(worker.proc.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        self.services.start_stopped()
        if self.kind is not None:
            broker_queue_depth(self.broker_url, self.args.queue, purge=True)
        if self.database_created and not self.args.keep:
            try:
                self.database.drop()
            except Exception as exc:
                say(f"could not drop the scratch database: {exc}")
        if getattr(self, "keep_run_dir", True):
            say(f"logs kept in {self.run_dir}")
        else:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def report(v: dict[str, Any]) -> None:
    def twice(kind: str) -> str:
        t = v[kind]
        return f"{t['tasks']} ({t['with_reason']} with the reason in their history)"

    chaos, log, timings = v["chaos"], v["worker_log"], v["timings"]
    explained = ", ".join(f"{k} x{n}" for k, n in v["not_run_but_explained"].items())
    in_broker = v["left_in_broker_queue"]
    rows = [
        ("transport", f"{v['transport']} (results in {v['database']})"),
        ("sent (calls that returned)", f"{v['sent']} of {v['n']}, {v['sent_acks_late']} acks_late"),
        ("send errors", str(v["send_errors"])),
        ("lost", str(v["lost"])),
        ("run twice, acks_late", twice("run_twice_acks_late")),
        ("run twice, not acks_late", twice("run_twice_plain")),
        ("final states", ", ".join(f"{k} {n}" for k, n in v["final_states"].items())),
        ("unfinished after the drain", str(v["unfinished"])),
        (
            "send to done (s): p50 / p99 / max / over 60 s",
            " / ".join(
                str(v["send_to_done_seconds"][k]) for k in ("p50", "p99", "max", "over_60s")
            ),
        ),
        ("not run, explained", explained or "0"),
        ("failed sends that ran anyway", str(v["failed_sends_that_ran"])),
        ("runs of ids never sent", str(v["runs_of_unsent_ids"])),
        ("left in the broker queue", "n/a" if in_broker is None else str(in_broker)),
        (
            "kills: supervisor / child / SIGTERM",
            f"{chaos['supervisor_kills']} / {chaos['child_kills']} / {chaos['sigterms']}",
        ),
        ("unexpected worker exits", str(len(chaos["unexpected_exits"]))),
        ("orphaned children", str(len(chaos["orphans"]))),
        ("worker log: tracebacks / ERROR lines", f"{log['tracebacks']} / {log['error_lines']}"),
        (
            "time: setup / send / drain / total (s)",
            " / ".join(str(timings.get(k, "-")) for k in ("setup", "send", "drain", "total")),
        ),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n| what | count |\n|---|---|")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value} |")
    details = {
        "failure reasons": v["failure_reasons"],
        "lost-worker recoveries (task kind, outcome, whether it ran: what the soak did)": v[
            "lost_worker_recoveries"
        ],
        "send error examples": v["send_error_examples"],
        "lost examples": v["lost_examples"],
        "unfinished examples": v["unfinished_examples"],
        "anomalies": v["anomalies"],
        "acks_late run twice, examples": v["run_twice_acks_late"]["examples"],
        "not acks_late run twice, examples": v["run_twice_plain"]["examples"],
        "unexpected worker exits": v["chaos"]["unexpected_exits"],
        "orphans": v["chaos"]["orphans"],
        "worker stop problems": v["worker_stop_problems"],
        "service restarts": v["chaos"]["services"],
        "worker log ERROR lines (masked, most common)": v["worker_log"]["error_examples"],
    }
    for title, value in details.items():
        if value:
            print(f"\n{title}:")
            items = value.items() if isinstance(value, dict) else value
            for item in items:
                print(f"  {item}")
    print(flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Soak django_tasks: tasks through real workers under kills and restarts.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=20_000, help="tasks to send")
    parser.add_argument("--rate", type=float, default=200.0, help="sends per second, in all")
    parser.add_argument(
        "--transport-url", default="django://", help="django:// or a kombu URL (redis://, amqp://)"
    )
    parser.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="a PostgreSQL URL whose database (its name must contain 'soak') is dropped and "
        "created, or 'sqlite' for a file in the run's directory",
    )
    parser.add_argument("--queue", default="soak", help="the task queue (and broker queue)")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop sending after this many seconds (default: twice the planned time + 30)",
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=None,
        help="after the sends, give up once the unfinished rows have not gone down for this "
        "many seconds (default: 4 leases + 60; on Redis at least 360, past its visibility "
        "timeout)",
    )
    parser.add_argument(
        "--drain-max", type=float, default=900.0, help="and after this many seconds in all"
    )
    parser.add_argument("--no-kills", action="store_true", help="no SIGKILLs or SIGTERMs")
    parser.add_argument("--restart-broker", action="store_true", help="restart it once, mid-run")
    parser.add_argument("--restart-postgres", action="store_true", help="restart it once, mid-run")
    parser.add_argument(
        "--outage", type=float, default=3.0, help="seconds a restarted service is down"
    )
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument("--lease-seconds", type=float, default=10.0, help="WORKER_LEASE_SECONDS")
    parser.add_argument("--work-ms", type=float, default=10.0, help="each task sleeps 0..this ms")
    parser.add_argument(
        "--kill-interval",
        type=float,
        nargs=2,
        default=(2.0, 5.0),
        metavar=("MIN", "MAX"),
        help="seconds between strikes",
    )
    parser.add_argument(
        "--term-probability",
        type=float,
        default=0.15,
        help="chance that a strike is a SIGTERM (warm shutdown and restart) instead of a SIGKILL",
    )
    parser.add_argument("--json", help="also write the verdict as JSON to this file")
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch database and the run's directory"
    )
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 1_000_000)
    if args.n < 1 or args.rate <= 0:
        parser.error("--n and --rate must be positive")
    if args.duration is None:
        args.duration = 2 * args.n / args.rate + 30
    if args.drain is None:
        args.drain = 4 * args.lease_seconds + 60
        if broker_kind(args.transport_url) == "redis":
            # A message a killed process had received but not yet leased the row of comes
            # back only after Redis's visibility timeout (300 s by default).
            args.drain = max(args.drain, 360.0)
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["_produce"]:
        return produce(argv[1:])
    args = parse_args(argv)

    def interrupt(signum: int, _frame: Any) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)
    soak: Soak | None = None
    try:
        soak = Soak(args)
        return soak.run()
    except SetupError as exc:
        print(f"soak: {exc}", file=sys.stderr, flush=True)
        return 2
    except Interrupted as exc:
        print(f"soak: interrupted ({exc}); cleaning up", file=sys.stderr, flush=True)
        return 130
    finally:
        if soak is not None:
            # A second signal must not stop the clean-up half way: services may be down.
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, signal.SIG_IGN)
            soak.clean_up()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
