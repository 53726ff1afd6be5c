"""Tasks the tests send to real workers."""

import os
import signal
import sys
import time

from django_tasks import task
from django_tasks.exceptions import SoftTimeLimitExceeded
from tests.taskapp.models import Run


class CustomError(Exception):
    """An exception type the worker's caller can import and rebuild."""


@task
def add(x, y):
    return x + y


@task
def fail(message="boom"):
    raise CustomError(message)


@task(bind=True)
def record(self, label=""):
    """Store one Run row per execution."""
    Run.objects.create(task_id=self.request.id, label=label, pid=os.getpid())
    return label


@task(bind=True)
def sleep_then_record(self, seconds, label=""):
    Run.objects.create(task_id=self.request.id, label=f"start:{label}", pid=os.getpid())
    time.sleep(seconds)
    Run.objects.create(task_id=self.request.id, label=f"end:{label}", pid=os.getpid())
    return label


@task(bind=True, acks_late=True)
def sleep_acks_late(self, seconds, label=""):
    Run.objects.create(task_id=self.request.id, label=f"start:{label}", pid=os.getpid())
    time.sleep(seconds)
    return label


@task(bind=True, track_started=True)
def progress(self, steps):
    for step in range(1, steps + 1):
        self.update_state(state="PROGRESS", meta={"current": step, "total": steps})
    return steps


@task(bind=True, max_retries=2, default_retry_delay=0)
def always_retry(self):
    raise self.retry(exc=ConnectionError(f"attempt {self.request.retries + 1}"))


@task(bind=True, max_retries=3)
def retry_until(self, succeed_on):
    if self.request.retries + 1 < succeed_on:
        raise self.retry(countdown=0, exc=ValueError("not yet"))
    return self.request.retries


@task(typing=False)
def untyped(x):
    return x


@task(ignore_result=True)
def ignored():
    return "dropped"


@task
def unstorable():
    return object()


@task(bind=True)
def waits_on_other(self):
    return add.delay(1, 1).get(timeout=1)


@task
def send_adds(n):
    """Sends ``n`` more tasks while it runs (messages that arrive while a loop is busy)."""
    return [add.delay(i, i).id for i in range(n)]


@task(bind=True)
def request_info(self):
    r = self.request
    return {
        "id": r.id,
        "retries": r.retries,
        "queue": r.delivery_info.get("queue"),
        "is_eager": r.is_eager,
        "args": r.args,
        "kwargs": r.kwargs,
    }


@task
def raise_non_importable():
    raise type("LocalOnlyError", (Exception,), {"__module__": "nowhere.at.all"})("gone")


@task(bind=True)
def retry_later(self):
    raise self.retry(countdown=60, exc=ValueError("later"))


@task
def on_error(request, exc, traceback):
    """An errback called in the worker: (request, exc, traceback)."""
    Run.objects.create(
        task_id=request.id, label=f"errback:{type(exc).__name__}:{'Traceback' in traceback}"
    )


@task
def record_failed_id(task_id):
    """An errback sent as a task: it gets the failed task's id."""
    Run.objects.create(task_id=task_id, label="errback-task")


@task
def broken_errback(request, exc, traceback):
    raise RuntimeError("the errback itself fails")


@task(
    autoretry_for=(ConnectionError,),
    dont_autoretry_for=(ConnectionResetError,),
    retry_backoff=2,
    retry_backoff_max=5,
    retry_jitter=False,
    max_retries=4,
)
def flaky_network(kind="refused"):
    raise (ConnectionResetError if kind == "reset" else ConnectionRefusedError)(kind)


@task(autoretry_for=(ValueError,), retry_backoff=True, max_retries=3)
def jittery():
    raise ValueError("again")


@task(bind=True)
def retry_with_options(self, label):
    if self.request.retries == 0:
        raise self.retry(
            args=[f"{label}-changed"], countdown=0, expires=3600, headers={"attempt": 2}
        )
    return [label, self.request.headers]


@task(bind=True)
def slow_progress(self, steps, pause=0.2):
    for step in range(1, steps + 1):
        self.update_state(state="PROGRESS", meta={"current": step, "total": steps})
        time.sleep(pause)
    return steps


@task
def bad_query():
    """Fails inside the database, as a task with a bug in its SQL would."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM no_such_table_here")


@task(bind=True)
def retry_variants(self, variant):
    if self.request.retries:
        return [self.request.args, self.request.delivery_info["priority"]]
    if variant == "unencodable":
        raise self.retry(args=[object()], countdown=0)
    if variant == "no-args":
        raise self.retry(args=[], kwargs={"variant": "kw"}, countdown=0)
    raise self.retry(priority=None, countdown=0)


def _spin(seconds):
    """Busy in Python (short sleeps), so asynchronous exceptions reach it between them."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.02)


@task
def spin(seconds):
    _spin(seconds)
    return "not stopped"


@task(bind=True, soft_time_limit=0.5, time_limit=30)
def soft_limited(self, label=""):
    Run.objects.create(task_id=self.request.id, label=f"start:{label}", pid=os.getpid())
    try:
        _spin(20)
    except SoftTimeLimitExceeded:
        return "soft limit caught"
    return "not stopped"


@task(bind=True, time_limit=1)
def hard_limited(self, label=""):
    Run.objects.create(task_id=self.request.id, label=f"start:{label}", pid=os.getpid())
    _spin(30)
    return "not stopped"


@task(bind=True)
def record_pid(self):
    return os.getpid()


# -- fault isolation ----------------------------------------------------------------------------


class UnprintableError(Exception):
    """An exception whose ``__str__`` and ``__repr__`` raise."""

    def __str__(self):
        raise RuntimeError("str() of this exception fails")

    def __repr__(self):
        raise RuntimeError("repr() of this exception fails")


#: Values a task may return that no database the app supports can store.
UNSTORABLE = {
    "nan": float("nan"),
    "inf": float("inf"),
    "nul": "a\x00b",
    "surrogate": "\ud800",
    "nested-nul": {"rows": [{"name": "x\x00"}]},
}


@task
def returns_unstorable(kind):
    return UNSTORABLE[kind]


@task
def raise_unprintable():
    raise UnprintableError("a message nobody can print")


@task(bind=True)
def exits(self, kind, label=""):
    """Ends its run the way ``kind`` says: not by returning or raising an ``Exception``."""
    Run.objects.create(task_id=self.request.id, label=f"start:{label}", pid=os.getpid())
    if kind == "sys.exit":
        sys.exit(3)
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt
    if kind == "BaseException":
        raise BaseException("a BaseException from a task")
    if kind == "os._exit":
        os._exit(7)
    raise ValueError(kind)


@task(bind=True, acks_late=True)
def kills_its_process(self, label=""):
    """An acks_late task that kills the process running it, every time (as an OOM kill would)."""
    Run.objects.create(task_id=self.request.id, label=f"start:{label}", pid=os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)


# -- soak (bench/soak.py) -----------------------------------------------------------------------


def _soak_ledger(task_id, seq, acks_late):
    """One ledger row per run, written through a SQLite connection of its own (never
    Django's), so that bench/soak.py counts runs apart from the task rows, and a restarted
    PostgreSQL or broker cannot lose the count. One file per process: no writer waits for
    another's lock, so a run is in the ledger almost as soon as it starts."""
    import sqlite3

    path = os.path.join(os.environ["DJANGO_TASKS_SOAK_LEDGER"], f"runs-{os.getpid()}.sqlite3")
    ledger = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        ledger.execute("PRAGMA journal_mode=WAL")  # with synchronous=NORMAL: survives a kill
        ledger.execute("PRAGMA synchronous=NORMAL")
        ledger.execute(
            "CREATE TABLE IF NOT EXISTS runs (task_id TEXT, seq INTEGER, acks_late INTEGER, "
            "pid INTEGER, at REAL)"
        )
        ledger.execute(
            "INSERT INTO runs (task_id, seq, acks_late, pid, at) VALUES (?, ?, ?, ?, ?)",
            (task_id, seq, int(acks_late), os.getpid(), time.time()),
        )
    finally:
        ledger.close()


@task(bind=True)
def soak(self, seq, work_ms=0):
    _soak_ledger(self.request.id, seq, False)
    time.sleep(work_ms / 1000)
    return seq


@task(bind=True, acks_late=True)
def soak_acks_late(self, seq, work_ms=0):
    _soak_ledger(self.request.id, seq, True)
    time.sleep(work_ms / 1000)
    return seq


#: Set by a test: the stop event of the in-process consumer loop that runs
#: ``stop_and_lose_connection``.
STOPPING: dict = {"event": None}


@task
def stop_and_lose_connection():
    """Ask the loop running this task to stop (a warm shutdown), then have PostgreSQL drop
    the loop's database connection, as a restart would: the loop's next write fails once."""
    import threading

    from django.db import connection, connections

    STOPPING["event"].set()
    pid = connection.connection.info.backend_pid

    def terminate():
        with connections["default"].cursor() as cursor:  # this thread's own connection
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        connections.close_all()

    killer = threading.Thread(target=terminate)
    killer.start()
    killer.join()
    return "stopped"


@task
def tsum(numbers):
    """A chord body: the sum of its header's results."""
    return sum(numbers)


@task
def mul(x, y):
    return x * y


@task
def listing(values, *extra):
    """Returns what it was given (a chord body that shows its results' order)."""
    return [values, *extra]


@task(bind=True)
def record_body(self, results):
    """A chord body that stores one Run row per execution."""
    Run.objects.create(task_id=self.request.id, label=f"body:{len(results)}", pid=os.getpid())
    return results


@task(bind=True, rate_limit="20/s")
def limited(self):
    """Rate-limited: records when it started (epoch seconds) as its label."""
    Run.objects.create(task_id=self.request.id, label=f"{time.time():.6f}", pid=os.getpid())


@task(bind=True, rate_limit="50/s")
def limited_fifty(self):
    """bench/rate_limit.py's task: records when it started, as ``limited`` does."""
    Run.objects.create(task_id=self.request.id, label=f"{time.time():.6f}", pid=os.getpid())


@task(bind=True)
def unlimited(self):
    """bench/rate_limit.py's reference: ``limited_fifty`` without the limit."""
    Run.objects.create(task_id=self.request.id, label=f"{time.time():.6f}", pid=os.getpid())


#: What :func:`leak` keeps for the life of its process.
_LEAKED: list[bytearray] = []


@task(bind=True)
def leak(self, megabytes):
    """Keep ``megabytes`` MiB (written, so resident) until the process exits; return the pid
    and the resident memory after it, in KiB."""
    from django_tasks.worker.consumer import resident_kib

    _LEAKED.append(bytearray(b"\x01") * (megabytes * 1024 * 1024))
    Run.objects.create(task_id=self.request.id, label="leak", pid=os.getpid())
    return {"pid": os.getpid(), "rss_kib": resident_kib()}


@task(queue="squares")
def square(x):
    """A task with a queue of its own: ``square.map(...)`` goes there too."""
    return x * x
