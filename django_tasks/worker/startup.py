"""What ``runworker`` checks before it starts: that it can reach its database and broker
(waiting for them with one log line per attempt), and that the database is migrated."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.apps import apps
from django.db import DatabaseError, connection

from ..transports import Transport

logger = logging.getLogger("django_tasks.worker")

#: Seconds between connection attempts at start-up: 2, 4, 6, … up to 30, as kombu's
#: ``ensure_connection`` (and Celery) wait for a broker.
RETRY_INTERVALS = (2.0, 2.0, 30.0)


class StartupError(Exception):
    """The worker cannot start; the message says why in one line."""


def database_label() -> str:
    """Which database the task rows live in: vendor, user, host, port and name; no password."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite {settings['NAME']}"
    user = f"{settings['USER']}@" if settings.get("USER") else ""
    port = f":{settings['PORT']}" if settings.get("PORT") else ""
    return (
        f"{connection.vendor} {user}{settings.get('HOST') or 'localhost'}{port}/{settings['NAME']}"
    )


def _delays() -> Callable[[], float]:
    start, step, most = RETRY_INTERVALS
    attempts = 0

    def next_delay() -> float:
        nonlocal attempts
        attempts += 1
        return min(start + step * (attempts - 1), most)

    return next_delay


def wait_for_database(sleep: Callable[[float], None] = time.sleep) -> None:
    """Connect to the database, trying again (one warning per attempt) until it answers."""
    next_delay = _delays()
    while True:
        try:
            connection.ensure_connection()
            return
        except DatabaseError as exc:
            delay = next_delay()
            reason = " ".join(str(exc).split()) or type(exc).__name__
            logger.warning(
                "Cannot connect to the database (%s): %s; trying again in %g s",
                database_label(),
                reason,
                delay,
            )
            connection.close()
            sleep(delay)


def check_migrated() -> None:
    """StartupError unless every django_tasks table exists."""
    tables = set(connection.introspection.table_names())
    missing = [
        model._meta.db_table
        for model in apps.get_app_config("django_tasks").get_models()
        if model._meta.db_table not in tables
    ]
    if missing:
        raise StartupError(
            f"The database ({database_label()}) has no table {', '.join(missing)}: "
            f"run `manage.py migrate` first"
        )


def wait_for_broker(transport: Transport) -> None:
    """Connect to the transport's broker, if it has one, trying again (one warning per
    attempt) until it answers."""
    uri = transport.broker_uri()
    if uri is None:
        return

    def errback(exc: BaseException, interval: float) -> None:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        logger.warning("Cannot connect to %s: %s; trying again in %g s", uri, reason, interval)

    transport.wait_until_reachable(errback, RETRY_INTERVALS)


def wait_until_ready(transport: Transport) -> None:
    """Reach the database, check its tables, then reach the broker (StartupError if the
    worker cannot start)."""
    wait_for_database()
    check_migrated()
    wait_for_broker(transport)
