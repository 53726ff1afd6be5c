"""Broker transports (``amqp://``, ``redis://``, kombu's other URLs): messages through kombu,
the task row in the database as the durable record.

* Sending writes the ``PENDING`` row (so ``exists()`` and the admin see the task at once) and
  publishes a message carrying the task. Inside a transaction, or with ``on_commit``, the row
  is written there and the message published after the commit: the outbox.
* Rows that wait without a message (countdown/eta, retries, tasks given back by a lost worker,
  outbox rows whose publish never happened) are published by the relay when due. Every
  worker runs it, so delays cost the broker and the worker's memory nothing.
* A worker leases the rows of the messages it receives, as the database transport does
  (``UPDATE … WHERE task_id IN (…) AND still waiting``): a redelivered or duplicated message
  never runs a task twice, and a dead worker's leases are recovered by the same reaper.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from django.core.checks import CheckMessage, Error
from django.db import connection, transaction
from django.utils import timezone
from kombu import Connection, Exchange, Queue
from kombu import Consumer as KombuConsumer
from kombu.exceptions import OperationalError
from kombu.message import Message

from .. import store
from ..conf import SETTINGS_NAME, tasks_settings
from ..messages import JSON_CONTENT_TYPE, accepted_content_types, safe_str, storable_text
from ..store import Claim, ClaimedTask
from .acks import acknowledge_together
from .base import KnownTask, OutgoingTask, Publishing, Transport, database_description
from .envelope import (
    body_problem,
    check_message,
    message_from_outgoing,
    message_from_row,
    policy_for_kombu,
)
from .pools import producer_pool

logger = logging.getLogger("django_tasks.transport")

#: Message priorities on brokers run 0..9 (higher first); task priorities above 9 count as 9.
MAX_PRIORITY = 9
#: Redis redelivers unacknowledged messages after this long. Leases, not redelivery, recover
#: lost tasks, and a redelivered message cannot run a task twice, so it only needs to be
#: longer than a worker takes to claim what it received.
VISIBILITY_TIMEOUT = 300
#: A worker that has just finished a batch fills the next one while each message follows the
#: last within this long (Redis hands out one message per round trip, so taking only what
#: has already arrived would make batches of one). A worker woken from idle runs the first
#: message at once.
FILL_GAP = 0.001
RELAY_BATCH = 500
#: Seconds a Redis consumer's BRPOP blocks for (kombu's default is 1).
REDIS_BRPOP_TIMEOUT = 0.1
#: A queue nobody consumes, holding one persistent message. If it is gone, the broker forgot
#: its queues (e.g. a Redis that keeps nothing on disk restarted), and with them the messages
#: of waiting tasks, which are then sent again.
SENTINEL_QUEUE = "django_tasks.sentinel"
#: How often each worker's relay looks at the sentinel.
SENTINEL_INTERVAL = 5.0
#: A task due this long ago, with its message sent, that nobody has claimed while its broker
#: queue is empty, lost its message in flight (e.g. a Redis consumer killed after popping it,
#: before kombu held it as unacknowledged): it is sent again.
OVERDUE_AFTER = 60.0
#: How often each worker's relay looks for such tasks.
OVERDUE_INTERVAL = 30.0

#: The longest wait between two attempts to reach a broker that went away (seconds).
RECONNECT_MAX = 5.0


class BrokerTransport(Transport):
    """Tasks sent as kombu messages, recorded as :class:`~django_tasks.models.TaskResult` rows."""

    scheme = "kombu"
    #: The broker pushes messages to waiting workers.
    wakes_workers = True
    needs_relay = True
    #: A claim takes the messages delivered so far, not all those waiting in the broker.
    claim_takes_all_due = False

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._broker: Connection | None = None  # never connected: it names the producer pool
        self._receiver: Connection | None = None
        self._consumer: KombuConsumer | None = None
        self._listening: tuple[str, ...] = ()
        self._inbox: collections.deque[Message] = collections.deque()
        self._next_sentinel_check = 0.0
        self._next_overdue_check = time.monotonic() + OVERDUE_INTERVAL
        self._reconnect_failures = 0

    # -- connections --------------------------------------------------------------------------

    def _connection(self) -> Connection:
        # Publisher confirms on AMQP: a publish returns once the broker has the message, so
        # a connection lost right after it cannot lose the task (Redis replies to each push).
        options = {"visibility_timeout": VISIBILITY_TIMEOUT, "confirm_publish": True}
        options.update(tasks_settings.BROKER_TRANSPORT_OPTIONS)
        # One connection attempt per call: retries follow the publish policy, explicitly.
        options["max_retries"] = 0
        return Connection(self.url, transport_options=options)

    @property
    def broker(self) -> Connection:
        """The broker's kombu connection, as configured (not connected): the pool's key."""
        if self._broker is None:
            self._broker = self._connection()
        return self._broker

    @property
    def is_amqp(self) -> bool:
        driver_type: str = self.broker.transport.driver_type
        return driver_type == "amqp"

    def kombu_queue(self, name: str) -> Queue:
        """The broker queue (and its direct exchange) for a task queue name."""
        exchange = Exchange(name, type="direct", durable=True)
        max_priority = MAX_PRIORITY if self.is_amqp else None
        return Queue(name, exchange, routing_key=name, durable=True, max_priority=max_priority)

    @classmethod
    def check(cls, url: str) -> list[CheckMessage]:
        """A broker URL whose kombu transport cannot load its client library (e.g. ``redis``)."""
        try:
            transport = Connection(url).transport
            transport.driver_version()
        except ImportError as exc:
            extra = "redis" if url.startswith(("redis", "rediss", "sentinel")) else None
            hint = f"pip install 'django-kombu-tasks[{extra}]'" if extra else "Install its client."
            return [
                Error(
                    f"{SETTINGS_NAME}['BROKER_URL']: kombu cannot load the transport for "
                    f"{url!r}: {exc}",
                    hint=hint,
                    id="django_tasks.E019",
                )
            ]
        except Exception:
            return []  # a version we cannot read is not a reason to refuse the URL
        return []

    def describe(self) -> str:
        return f"{self.broker.as_uri()} (results: {database_description()})"

    def broker_uri(self) -> str:
        return str(self.broker.as_uri())

    def wait_until_reachable(
        self, errback: Callable[[BaseException, float], None], intervals: tuple[float, float, float]
    ) -> None:
        start, step, most = intervals
        with self._connection() as conn:
            conn.ensure_connection(
                errback=errback,
                max_retries=None,
                interval_start=start,
                interval_step=step,
                interval_max=most,
            )

    def close(self) -> None:
        self._close_receiver()

    def _close_receiver(self) -> None:
        for message in self._inbox:
            self._quietly(message.requeue)
        self._inbox.clear()
        if self._receiver is not None:
            self._quietly(self._receiver.release)
        self._receiver = self._consumer = None
        self._listening = ()

    @staticmethod
    def _quietly(action: Any) -> None:
        try:
            action()
        except Exception as exc:  # the connection is going away anyway
            logger.debug("Ignored while closing a broker connection: %s", exc)

    # -- sending ------------------------------------------------------------------------------

    def send(self, outgoing: OutgoingTask, *, retry: bool, retry_policy: dict[str, Any]) -> None:
        if connection.in_atomic_block:
            # A worker must not get the message before the row is visible to it.
            self.send_on_commit(outgoing, retry=retry, retry_policy=retry_policy)
            return
        if outgoing.delayed:
            # countdown/eta: the row waits in the database; the relay publishes it when due.
            store.insert_task(outgoing, dispatched=False, retry=retry, retry_policy=retry_policy)
            return
        store.insert_task(outgoing, dispatched=True, retry=retry, retry_policy=retry_policy)
        try:
            self.publish(message_from_outgoing(outgoing), retry=retry, retry_policy=retry_policy)
        except BaseException as exc:
            # A caller told "not sent" may send again, so a message that got to the broker
            # anyway (its confirm was lost) must never run: the row stays as a "not sent"
            # tombstone. If a worker has claimed the row already, the message did get through,
            # and the caller is told so by not raising.
            if store.mark_unsent(outgoing.task_id) or not isinstance(exc, Exception):
                raise
            logger.warning(
                "Publishing %s[%s] raised (%s), but a worker has the task already: sent",
                outgoing.task_name,
                outgoing.task_id,
                safe_str(exc),
            )

    def send_on_commit(
        self, outgoing: OutgoingTask, *, retry: bool, retry_policy: dict[str, Any]
    ) -> None:
        """The outbox: the row is written now, in the transaction; the relay publishes it if
        the publish after the commit never happens."""
        store.insert_task(outgoing, dispatched=False, retry=retry, retry_policy=retry_policy)
        self._publish_on_commit([outgoing], retry=retry, retry_policy=retry_policy)

    def send_many(self, outgoing: Iterable[OutgoingTask], publishing: Publishing) -> None:
        """A group: the rows in bulk (the outbox), then one batch of publishes after the
        commit; what is not published then, the relay publishes."""
        with transaction.atomic():
            stored = store.insert_tasks(outgoing, dispatched=False)
            self._publish_on_commit(
                stored, retry=publishing.retry, retry_policy=publishing.retry_policy
            )

    def _publish_on_commit(
        self, outgoing: list[OutgoingTask], *, retry: bool, retry_policy: dict[str, Any]
    ) -> None:
        """Publish the due ones of ``outgoing`` once the transaction commits, marking each
        dispatched; a failed publish leaves the rest to the relay (delayed ones always)."""
        due = [task for task in outgoing if not task.delayed]
        if not due:
            return

        def publish_after_commit() -> None:
            published: list[str] = []
            try:
                for task in due:
                    self.publish(
                        message_from_outgoing(task), retry=retry, retry_policy=retry_policy
                    )
                    published.append(task.task_id)
            except OperationalError as exc:
                logger.warning(
                    "Publishing %s[%s] after commit failed (%s); the relay will publish it%s",
                    due[len(published)].task_name,
                    due[len(published)].task_id,
                    exc,
                    f" and the {len(due) - len(published) - 1} other(s) left"
                    if len(due) - len(published) > 1
                    else "",
                )
            store.mark_dispatched(published)

        transaction.on_commit(publish_after_commit)

    def publish(
        self, message: dict[str, Any], *, retry: bool, retry_policy: dict[str, Any]
    ) -> None:
        """Publish one message; on connection errors retry per ``retry_policy`` through
        kombu's ``ensure``, then raise :class:`kombu.exceptions.OperationalError`."""
        queue = self.kombu_queue(message["queue"])
        # The policy goes to ensure() explicitly, never to publish(retry=True), which would
        # leave it in the pooled connection's options for later retry=False sends.
        policy = policy_for_kombu(retry_policy) if retry else {"max_retries": 0}
        with producer_pool(self.broker).acquire(block=True) as producer:
            conn = producer.connection
            try:
                conn.ensure_connection(**policy)
                publish = conn.ensure(producer, producer.publish, **policy) if retry else None
                kwargs = self._publish_arguments(message, queue)
                if publish is not None:
                    publish(message["body"], **kwargs)
                else:
                    producer.publish(message["body"], **kwargs)
            except OperationalError as exc:
                self._quietly(conn.collect)  # the next borrower connects afresh
                raise OperationalError(
                    f"Could not send task {message['task_name']!r}: the broker at "
                    f"{conn.as_uri()} is unreachable: {exc}"
                ) from exc
            except conn.recoverable_connection_errors + conn.recoverable_channel_errors as exc:
                self._quietly(conn.collect)
                raise OperationalError(
                    f"Could not send task {message['task_name']!r} to {conn.as_uri()}: {exc}"
                ) from exc

    def _publish_arguments(self, message: dict[str, Any], queue: Queue) -> dict[str, Any]:
        priority = min(message["priority"], MAX_PRIORITY)
        kwargs: dict[str, Any] = {
            # The default exchange routes by queue name, as the queue's own direct exchange
            # would, without kombu's Redis transport looking up the binding on every send.
            "exchange": "",
            "routing_key": queue.name,
            "declare": [queue],  # once per connection, so the queue exists before the first
            "content_type": message["content_type"],
            "content_encoding": message["content_encoding"],
            "headers": message["headers"],
            # Redis's priority steps: lower runs first.
            "priority": priority if self.is_amqp else MAX_PRIORITY - priority,
            "delivery_mode": 2,
            "serializer": None,
        }
        expires = message["expires"]
        if expires is not None:
            kwargs["expiration"] = max((expires - timezone.now()).total_seconds(), 0.001)
        return kwargs

    # -- the relay ----------------------------------------------------------------------------

    def relay(self) -> float | None:
        """Publish due rows that have no message; return the seconds until the next one is
        due, or None when none waits."""
        policy = tasks_settings.TASK_PUBLISH_RETRY_POLICY
        if time.monotonic() >= self._next_sentinel_check:
            self._next_sentinel_check = time.monotonic() + SENTINEL_INTERVAL
            if self.broker_forgot():
                again = store.redispatch_waiting()
                logger.warning(
                    "The broker has lost its queues (it restarted with nothing on disk?): "
                    "sending the %d waiting task(s) it held again",
                    again,
                )

        if time.monotonic() >= self._next_overdue_check:
            self._next_overdue_check = time.monotonic() + OVERDUE_INTERVAL
            self._send_overdue_again()

        def publish(row: dict[str, Any]) -> None:
            self.publish(message_from_row(row), retry=True, retry_policy=policy)

        published, next_due = store.publish_due(publish, RELAY_BATCH)
        if published:
            logger.info("Relay published %d due task(s)", published)
        return next_due

    def _send_overdue_again(self) -> None:
        """Send again the tasks whose message was lost in flight (see :data:`OVERDUE_AFTER`);
        a queue that still holds messages is left alone (its tasks may be waiting their turn)."""
        due_before = timezone.now() - dt.timedelta(seconds=OVERDUE_AFTER)
        for queue in store.queues_with_overdue_messages(due_before):
            waiting = self.messages_waiting(queue)
            if waiting != 0:
                continue
            again = store.redispatch_waiting(queue=queue, due_before=due_before)
            if again:
                logger.warning(
                    "%d task(s) of queue %r were due over %ds ago, but their queue in the "
                    "broker is empty: their messages were lost; sending them again",
                    again,
                    queue,
                    OVERDUE_AFTER,
                )

    def messages_waiting(self, queue: str) -> int | None:
        """Messages ready in the broker's queue ``queue`` (0 if it does not exist), or None
        when the broker cannot be asked."""
        with producer_pool(self.broker).acquire(block=True) as producer:
            conn = producer.connection
            try:
                conn.ensure_connection(max_retries=0)
                channel = conn.channel()
                try:
                    return int(channel.queue_declare(queue=queue, passive=True)[1])
                except Exception:  # the channel's "no such queue"
                    return 0
                finally:
                    self._quietly(channel.close)
            except self._connection_errors() as exc:
                self._quietly(conn.collect)
                logger.warning("Could not count the messages of queue %r (%s)", queue, exc)
                return None

    def broker_forgot(self) -> bool:
        """Whether the broker lost its queues since the sentinel message was put there (or
        it was never put there); puts one there if so."""
        if self.messages_waiting(SENTINEL_QUEUE) != 0:
            return False  # it is there (or the broker cannot be asked now)
        exchange = Exchange(SENTINEL_QUEUE, type="direct", durable=True)
        queue = Queue(SENTINEL_QUEUE, exchange, routing_key=SENTINEL_QUEUE, durable=True)
        with producer_pool(self.broker).acquire(block=True) as producer:
            try:
                producer.publish(
                    b"{}",
                    exchange="",
                    routing_key=SENTINEL_QUEUE,
                    declare=[queue],
                    content_type=JSON_CONTENT_TYPE,
                    content_encoding="utf-8",
                    delivery_mode=2,
                    serializer=None,
                )
            except self._connection_errors() as exc:
                self._quietly(producer.connection.collect)
                logger.warning("Could not put the sentinel message in place (%s)", exc)
        return True

    # -- receiving ----------------------------------------------------------------------------

    def _listen(self, queues: list[str]) -> Connection:
        if self._receiver is not None and self._listening == tuple(queues):
            return self._receiver
        self._close_receiver()
        receiver = self._connection()
        receiver.ensure_connection(max_retries=0)
        channel = receiver.channel()
        if receiver.transport.driver_type == "redis":
            # Closing a Redis consumer waits for its pending BRPOP to return (so that no
            # popped message is lost); a short BRPOP keeps closing, e.g. after each
            # run_until_empty() in tests, from taking a second.
            channel.brpop_timeout = REDIS_BRPOP_TIMEOUT
        consumer = KombuConsumer(
            channel,
            queues=[self.kombu_queue(name) for name in queues],
            on_message=self._inbox.append,
            # An unreadable message (e.g. unknown compression) is recorded, not lost.
            on_decode_error=lambda message, _exc: self._inbox.append(message),
            accept=None,  # checked per message, so a refused one is recorded, not dropped
            prefetch_count=int(tasks_settings.WORKER_PREFETCH_MAX),
        )
        consumer.consume()
        self._receiver, self._consumer, self._listening = receiver, consumer, tuple(queues)
        return receiver

    def _drain(self, queues: list[str], limit: int, timeout: float, gap: float = 0.0) -> None:
        """Move delivered messages into the inbox (up to ``limit``), waiting up to ``timeout``
        for the first one and up to ``gap`` for each next one; a lost connection is logged
        and reopened on the next call."""
        try:
            receiver = self._listen(queues)
        except Exception as exc:  # refused, unknown vhost, bad credentials, …
            self._close_receiver()
            self._wait_to_reconnect("Cannot connect to", exc)
            return
        try:
            wait = timeout
            while len(self._inbox) < limit:
                try:
                    receiver.drain_events(timeout=wait)
                except TimeoutError:
                    self._reconnect_failures = 0
                    return
                wait = gap
            self._reconnect_failures = 0
        except self._connection_errors() as exc:
            self._close_receiver()
            self._wait_to_reconnect("Lost the connection to", exc)
        except Exception as exc:
            # kombu could not even turn what the broker handed over into a message (e.g. an
            # item another program pushed onto a Redis list, or headers nested too deep to
            # decode): there is no message to record or acknowledge. It is gone from the
            # broker already; say so, and go on with a fresh connection.
            logger.error(
                "Dropped something the broker delivered that is not a readable message (%s)",
                safe_str(exc)[:500],
            )
            self._close_receiver()

    def _wait_to_reconnect(self, what: str, exc: BaseException) -> None:
        """One log line per attempt, then wait 1, 2, 3 … up to :data:`RECONNECT_MAX` s."""
        self._reconnect_failures += 1
        delay = min(float(self._reconnect_failures), RECONNECT_MAX)
        logger.warning(
            "%s %s: %s; trying again in %g s",
            what,
            self.broker_uri(),
            safe_str(exc)[:300],
            delay,
        )
        time.sleep(delay)

    def _connection_errors(self) -> tuple[type[BaseException], ...]:
        # OperationalError is in this tuple, not starred into an ``except`` one: mypy cannot
        # type an ``except (A, *rest)`` clause.
        conn = self._receiver or self.broker
        return (
            OperationalError,
            *conn.recoverable_connection_errors,
            *conn.recoverable_channel_errors,
            OSError,
        )

    def claim(self, request: Claim, *, known_task: KnownTask | None = None) -> list[ClaimedTask]:
        """Lease the tasks of the messages received (up to ``request.limit``); each keeps its
        message in ``delivery`` until :meth:`acknowledge`. ``known_task`` tells a message
        without a row for a task this worker does not know (recorded as a bad message) from
        one whose row was forgotten or purged (dropped)."""
        queues, limit, worker = request.queues, request.limit, request.worker
        if not self._inbox:
            self._drain(queues, limit, FILL_GAP, FILL_GAP)
        received = [self._inbox.popleft() for _ in range(min(limit, len(self._inbox)))]
        if not received:
            return []
        accepted = accepted_content_types(tasks_settings.ACCEPT_CONTENT)
        deliveries: dict[str, Message] = {}
        for message in received:
            try:
                task_id = check_message(message, accepted)
            except Exception as exc:  # BadMessage, or a message too broken to look at
                self.record_bad_message(message, safe_str(exc), worker)
                continue
            if task_id in deliveries:
                self._quietly(message.ack)  # the same task twice in one batch
            else:
                deliveries[task_id] = message
        if not deliveries:
            return []
        claimed = store.claim(
            dataclasses.replace(request, limit=len(deliveries), task_ids=list(deliveries))
        )
        held = {c.task_id for c in claimed}
        unheld = [task_id for task_id in deliveries if task_id not in held]
        if unheld:
            self._drop_unheld(
                {task_id: deliveries[task_id] for task_id in unheld}, worker, known_task
            )
        for task in claimed:
            task.delivery = deliveries[task.task_id]
        return claimed  # best first, as claimed

    def _drop_unheld(
        self,
        deliveries: dict[str, Message],
        worker: str,
        known_task: KnownTask | None,
    ) -> None:
        """Messages whose task is not waiting: run, running, revoked or not yet due (another
        message delivered it, or will), or without a row at all."""
        known = store.existing_task_ids(list(deliveries))
        for task_id, message in deliveries.items():
            name = message.headers["task"]
            if task_id not in known:
                # Not one of ours (we publish only committed rows): read it all.
                problem = body_problem(message)
                if problem is None and known_task is not None and not known_task(name):
                    problem = f"unknown task {name!r}"
                if problem is not None:
                    self.record_bad_message(message, problem, worker)
                    continue
                logger.warning(
                    "Dropped a message for task %s[%s]: it has no row (forgotten or purged)",
                    name,
                    task_id,
                )
            else:
                logger.debug("Dropped a message for task %s: it is not waiting", task_id)
            self._quietly(message.ack)

    def acknowledge(self, claimed: list[ClaimedTask]) -> None:
        messages = [task.delivery for task in claimed if task.delivery is not None]
        for task in claimed:
            task.delivery = None
        try:
            if acknowledge_together(messages):
                return
        except Exception as exc:  # each is tried on its own below
            logger.debug("Could not acknowledge %d messages at once: %s", len(messages), exc)
        for message in messages:
            self._quietly(message.ack)

    def release(self, lease_token: str, claimed: list[ClaimedTask]) -> int:
        """Give back unstarted tasks: unacknowledged messages go back to the broker; tasks
        whose message was already acknowledged wait for the relay to publish them again."""
        requeued = [c for c in claimed if c.delivery is not None]
        acked = [c for c in claimed if c.delivery is None]
        returned = store.give_back(lease_token, [c.pk for c in acked], republish=True)
        returned += store.give_back(lease_token, [c.pk for c in requeued], republish=False)
        for task in requeued:
            self._quietly(task.delivery.requeue)
            task.delivery = None
        return returned

    def record_bad_message(self, message: Message, reason: str, worker: str) -> None:
        """Log a message no worker can run, record ``FAILURE`` if its id is readable, ack it."""
        try:
            headers = message.headers if isinstance(message.headers, dict) else {}
            raw_id = headers.get("id")
            task_id = storable_text(raw_id)[:255] if isinstance(raw_id, str) and raw_id else None
            name = headers.get("task")
            name = storable_text(name) if isinstance(name, str) else None
            reason = storable_text(reason)
            logger.error("Rejected a message (task id %r): %s", task_id or "unreadable", reason)
            queue = storable_text(str((message.delivery_info or {}).get("routing_key") or ""))
            store.record_bad_message(task_id, name, queue, reason, worker)
        except Exception:
            # Recording is best effort; the message goes either way, or it would come back.
            logger.exception("Could not record a rejected message; dropping it")
        self._quietly(message.ack)

    # -- waiting ------------------------------------------------------------------------------

    def seconds_until_due(self, queues: list[str], cap: float) -> float:
        return 0.0 if self._inbox else cap

    def wait_for_tasks(self, queues: list[str], timeout: float) -> None:
        if timeout > 0 and not self._inbox:
            self._drain(queues, 1, timeout)


__all__ = ["BrokerTransport", "producer_pool"]
