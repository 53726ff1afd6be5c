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
import contextlib
import logging
import os
import threading
import time
from typing import Any

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from kombu import Connection, Exchange, Queue
from kombu import Consumer as KombuConsumer
from kombu.exceptions import OperationalError
from kombu.message import Message
from kombu.pools import ProducerPool
from kombu.utils.collections import eqhash

from .. import states
from ..conf import tasks_settings
from ..messages import JSON_CONTENT_TYPE, accepted_content_types, compression_content_type
from ..models import CLAIMABLE_STATES, TaskResult
from .base import ClaimedTask
from .database import CLAIM_COLUMNS, DatabaseTransport

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
#: What a message is built from: the claimed columns, less those only the worker needs.
RELAY_COLUMNS = tuple(
    c for c in CLAIM_COLUMNS if c not in ("state", "run_after", "revoked", "owner_id")
)


#: Producer pools, one per broker (connection URL and options), shared by the threads of a
#: process. Sends borrow a producer and its connection, and give them back after publishing.
_producer_pools: dict[Any, ProducerPool] = {}
_pools_lock = threading.Lock()
#: Pools a forked child inherited: kept, unused, so that their sockets, which the parent
#: still uses, are never closed or garbage-collected by the child.
_inherited_pools: list[Any] = []


def producer_pool(broker: Connection) -> ProducerPool:
    """The process's producer pool for ``broker``, at most ``BROKER_POOL_LIMIT`` connections."""
    key = eqhash(broker)  # kombu's identity of a broker: transport, host, user, options…
    with _pools_lock:
        pool = _producer_pools.get(key)
        if pool is None:
            limit = int(tasks_settings.BROKER_POOL_LIMIT)
            pool = _producer_pools[key] = ProducerPool(broker.Pool(limit=limit), limit=limit)
        return pool


def _forget_inherited_pools() -> None:
    global _pools_lock
    _inherited_pools.extend(_producer_pools.values())
    _producer_pools.clear()
    _pools_lock = threading.Lock()  # another thread may have held it at the fork


# kombu forgets its own pools only in ``multiprocessing`` children; the prefork pool uses fork.
os.register_at_fork(after_in_child=_forget_inherited_pools)


class BadMessage(Exception):
    """A message this worker cannot run; its text says why."""


class BrokerTransport(DatabaseTransport):
    """Tasks sent as kombu messages, recorded as :class:`~django_tasks.models.TaskResult` rows."""

    scheme = "kombu"
    #: The broker pushes messages to waiting workers.
    wakes_without_polling = True  # type: ignore[assignment]

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._broker: Connection | None = None  # never connected: it names the producer pool
        self._receiver: Connection | None = None
        self._consumer: KombuConsumer | None = None
        self._listening: tuple[str, ...] = ()
        self._inbox: collections.deque[Message] = collections.deque()

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
        return self.broker.transport.driver_type == "amqp"

    def kombu_queue(self, name: str) -> Queue:
        """The broker queue (and its direct exchange) for a task queue name."""
        exchange = Exchange(name, type="direct", durable=True)
        max_priority = MAX_PRIORITY if self.is_amqp else None
        return Queue(name, exchange, routing_key=name, durable=True, max_priority=max_priority)

    def describe(self) -> str:
        return f"{self.broker.as_uri()} (results: {super().describe()})"

    def close(self) -> None:
        super().close()
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

    def send(self, outgoing: Any, *, retry: bool, retry_policy: dict[str, Any]) -> None:
        if connection.in_atomic_block:
            # A worker must not get the message before the row is visible to it.
            self.send_on_commit(outgoing, retry=retry, retry_policy=retry_policy)
            return
        if outgoing.run_after > outgoing.created:
            # countdown/eta: the row waits in the database; the relay publishes it when due.
            self.insert_row(outgoing, dispatched=False, retry=retry, retry_policy=retry_policy)
            return
        self.insert_row(outgoing, dispatched=True, retry=retry, retry_policy=retry_policy)
        try:
            self.publish(message_from_outgoing(outgoing), retry=retry, retry_policy=retry_policy)
        except BaseException:
            # Nothing half-sent: no row without a message.
            TaskResult.objects.filter(task_id=outgoing.task_id, state=states.PENDING).delete()
            raise

    def send_on_commit(self, outgoing: Any, *, retry: bool, retry_policy: dict[str, Any]) -> None:
        """The outbox: the row is written now, in the transaction; the relay publishes it if
        the publish after the commit never happens."""
        self.insert_row(outgoing, dispatched=False, retry=retry, retry_policy=retry_policy)
        if outgoing.run_after > outgoing.created:
            return  # the relay publishes it when due

        def publish_after_commit() -> None:
            try:
                self.publish(
                    message_from_outgoing(outgoing), retry=retry, retry_policy=retry_policy
                )
            except OperationalError as exc:
                logger.warning(
                    "Publishing %s[%s] after commit failed (%s); the relay will publish it",
                    outgoing.task_name,
                    outgoing.task_id,
                    exc,
                )
                return
            TaskResult.objects.filter(task_id=outgoing.task_id, dispatched=False).update(
                dispatched=True
            )

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
        now = timezone.now()
        waiting = TaskResult.objects.filter(
            state__in=CLAIMABLE_STATES, lease_token__isnull=True, dispatched=False
        )
        skip_locked = connection.features.has_select_for_update_skip_locked
        # Row locks keep two relays apart; SQLite has none, and a read transaction there
        # could not be upgraded to write once a worker has written.
        locking = connection.vendor != "sqlite"
        with transaction.atomic() if locking else contextlib.nullcontext():
            rows = list(
                waiting.filter(run_after__lte=now)
                .select_for_update(skip_locked=skip_locked)
                .order_by("run_after", "id")
                .values_list(*RELAY_COLUMNS)[:RELAY_BATCH]
            )
            for row in rows:
                values = dict(zip(RELAY_COLUMNS, row, strict=True))
                self.publish(
                    message_from_row(values),
                    retry=True,
                    retry_policy=tasks_settings.TASK_PUBLISH_RETRY_POLICY,
                )
            if rows:
                TaskResult.objects.filter(pk__in=[r[0] for r in rows]).update(dispatched=True)
        if rows:
            logger.info("Relay published %d due task(s)", len(rows))
        if len(rows) == RELAY_BATCH:
            return 0.0
        next_due = waiting.order_by("run_after").values_list("run_after", flat=True).first()
        if next_due is None:
            return None
        return max((next_due - timezone.now()).total_seconds(), 0.0)

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
            wait = timeout
            while len(self._inbox) < limit:
                try:
                    receiver.drain_events(timeout=wait)
                except TimeoutError:
                    return
                wait = gap
        except (OperationalError, *self._connection_errors()) as exc:
            logger.warning("Broker connection lost (%s); reconnecting", exc)
            self._close_receiver()
            time.sleep(min(max(timeout, 0.1), 1.0))

    def _connection_errors(self) -> tuple[type[BaseException], ...]:
        conn = self._receiver or self.broker
        return (*conn.recoverable_connection_errors, *conn.recoverable_channel_errors, OSError)

    def claim(
        self, queues: list[str], limit: int, *, lease_token: str, lease_seconds: float, worker: str
    ) -> list[ClaimedTask]:
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
            except BadMessage as exc:
                self.record_bad_message(message, str(exc), worker)
                continue
            if task_id in deliveries:
                self._quietly(message.ack)  # the same task twice in one batch
            else:
                deliveries[task_id] = message
        if not deliveries:
            return []
        claimed = self.claim_task_ids(
            list(deliveries), lease_token=lease_token, lease_seconds=lease_seconds, worker=worker
        )
        from ..registry import tasks_registry

        held = {c.task_id for c in claimed}
        unheld = [task_id for task_id in deliveries if task_id not in held]
        if unheld:
            self._drop_unheld({task_id: deliveries[task_id] for task_id in unheld}, worker)
        for task in claimed:
            message = deliveries[task.task_id]
            registered = tasks_registry.get(task.task_name)
            acks_late = (
                registered.resolved_acks_late
                if registered is not None
                else tasks_settings.TASK_ACKS_LATE
            )
            if acks_late:
                task.delivery = message  # acknowledged once its outcome is recorded
            else:
                # Before running. (If this ack is lost, a redelivery finds the task leased.)
                self._quietly(message.ack)
        return claimed  # best first, as claimed

    def _drop_unheld(self, deliveries: dict[str, Message], worker: str) -> None:
        """Messages whose task is not waiting: run, running, revoked or not yet due (another
        message delivered it, or will), or without a row at all."""
        from ..registry import tasks_registry

        known = set(
            TaskResult.objects.filter(task_id__in=list(deliveries)).values_list(
                "task_id", flat=True
            )
        )
        for task_id, message in deliveries.items():
            name = message.headers["task"]
            if task_id not in known:
                # Not one of ours (we publish only committed rows): read it all.
                problem = body_problem(message)
                if problem is None and name not in tasks_registry:
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

    def settle(self, claimed: list[ClaimedTask]) -> None:
        for task in claimed:
            if task.delivery is not None:
                self._quietly(task.delivery.ack)
                task.delivery = None

    def release_claimed(self, lease_token: str, claimed: list[ClaimedTask]) -> int:
        """Give back unstarted tasks: unacknowledged messages go back to the broker; tasks
        whose message was already acknowledged wait for the relay to publish them again."""
        if not claimed:
            return 0
        requeued = [c for c in claimed if c.delivery is not None]
        acked = [c for c in claimed if c.delivery is None]
        returned = 0
        if acked:
            returned += TaskResult.objects.filter(
                pk__in=[c.pk for c in acked], lease_token=lease_token
            ).give_back(republish=True)
        if requeued:
            returned += self.release(lease_token, [c.pk for c in requeued])
            for task in requeued:
                self._quietly(task.delivery.requeue)
                task.delivery = None
        return returned

    def record_bad_message(self, message: Message, reason: str, worker: str) -> None:
        """Log a message no worker can run, record ``FAILURE`` if its id is readable, ack it."""
        from ..exceptions import TaskError
        from ..messages import exception_to_dict
        from ..results import StateChange, record_states

        headers = message.headers or {}
        task_id = headers.get("id") if isinstance(headers.get("id"), str) else None
        logger.error("Rejected a message (task id %s): %s", task_id or "unreadable", reason)
        if task_id:
            exc = TaskError(f"Bad message: {reason}")
            now = timezone.now()
            fields = {"result": exception_to_dict(exc), "traceback": None, "date_done": now}
            row = TaskResult.objects.filter(task_id=task_id).values_list("pk", "state").first()
            if row is None:
                name = headers.get("task")
                TaskResult.objects.create(
                    task_id=task_id[:255],
                    task_name=name[:255] if isinstance(name, str) and name else "(unknown)",
                    state=states.FAILURE,
                    queue=(message.delivery_info or {}).get("routing_key") or "",
                    date_created=now,
                    run_after=now,
                    worker=worker,
                    dispatched=True,
                    **fields,
                )
            elif row[1] in CLAIMABLE_STATES:
                record_states(
                    [StateChange(row[0], states.FAILURE, fields, detail=f"bad message: {reason}")],
                    worker=worker,
                    guard=Q(pk=row[0], state__in=CLAIMABLE_STATES, lease_token__isnull=True),
                )
        self._quietly(message.ack)

    # -- waiting ------------------------------------------------------------------------------

    def seconds_until_due(self, queues: list[str], cap: float) -> float:
        return 0.0 if self._inbox else cap

    def wait_for_tasks(self, queues: list[str], timeout: float) -> None:
        if timeout > 0 and not self._inbox:
            self._drain(queues, 1, timeout)

    def has_due_rows(self, queues: list[str]) -> bool:
        """Whether the database holds due, unleased tasks of ``queues`` (burst mode's end)."""
        return TaskResult.objects.claimable(queues, timezone.now()).exists()


# -- the message envelope ---------------------------------------------------------------------


def policy_for_kombu(policy: dict[str, Any]) -> dict[str, Any]:
    """``retry_policy`` as keyword arguments of kombu's ``ensure`` and ``ensure_connection``."""
    return {
        "max_retries": policy["max_retries"],
        "interval_start": policy["interval_start"],
        "interval_step": policy["interval_step"],
        "interval_max": policy["interval_max"],
    }


def _envelope(
    *,
    task_id: str,
    task_name: str,
    queue: str,
    priority: int,
    args: Any,
    kwargs: Any,
    body: bytes | None,
    content_type: str,
    options: dict[str, Any] | None,
    retries: int,
    expires: Any,
) -> dict[str, Any]:
    from kombu.utils import json as kombu_json

    headers: dict[str, Any] = {"id": task_id, "task": task_name, "retries": retries}
    if body is None:
        payload = kombu_json.dumps([args or [], kwargs or {}]).encode()
        content_type, content_encoding = JSON_CONTENT_TYPE, "utf-8"
    else:
        payload, content_encoding = bytes(body), "binary"
        compression = (options or {}).get("compression")
        if compression:
            headers["compression"] = compression_content_type(compression)
    return {
        "task_name": task_name,
        "queue": queue,
        "priority": priority,
        "body": payload,
        "content_type": content_type,
        "content_encoding": content_encoding,
        "headers": headers,
        "expires": expires,
    }


def message_from_outgoing(outgoing: Any) -> dict[str, Any]:
    encoded = outgoing.encoded
    return _envelope(
        task_id=outgoing.task_id,
        task_name=outgoing.task_name,
        queue=outgoing.queue,
        priority=outgoing.priority,
        args=encoded.args,
        kwargs=encoded.kwargs,
        body=encoded.body,
        content_type=encoded.content_type,
        options=outgoing.options,
        retries=0,
        expires=outgoing.expires,
    )


def message_from_row(row: dict[str, Any]) -> dict[str, Any]:
    return _envelope(**{k: v for k, v in row.items() if k != "id"})


def check_message(message: Message, accepted: set[str]) -> str:
    """The task id of a message a worker may take; :class:`BadMessage` saying why otherwise.

    Only the headers and the content type are checked: the arguments a task runs with are its
    row's, read when it is claimed. A message without a row gets :func:`body_problem` too.
    """
    headers = message.headers
    if not isinstance(headers, dict) or not isinstance(headers.get("id"), str):
        raise BadMessage("no task id in the message headers")
    if not isinstance(headers.get("task"), str) or not headers["task"]:
        raise BadMessage("no task name in the message headers")
    if message.errors:
        raise BadMessage(f"the message cannot be read: {message.errors[0][1]}")
    if message.content_type not in accepted:
        raise BadMessage(f"content type {message.content_type!r} is not in ACCEPT_CONTENT")
    return headers["id"]


def body_problem(message: Message) -> str | None:
    """Why a message's body is not ``[args, kwargs]`` in its content type, or None."""
    try:
        decoded = message.decode()
    except Exception as exc:
        return f"the body cannot be decoded: {exc}"
    if not (
        isinstance(decoded, list | tuple)
        and len(decoded) >= 2
        and isinstance(decoded[0], list | tuple)
        and isinstance(decoded[1], dict)
    ):
        return "the body is not [args, kwargs]"
    return None


__all__ = ["BadMessage", "BrokerTransport", "body_problem", "check_message", "message_from_row"]
