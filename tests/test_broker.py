"""What only broker transports do: messages, the outbox, the relay, bad messages, publish
retries against a closed port and a broker connection that drops and comes back.

Run with ``DJANGO_TASKS_BROKER_URL`` set (``make test-redis``, ``make test-rabbitmq``); the
rest of the suite runs on brokers unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from kombu import Connection, Producer
from kombu.exceptions import OperationalError

from django_tasks import states, store
from django_tasks.messages import compression_content_type, storable_text
from django_tasks.models import TaskResult
from django_tasks.options import build_outgoing
from django_tasks.testing import run_until_empty
from django_tasks.transports import get_transport
from django_tasks.transports.broker import SENTINEL_QUEUE
from django_tasks.transports.envelope import message_from_outgoing
from django_tasks.transports.pools import producer_pool
from django_tasks.worker.consumer import Consumer, new_lease_token
from tests.conftest import REPO, broker_url, database_url, purge_broker_queues, wait_until
from tests.taskapp import tasks
from tests.taskapp.models import Run

pytestmark = [pytest.mark.broker, pytest.mark.django_db(transaction=True)]

FAST_POLICY = {"max_retries": 0, "interval_start": 0, "interval_step": 0, "interval_max": 0}


@pytest.fixture(autouse=True)
def _empty_queues() -> None:
    """Messages earlier tests sent and no worker took would be taken by ``take()``."""
    purge_broker_queues()


def is_amqp() -> bool:
    return get_transport().is_amqp


def take(queue: str = "default", timeout: float = 2.0):
    """Take one message off a broker queue (acknowledged, not run), or None."""
    transport = get_transport()
    with Connection(broker_url()) as conn:
        bound = transport.kombu_queue(queue)(conn.channel())
        bound.declare()
        deadline = time.monotonic() + timeout
        while True:
            message = bound.get(no_ack=False)
            if message is not None:
                message.ack()
                return message
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)


def publish_raw(body: bytes, headers: dict, content_type: str = "application/json") -> None:
    """Publish a message as another program might, bypassing ``apply_async``."""
    queue = get_transport().kombu_queue("default")
    with Connection(broker_url()) as conn:
        Producer(conn.channel()).publish(
            body,
            exchange=queue.exchange,
            routing_key="default",
            declare=[queue],
            headers=headers,
            content_type=content_type,
            content_encoding="binary",
            serializer=None,
        )


# -- sending ------------------------------------------------------------------------------------


def test_send_writes_the_pending_row_with_one_statement_and_publishes_the_task():
    with CaptureQueriesContext(connection) as queries:
        result = tasks.add.delay(2, 3)
    assert len(queries) == 1, [q["sql"] for q in queries]
    assert result.exists() and result.state == states.PENDING
    assert TaskResult.objects.get(task_id=result.id).dispatched
    message = take()
    assert message.headers["id"] == result.id
    assert message.headers["task"] == "tests.taskapp.tasks.add"
    assert message.content_type == "application/json"
    assert message.decode() == [[2, 3], {}]


def test_compressed_arguments_are_sent_compressed():
    big = "x" * 1_000_000
    result = tasks.add.apply_async((big, ""), compression="zlib")
    message = take()
    assert message.headers["compression"] == compression_content_type("zlib")
    row = TaskResult.objects.get(task_id=result.id)
    assert len(row.body) < 10_000  # what travels is what is stored: compressed
    assert message.decode() == [[big, ""], {}]


def test_expires_sets_the_message_ttl_on_amqp():
    if not is_amqp():
        pytest.skip("Redis has no per-message TTL; workers check expiry on receipt")
    tasks.add.apply_async((1, 1), expires=60)
    message = take()
    assert 55_000 <= int(message.properties["expiration"]) <= 60_000


def test_priorities_are_mapped_to_the_broker_so_higher_runs_first(start_worker):
    low = [tasks.record.apply_async((f"low{i}",), priority=0) for i in range(5)]
    high = [tasks.record.apply_async((f"high{i}",), priority=9) for i in range(5)]
    worker = start_worker("--burst", "--pool", "solo")
    assert worker.wait(60) == 0
    assert all(r.state == states.SUCCESS for r in low + high)
    order = list(Run.objects.order_by("id").values_list("label", flat=True))
    assert [label.rstrip("0123456789") for label in order] == ["high"] * 5 + ["low"] * 5, order


# -- delays and the outbox ----------------------------------------------------------------------


def test_countdown_waits_in_the_database_and_the_relay_publishes_it_when_due():
    result = tasks.add.apply_async((1, 2), countdown=60)
    row = TaskResult.objects.get(task_id=result.id)
    assert not row.dispatched
    transport = get_transport()
    transport.relay()
    assert take(timeout=0.3) is None  # not due: no message, nothing held by any worker

    TaskResult.objects.filter(pk=row.pk).update(run_after=row.date_created)
    transport.relay()
    message = take()
    assert message.headers["id"] == result.id
    assert TaskResult.objects.get(pk=row.pk).dispatched


def test_on_commit_writes_the_row_in_the_transaction_and_publishes_after_commit():
    with transaction.atomic():
        result = tasks.add.delay_on_commit(1, 1)
        assert not TaskResult.objects.get(task_id=result.id).dispatched
    assert TaskResult.objects.get(task_id=result.id).dispatched
    assert take().headers["id"] == result.id


def test_a_rolled_back_task_is_never_sent():
    with contextlib.suppress(ZeroDivisionError), transaction.atomic():
        tasks.add.delay(1, 1)
        tasks.add.delay_on_commit(1, 1)
        1 / 0  # noqa: B018
    assert not TaskResult.objects.exists()
    get_transport().relay()
    assert take(timeout=0.3) is None


def test_a_committed_task_whose_publish_never_happened_is_relayed_and_runs(start_worker):
    # As if the process died between the commit and the publish.
    outgoing = build_outgoing(tasks.record, "test", ["orphan"], {}, {})
    store.insert_task(outgoing, dispatched=False, retry=False, retry_policy=FAST_POLICY)
    assert take(timeout=0.3) is None
    worker = start_worker()
    result = tasks.record.AsyncResult(outgoing.task_id)
    try:
        assert result.get(timeout=20) == "orphan"
    except Exception:
        print(worker.output())
        raise
    worker.signal(15)
    assert worker.wait(20) == 0


def waiting_in_broker(queue: str = "default") -> int:
    """Messages ready in a broker queue (not counting those a consumer holds)."""
    with Connection(broker_url()) as conn:
        try:
            return conn.channel().queue_declare(queue=queue, passive=True).message_count
        except conn.channel_errors:
            return 0  # Redis: an empty list does not exist


def test_a_message_delivered_twice_runs_the_task_once(start_worker):
    from django_tasks.transports.envelope import message_from_outgoing

    result = tasks.record.delay("once")
    outgoing = build_outgoing(tasks.record, "test", ["once"], {}, {"task_id": result.id})
    get_transport().publish(message_from_outgoing(outgoing), retry=False, retry_policy=FAST_POLICY)
    worker = start_worker("--concurrency", "1")
    assert result.get(timeout=20) == "once"
    # The duplicate is taken and acknowledged too, not left behind, and not run.
    wait_until(lambda: waiting_in_broker() == 0, what="the duplicate to be taken")
    worker.signal(15)
    assert worker.wait(20) == 0
    assert Run.objects.filter(label="once").count() == 1
    assert take(timeout=0.3) is None


# -- bad messages -------------------------------------------------------------------------------


def _headers(**extra: object) -> dict:
    return {"id": str(uuid.uuid4()), "task": "tests.taskapp.tasks.add", **extra}


BAD_MESSAGES = {
    "garbage-body": (b"\x00\xffnot json", _headers(), "application/json", "cannot be decoded"),
    "missing-task-name": (b"[[1, 1], {}]", {"id": str(uuid.uuid4())}, None, "no task name"),
    "unknown-task-name": (
        b"[[1, 1], {}]",
        _headers(task="tests.no_such_task"),
        None,
        "unknown task",
    ),
    "disallowed-content-type": (
        b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00]\x94(]\x94}\x94e.",
        _headers(),
        "application/x-python-serialize",
        "not in ACCEPT_CONTENT",
    ),
    "nul-in-id": (b"[[1, 1], {}]", _headers(id="ab\x00cd"), None, "NUL character"),
    "nul-in-task-name": (b"[[1, 1], {}]", _headers(task="tests\x00add"), None, "NUL character"),
    "surrogate-in-id": (b"[[1, 1], {}]", _headers(id="ab\ud800"), None, "lone surrogate"),
    "bad-compression-header": (
        b"[[1, 1], {}]",
        _headers(compression="application/x-no-such-compression"),
        None,
        "cannot be read",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_MESSAGES))
def test_a_bad_message_is_recorded_as_failure_and_the_worker_goes_on(kind):
    body, headers, content_type, reason = BAD_MESSAGES[kind]
    publish_raw(body, headers, content_type or "application/json")
    good = tasks.add.delay(2, 2)
    assert run_until_empty() == 1
    assert good.get(timeout=1) == 4
    if "id" in headers:
        # What a database cannot store in an id is replaced in the recorded row.
        bad = TaskResult.objects.get(task_id=storable_text(headers["id"]))
        assert bad.state == states.FAILURE
        assert reason in bad.result["exc_message"][0]
    assert take(timeout=0.3) is None  # acknowledged: never delivered again


def test_a_bad_message_without_an_id_is_logged_and_dropped(caplog):
    publish_raw(b"[[1, 1], {}]", {"task": "tests.taskapp.tasks.add"})
    good = tasks.add.delay(1, 2)
    assert run_until_empty() == 1
    assert good.get(timeout=1) == 3
    assert "no task id" in caplog.text
    assert TaskResult.objects.count() == 1
    assert take(timeout=0.3) is None


# -- publish retries ----------------------------------------------------------------------------


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    parts = urlsplit(broker_url())
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@127.0.0.1:{port}" if auth else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def fresh_pools(monkeypatch):
    """Producer pools made in this test only (they are per process, and read the limit once)."""
    from django_tasks.transports import pools

    monkeypatch.setattr(pools, "_producer_pools", {})


def test_sends_borrow_from_a_pool_bounded_by_broker_pool_limit(settings, fresh_pools):
    settings.DJANGO_TASKS = {**settings.DJANGO_TASKS, "BROKER_POOL_LIMIT": 2}
    pool = producer_pool(get_transport().broker)
    held = [pool.acquire(block=True) for _ in range(2)]
    sent = []

    def send() -> None:
        try:
            sent.append(tasks.add.delay(2, 3))
        finally:
            connection.close()

    sender = threading.Thread(target=send)
    sender.start()
    sender.join(0.5)
    assert sender.is_alive()  # both connections are lent out: the send waits for one
    held.pop().release()
    sender.join(10)
    assert not sender.is_alive()
    held.pop().release()
    assert run_until_empty() == 1
    assert sent[0].get(timeout=1) == 5


#: Run in a fresh interpreter: forking this multi-threaded test process could deadlock.
FORKING_SENDER = """
import os
import django

django.setup()
from django.db import connection
from django_tasks.transports import get_transport
from django_tasks.transports.pools import producer_pool
from tests.taskapp import tasks

tasks.add.delay(1, 1)  # the parent's pool now holds a connection
parents_pool = producer_pool(get_transport().broker)
pid = os.fork()
if pid == 0:
    code = 1
    try:
        connection.connection = None  # the parent's database session: not ours to use
        if producer_pool(get_transport().broker) is parents_pool:
            code = 2  # it would write to the parent's sockets
        else:
            tasks.add.delay(2, 2)
            code = 0
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, f"the child failed: {status}"
tasks.add.delay(3, 3)  # the parent's connection still works
"""


def test_a_forked_child_publishes_on_connections_of_its_own():
    env = {**os.environ, "DATABASE_URL": database_url(), "DJANGO_SETTINGS_MODULE": "tests.settings"}
    sender = subprocess.run(
        [sys.executable, "-c", FORKING_SENDER],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sender.returncode == 0, sender.stdout + sender.stderr
    assert run_until_empty() == 3
    assert sorted(TaskResult.objects.values_list("result", flat=True)) == [2, 4, 6]


@pytest.fixture
def broker_at(settings):
    def point_to(url: str) -> None:
        settings.DJANGO_TASKS = {**settings.DJANGO_TASKS, "BROKER_URL": url}

    yield point_to
    get_transport().close()


def assert_only_a_not_sent_tombstone() -> TaskResult:
    """A send that raised leaves its row as a finished "not sent" tombstone: never run."""
    row = TaskResult.objects.get()
    assert (row.state, row.meta) == (states.REVOKED, {"reason": "not sent"})
    assert [change.state for change in row.history.all()] == [states.REVOKED]
    return row


def test_retry_false_fails_at_once_with_the_cause_and_leaves_only_a_tombstone(broker_at):
    broker_at(closed_port_url())
    started = time.monotonic()
    with pytest.raises(OperationalError) as raised:
        tasks.add.apply_async((1, 1), retry=False)
    assert time.monotonic() - started < 1.0
    assert raised.value.__cause__ is not None
    assert "tests.taskapp.tasks.add" in str(raised.value)
    assert_only_a_not_sent_tombstone()


def test_a_message_of_a_send_that_raised_is_never_run(broker_at):
    """The publish reached the broker but the caller was told it failed (a lost confirm):
    the late message finds its task finished and is dropped, so the caller may send again."""
    real = broker_url()
    broker_at(closed_port_url())
    with pytest.raises(OperationalError):
        tasks.record.apply_async(("told-not-sent",), task_id="lost-confirm", retry=False)
    broker_at(real)
    outgoing = build_outgoing(tasks.record, "test", ["told-not-sent"], {}, {})
    outgoing.task_id = "lost-confirm"
    get_transport().publish(message_from_outgoing(outgoing), retry=False, retry_policy=FAST_POLICY)
    assert run_until_empty() == 0
    assert not Run.objects.exists()
    assert take(timeout=0.3) is None  # taken and dropped
    assert_only_a_not_sent_tombstone()
    # Sending again with the same id replaces the tombstone, and runs.
    again = tasks.record.apply_async(("sent",), task_id="lost-confirm")
    assert run_until_empty() == 1
    assert again.get(timeout=1) == "sent"


def test_a_send_whose_publish_raised_after_a_worker_took_it_counts_as_sent(monkeypatch):
    """The message got through and a worker took the task before the publish raised: the
    caller is not told "not sent" (it would send again), and the task runs once."""
    from django_tasks.transports.broker import BrokerTransport

    publish = BrokerTransport.publish

    def publish_then_lose_the_confirm(self, message, **options):
        publish(self, message, **options)
        assert run_until_empty() == 1  # a worker is quicker than the confirm
        raise OperationalError("the connection dropped before the confirm")

    monkeypatch.setattr(BrokerTransport, "publish", publish_then_lose_the_confirm)
    result = tasks.record.delay("sent after all")
    assert result.get(timeout=1) == "sent after all"
    assert Run.objects.filter(label="sent after all").count() == 1


def test_the_relay_leaves_a_task_its_rate_limit_held_back_to_its_worker():
    """Its message is gone; a new one would queue behind the broker's backlog and come back
    after its turn. The relay leaves it to the worker that held it, for a while."""
    held = tasks.limited.delay()
    take()  # its message, as the worker that claimed it acknowledged it
    turn = time.time() - 0.01
    TaskResult.objects.filter(task_id=held.id).update(
        run_after=dt.datetime.fromtimestamp(turn, tz=dt.UTC),
        options={store.RESERVED_START: turn},
        dispatched=False,
    )
    transport = get_transport()
    transport.relay()
    assert take(timeout=0.3) is None  # left to its worker

    # Another loop at its own turn takes it along: the loop that held it may be busy.
    claim = store.Claim(["default"], 10, "token", 30, "x:1", unpublished=True)
    (claimed,) = store.claim(claim)
    assert claimed.task_id == held.id
    assert store.turn_of(claimed.options, claimed.run_after) == pytest.approx(turn)
    assert store.claim(store.Claim(["default"], 10, "its-holder", 30, "x:2", [held.id])) == []

    # Its worker is gone: its lease ran out and it is due again, long past its turn.
    TaskResult.objects.filter(task_id=held.id).update(
        lease_token=None, run_after=timezone.now() - dt.timedelta(seconds=2)
    )
    transport.relay()
    assert take().headers["id"] == held.id


def test_a_message_lost_in_flight_is_sent_again_once_its_queue_is_empty():
    """A consumer killed between popping a message and holding it (Redis) loses it; the
    relay sends again tasks long overdue whose broker queue is empty."""
    result = tasks.record.delay("lost in flight")
    purge_broker_queues()  # the message is gone; the row still says it was sent
    TaskResult.objects.filter(task_id=result.id).update(
        run_after=timezone.now() - dt.timedelta(minutes=5)
    )
    transport = get_transport()
    transport._next_overdue_check = 0.0
    transport.relay()
    assert run_until_empty() == 1
    assert result.get(timeout=1) == "lost in flight"


def test_a_broker_that_forgot_its_queues_gets_the_waiting_tasks_again(start_worker):
    """A Redis with nothing on disk restarts empty: workers notice the missing sentinel
    and send the waiting tasks again, without a person."""
    result = tasks.record.delay("forgotten")
    if is_amqp():
        with Connection(broker_url()) as conn:
            channel = conn.channel()
            for queue in ("default", SENTINEL_QUEUE):  # the queues and what they held
                channel.queue_delete(queue)
    else:
        import redis

        redis.Redis.from_url(broker_url()).flushdb()  # what a restart without a disk does
    assert take(timeout=0.3) is None
    worker = start_worker("--concurrency", "1")
    try:
        assert result.get(timeout=20) == "forgotten"
    finally:
        print(worker.output())
    assert "lost its queues" in worker.output()
    worker.signal(15)
    assert worker.wait(20) == 0


def test_the_retry_policy_sleeps_between_attempts_then_gives_up(broker_at):
    broker_at(closed_port_url())
    policy = {"max_retries": 3, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.3}
    started = time.monotonic()
    with pytest.raises(OperationalError) as raised:
        tasks.add.apply_async((1, 1), retry_policy=policy)
    elapsed = time.monotonic() - started
    assert 0.1 + 0.3 + 0.3 - 0.05 <= elapsed < 5.0  # the policy's sleeps: 0.1, 0.3, 0.3
    assert raised.value.__cause__ is not None
    assert_only_a_not_sent_tombstone()


class Outage:
    """A TCP relay in front of the real broker that can drop every connection and refuse new
    ones (the broker "stops"), then accept again (it "restarts")."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self.port = server.getsockname()[1]
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            if self._server is not None:
                with contextlib.suppress(OSError):  # wakes the blocked accept() on Linux
                    self._server.shutdown(socket.SHUT_RDWR)
                self._server.close()
                self._server = None
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def outage() -> Iterator[Outage]:
    parts = urlsplit(broker_url())
    default_port = 5672 if parts.scheme.startswith(("amqp", "pyamqp")) else 6379
    relay = Outage((parts.hostname or "127.0.0.1", parts.port or default_port))
    relay.start()
    yield relay
    relay.stop()


def url_through(relay: Outage) -> str:
    parts = urlsplit(broker_url())
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@127.0.0.1:{relay.port}" if auth else f"127.0.0.1:{relay.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def test_a_send_rides_out_a_broker_restart(outage, broker_at):
    broker_at(url_through(outage))
    first = tasks.add.delay(1, 1)
    outage.stop()  # the broker goes away with the connection the producer holds
    threading.Timer(0.5, outage.start).start()
    policy = {"max_retries": 20, "interval_start": 0.1, "interval_step": 0.1, "interval_max": 0.2}
    started = time.monotonic()
    second = tasks.add.apply_async((2, 2), retry_policy=policy)
    assert time.monotonic() - started >= 0.4
    assert run_until_empty() == 2
    assert (first.get(timeout=1), second.get(timeout=1)) == (2, 4)


def test_sending_works_again_once_the_broker_is_back(outage, broker_at):
    broker_at(url_through(outage))
    first = tasks.add.delay(1, 1)  # a pooled connection is now open through the relay
    outage.stop()
    with pytest.raises(OperationalError):
        tasks.add.apply_async((2, 2), retry=False)
    outage.start()
    third = tasks.add.apply_async((3, 3), retry=False)  # the failed connection was dropped
    assert run_until_empty() == 2
    assert (first.get(timeout=1), third.get(timeout=1)) == (2, 6)


def test_a_worker_reconnects_after_a_broker_restart(outage, start_worker):
    url = url_through(outage)
    worker = start_worker(env={"DJANGO_TASKS_BROKER_URL": url}, lease_seconds=5)
    assert tasks.add.delay(1, 1).get(timeout=20) == 2
    outage.stop()
    time.sleep(1.0)
    outage.start()
    result = tasks.add.delay(3, 3)
    assert result.get(timeout=30) == 6, worker.output()
    # One line per attempt to reach the broker again, saying when the next comes.
    wait_until(
        lambda: re.search(
            r"(Lost the connection to|Cannot connect to) \S+: .*; trying again in", worker.output()
        ),
        what="the reconnect log",
    )
    worker.signal(15)
    assert worker.wait(20) == 0


def test_a_lost_broker_is_retried_with_growing_waits_and_one_line_each(monkeypatch, caplog):
    """Once running, a worker whose broker is gone logs one line per attempt, waiting 1, 2,
    3 … (at most 5) seconds between them, instead of a line every few milliseconds."""
    from django_tasks.transports import broker as broker_module
    from django_tasks.transports.broker import BrokerTransport

    waits: list[float] = []
    monkeypatch.setattr(broker_module.time, "sleep", waits.append)
    transport = BrokerTransport("redis://:secret@127.0.0.1:1/0")
    try:
        with caplog.at_level("WARNING", logger="django_tasks.transport"):
            for _ in range(7):
                transport._drain(["default"], limit=10, timeout=0.01)
    finally:
        transport.close()
    assert waits == [1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0]
    lines = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
    assert len(lines) == 7
    assert lines[0].startswith("Cannot connect to redis://:**@127.0.0.1:1/0")
    assert "secret" not in " ".join(lines)


def test_messages_that_arrive_while_a_loop_is_busy_are_claimed_several_at_a_time(monkeypatch):
    """A claim on a broker takes the messages delivered so far, so a short one does not
    mean the queue is empty: the loop claims again at once instead of waiting for one
    message per claim (two commits per task while it falls behind a stream)."""
    claimed: list[int] = []
    real_claim = store.claim

    def counting_claim(request):
        batch = real_claim(request)
        claimed.append(len(batch))
        return batch

    monkeypatch.setattr(store, "claim", counting_claim)
    spawner = tasks.send_adds.delay(20)
    consumer = Consumer(
        ["default"], hostname="test", lease_token=new_lease_token(), stop=threading.Event()
    )
    deadline = time.monotonic() + 30
    while TaskResult.objects.filter(state=states.SUCCESS).count() < 21:
        assert time.monotonic() < deadline, claimed
        consumer.step()
    consumer.transport.close()
    assert len(spawner.get(timeout=1)) == 20
    runs = [size for size in claimed if size]
    assert runs[0] == 1  # the task that sends the others
    assert len(runs) <= 8 and max(runs) >= 4, claimed  # not twenty claims of one


def claim_delivered(count: int, transport) -> list:
    """Claim ``count`` sent tasks through ``transport``, their messages not yet acknowledged."""
    request = store.Claim(["default"], count, new_lease_token(), 60.0, "test")
    claimed: list = []
    deadline = time.monotonic() + 10
    while len(claimed) < count:
        assert time.monotonic() < deadline, claimed
        claimed += transport.claim(dataclasses.replace(request, limit=count - len(claimed)))
    return claimed


def test_a_batch_is_acknowledged_at_once_and_its_messages_are_gone_from_the_broker(monkeypatch):
    """Acknowledging a batch settles every message of it. On Redis, where kombu keeps
    unacknowledged messages in a hash, the batch is one transaction, not one per message
    (each cost about as much as running a no-op task)."""
    for i in range(5):
        tasks.add.delay(i, i)
    transport = get_transport()
    claimed = claim_delivered(5, transport)
    messages = [task.delivery for task in claimed]
    if is_amqp():
        transport.acknowledge(claimed)
    else:
        import redis

        client = redis.Redis.from_url(broker_url())
        tags = [message.delivery_tag for message in messages]
        assert all(client.hexists("unacked", tag) for tag in tags)
        transactions: list[int] = []
        real_execute = redis.client.Pipeline.execute

        def counted_execute(pipeline, *args, **kwargs):
            transactions.append(len(pipeline.command_stack))
            return real_execute(pipeline, *args, **kwargs)

        monkeypatch.setattr(redis.client.Pipeline, "execute", counted_execute)
        transport.acknowledge(claimed)
        monkeypatch.undo()
        assert not any(client.hexists("unacked", tag) for tag in tags)
        assert transactions == [10]  # a ZREM and an HDEL per message, in one transaction
    assert all(message.acknowledged for message in messages)
    assert all(task.delivery is None for task in claimed)
    transport.close()  # nothing unacknowledged goes back to the queue
    assert take(timeout=1.0) is None


def test_a_loop_goes_on_receiving_once_it_has_had_more_than_its_prefetch(settings):
    """Acknowledged messages no longer count against the prefetch window (on Redis, kombu
    stops delivering once it counts ``prefetch_count`` unacknowledged ones)."""
    settings.DJANGO_TASKS = {**settings.DJANGO_TASKS, "WORKER_PREFETCH_MAX": 3}
    for i in range(12):
        tasks.add.delay(i, i)
    consumer = Consumer(
        ["default"], hostname="test", lease_token=new_lease_token(), stop=threading.Event()
    )
    deadline = time.monotonic() + 20
    while TaskResult.objects.filter(state=states.SUCCESS).count() < 12:
        assert time.monotonic() < deadline, TaskResult.objects.filter(state=states.SUCCESS).count()
        consumer.step()
    consumer.transport.close()
