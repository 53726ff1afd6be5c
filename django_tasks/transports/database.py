"""The Django database transport (``django://``): the task row is the queue entry.

* Sending is one ``INSERT`` (on PostgreSQL a trigger adds a ``NOTIFY`` to it).
* Claiming leases a batch of due rows in one statement: ``UPDATE … WHERE id IN (SELECT …
  FOR UPDATE SKIP LOCKED) RETURNING …`` on PostgreSQL, the same without row locks on SQLite
  (one statement is one short write transaction there), and ``SELECT … FOR UPDATE SKIP
  LOCKED`` then ``UPDATE`` in a transaction on MySQL/MariaDB.
* A lease is a token and an expiry; workers renew theirs, and any worker recovers the ones
  that ran out: ``acks_late`` tasks are queued again, others fail with ``WorkerLostError``.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, InterfaceError, connection, transaction
from django.db import OperationalError as DjangoOperationalError
from django.db.models import Q
from django.utils import timezone
from kombu.exceptions import OperationalError

from .. import states
from ..conf import tasks_settings
from ..messages import exception_to_dict
from ..models import CLAIMABLE_STATES, TaskResult
from ..sql import finish_value, insert_statement, row_converter
from .base import ClaimedTask, Transport

logger = logging.getLogger("django_tasks.transport")

#: PostgreSQL channel a trigger notifies (payload: the queue) when a task row is inserted.
TASKS_CHANNEL = "django_tasks_enqueued"
#: PostgreSQL channel a trigger notifies (payload: the task id) when a task's state changes.
STATES_CHANNEL = "django_tasks_state"

CLAIM_COLUMNS = (
    "id",
    "task_id",
    "task_name",
    "state",
    "args",
    "kwargs",
    "body",
    "content_type",
    "options",
    "retries",
    "queue",
    "priority",
    "run_after",
    "expires",
    "revoked",
    "owner_id",
)
CONNECTION_ERRORS = (DjangoOperationalError, InterfaceError)


def publish_delays(policy: dict[str, Any]):
    """Sleeps between publish attempts: start, start+step, ... capped at ``interval_max``."""
    max_retries = policy["max_retries"]
    attempt = 0
    while max_retries is None or attempt < max_retries:
        yield min(
            policy["interval_start"] + attempt * policy["interval_step"], policy["interval_max"]
        )
        attempt += 1


@dataclass(frozen=True, slots=True)
class _Claim:
    """What one claim asks for: due tasks of ``queues``, or (broker transports) of ``task_ids``."""

    queues: list[str]
    limit: int
    now: dt.datetime
    token: str
    lease_expires: dt.datetime
    worker: str
    task_ids: list[str] | None = None


class DatabaseTransport(Transport):
    """Tasks as rows of :class:`~django_tasks.models.TaskResult` in the default database."""

    scheme = "django"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._listener: Any = None

    @property
    def vendor(self) -> str:
        return connection.vendor

    @property
    def wakes_without_polling(self) -> bool:  # type: ignore[override]
        # LISTEN/NOTIFY goes through psycopg 3; with psycopg2, workers poll.
        return self.vendor == "postgresql" and connection.Database.__name__ == "psycopg"

    def describe(self) -> str:
        settings = connection.settings_dict
        where = settings.get("HOST") or ""
        return f"django:// ({connection.vendor}, {where + '/' if where else ''}{settings['NAME']})"

    # -- sending ------------------------------------------------------------------------------

    def send(self, outgoing: Any, *, retry: bool, retry_policy: dict[str, Any]) -> None:
        # The row is the message: nothing is left for a relay to publish.
        self.insert_row(outgoing, dispatched=True, retry=retry, retry_policy=retry_policy)

    def insert_row(
        self, outgoing: Any, *, dispatched: bool, retry: bool, retry_policy: dict[str, Any]
    ) -> None:
        """Store ``outgoing`` as a ``PENDING`` row in one ``INSERT``, retrying per the policy
        when the database is unreachable (``OperationalError`` naming the task when it stays so).
        """
        encoded = outgoing.encoded
        values = {
            "task_id": outgoing.task_id,
            "task_name": outgoing.task_name,
            "state": states.PENDING,
            "queue": outgoing.queue,
            "priority": outgoing.priority,
            "args": encoded.args,
            "kwargs": encoded.kwargs,
            "body": encoded.body,
            "content_type": encoded.content_type,
            "options": outgoing.options,
            "retries": 0,
            "worker": "",
            "owner": outgoing.owner_id,
            "date_created": outgoing.created,
            "run_after": outgoing.run_after,
            "expires": outgoing.expires,
            "revoked": False,
            "dispatched": dispatched,
        }
        sql, fields = insert_statement()
        params = [field.get_db_prep_save(values[field.name], connection) for field in fields]
        delays = publish_delays(retry_policy) if retry else iter(())
        while True:
            try:
                with connection.cursor() as cursor:
                    cursor.execute(sql, params)
                return
            except IntegrityError as exc:
                if "task_id" in str(exc):  # the unique constraint, named on every backend
                    raise ValueError(
                        f"task_id {outgoing.task_id!r} is already used by another task"
                    ) from exc
                raise
            except CONNECTION_ERRORS as exc:
                # Inside the caller's transaction a lost connection cannot be retried.
                delay = None if connection.in_atomic_block else next(delays, None)
                if delay is None:
                    raise OperationalError(
                        f"Could not send task {outgoing.task_name!r}: the "
                        f"database is unreachable: {exc}"
                    ) from exc
                logger.warning(
                    "Sending %s failed (%s); retrying in %.2fs", outgoing.task_name, exc, delay
                )
                connection.close()
                time.sleep(delay)

    # -- claiming -----------------------------------------------------------------------------

    def claim(
        self, queues: list[str], limit: int, *, lease_token: str, lease_seconds: float, worker: str
    ) -> list[ClaimedTask]:
        now = timezone.now()
        request = _Claim(
            queues, limit, now, lease_token, now + dt.timedelta(seconds=lease_seconds), worker
        )
        return self._claim(request)

    def claim_task_ids(
        self, task_ids: list[str], *, lease_token: str, lease_seconds: float, worker: str
    ) -> list[ClaimedTask]:
        """Lease those of ``task_ids`` that are due and free (a broker delivered them)."""
        now = timezone.now()
        request = _Claim(
            [],
            len(task_ids),
            now,
            lease_token,
            now + dt.timedelta(seconds=lease_seconds),
            worker,
            task_ids=task_ids,
        )
        return self._claim(request)

    def _claim(self, request: _Claim) -> list[ClaimedTask]:
        if self.vendor in ("postgresql", "sqlite"):
            claimed = self._claim_returning(request)
        else:
            claimed = [self._to_claimed(row) for row in self._claim_select_then_update(request)]
        claimed.sort(key=lambda c: (-c.priority, c.run_after, c.pk))
        return claimed

    def _claim_returning(self, c: _Claim) -> list[ClaimedTask]:
        """One ``UPDATE … WHERE id IN (SELECT … [FOR UPDATE SKIP LOCKED]) RETURNING``."""
        table = connection.ops.quote_name(TaskResult._meta.db_table)
        adapt = connection.ops.adapt_datetimefield_value
        if c.task_ids is None:
            column, values, order = "queue", c.queues, "priority DESC, run_after, id"
            lock = " FOR UPDATE SKIP LOCKED"
        else:
            # Rows a broker delivered: wait for a lock held by the relay that is publishing
            # them (skipping would drop the delivery); lock in id order, so claimers of
            # duplicate deliveries cannot deadlock.
            column, values, order = "task_id", c.task_ids, "id"
            lock = " FOR UPDATE"
        if self.vendor != "postgresql":
            lock = ""
        marks = ", ".join(["%s"] * len(values))
        sql = (
            f"UPDATE {table} SET lease_token = %s, lease_expires = %s, worker = %s, "
            f"date_started = %s WHERE id IN (SELECT id FROM {table} "
            f"WHERE state IN (%s, %s) AND lease_token IS NULL AND {column} IN ({marks}) "
            f"AND run_after <= %s ORDER BY {order} LIMIT %s{lock}) "
            f"RETURNING {', '.join(CLAIM_COLUMNS)}"
        )
        params = [
            c.token,
            adapt(c.lease_expires),
            c.worker,
            adapt(c.now),
            *CLAIMABLE_STATES,
            *values,
            adapt(c.now),
            c.limit,
        ]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        convert = row_converter(CLAIM_COLUMNS)
        return [ClaimedTask(*convert(row)) for row in rows]

    def _claim_select_then_update(self, c: _Claim) -> list[TaskResult]:
        """MySQL/MariaDB (no UPDATE … RETURNING): lock the rows, then lease them."""
        skip_locked = connection.features.has_select_for_update_skip_locked
        with transaction.atomic():
            if c.task_ids is None:
                waiting = TaskResult.objects.claimable(c.queues, c.now)
            else:
                skip_locked = False  # as on PostgreSQL: wait for the relay, in id order
                waiting = TaskResult.objects.filter(
                    task_id__in=c.task_ids,
                    state__in=CLAIMABLE_STATES,
                    lease_token__isnull=True,
                    run_after__lte=c.now,
                ).order_by("id")
            rows = list(
                waiting.select_for_update(skip_locked=skip_locked).only(
                    *[col for col in CLAIM_COLUMNS if col != "owner_id"], "owner"
                )[: c.limit]
            )
            if rows:
                TaskResult.objects.filter(pk__in=[r.pk for r in rows]).update(
                    lease_token=c.token,
                    lease_expires=c.lease_expires,
                    worker=c.worker,
                    date_started=c.now,
                )
        return rows

    @staticmethod
    def _to_claimed(row: TaskResult) -> ClaimedTask:
        return ClaimedTask(*(finish_value(c, getattr(row, c)) for c in CLAIM_COLUMNS))

    # -- leases -------------------------------------------------------------------------------

    def renew(self, lease_tokens: list[str], lease_seconds: float) -> int:
        if not lease_tokens:
            return 0
        until = timezone.now() + dt.timedelta(seconds=lease_seconds)
        return TaskResult.objects.filter(lease_token__in=lease_tokens).update(lease_expires=until)

    def release(self, lease_token: str, pks: list[int]) -> int:
        if not pks:
            return 0
        return TaskResult.objects.filter(pk__in=pks, lease_token=lease_token).give_back(
            republish=False
        )

    def recover_expired_leases(self, lease_tokens: list[str] | None = None) -> int:
        """Recover tasks whose lease ran out, or (``lease_tokens``) whose holders are gone."""
        from ..registry import tasks_registry
        from ..results import StateChange, record_states

        now = timezone.now()
        if lease_tokens is None:
            guard = Q(lease_expires__lt=now)
            rows = TaskResult.objects.leased_until_before(now)
        else:
            guard = Q(lease_token__in=lease_tokens)
            rows = TaskResult.objects.filter(guard)
        recovered = 0
        for pk, task_name, token, worker in rows.values_list(
            "pk", "task_name", "lease_token", "worker"
        ):
            task = tasks_registry.get(task_name)
            acks_late = (
                task.resolved_acks_late if task is not None else tasks_settings.TASK_ACKS_LATE
            )
            if acks_late:
                change = StateChange(
                    pk,
                    states.PENDING,
                    {"date_started": None, "worker": "", "dispatched": False},
                    detail=f"worker {worker} lost; queued again (acks_late)",
                )
            else:
                from ..exceptions import WorkerLostError

                exc = WorkerLostError(
                    f"Worker {worker} exited before recording the outcome of the task"
                )
                change = StateChange(
                    pk,
                    states.FAILURE,
                    {"result": exception_to_dict(exc), "traceback": None, "date_done": now},
                    detail=f"worker {worker} lost",
                )
            recovered += record_states([change], lease_token=token, guard=guard)
            logger.warning("Recovered task %s from lost worker %s: %s", pk, worker, change.state)
        return recovered

    def revoke_expired(self, limit: int = 1000) -> int:
        """Expire waiting tasks nobody claimed (e.g. in a queue no worker reads)."""
        from ..results import record_states, revoked_change

        now = timezone.now()
        waiting = Q(state__in=CLAIMABLE_STATES, lease_token__isnull=True, expires__lt=now)
        pks = list(TaskResult.objects.filter(waiting).values_list("pk", flat=True)[:limit])
        if not pks:
            return 0
        return record_states([revoked_change(pk, "expired", now) for pk in pks], guard=waiting)

    # -- waiting ------------------------------------------------------------------------------

    def seconds_until_due(self, queues: list[str], cap: float) -> float:
        now = timezone.now()
        next_due = (
            TaskResult.objects.filter(
                state__in=CLAIMABLE_STATES,
                lease_token__isnull=True,
                queue__in=queues,
                run_after__lte=now + dt.timedelta(seconds=cap),
            )
            .order_by("run_after")
            .values_list("run_after", flat=True)
            .first()
        )
        if next_due is None:
            return cap
        return max(0.0, min(cap, (next_due - now).total_seconds()))

    def wait_for_tasks(self, queues: list[str], timeout: float) -> None:
        if timeout <= 0:
            return
        if not self.wakes_without_polling:
            time.sleep(timeout)
            return
        wanted = set(queues)
        deadline = time.monotonic() + timeout
        try:
            listener = self._listen_connection()
            while (remaining := deadline - time.monotonic()) > 0:
                for notify in listener.notifies(timeout=remaining, stop_after=1):
                    if notify.payload in wanted:
                        return
        except Exception as exc:  # psycopg's own errors: the LISTEN connection is not Django's
            logger.warning("LISTEN connection failed (%s); polling until it is back", exc)
            self.close()
            time.sleep(max(0.0, min(deadline - time.monotonic(), self.poll_interval)))

    def _listen_connection(self) -> Any:
        if self._listener is None or self._listener.closed:
            self._listener = open_listen_connection(TASKS_CHANNEL)
        return self._listener

    def close(self) -> None:
        if self._listener is not None:
            try:
                self._listener.close()
            finally:
                self._listener = None


def open_listen_connection(channel: str) -> Any:
    """A separate autocommit psycopg connection listening on ``channel``."""
    import psycopg

    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params.pop("server_side_binding", None)
    conn = psycopg.connect(**params, autocommit=True)
    conn.execute(f"LISTEN {channel}")
    return conn


__all__ = ["STATES_CHANNEL", "TASKS_CHANNEL", "DatabaseTransport", "open_listen_connection"]
