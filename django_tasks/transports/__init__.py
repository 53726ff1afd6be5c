"""Transports: how a task travels from ``apply_async`` to a worker.

``django://`` (the default) is the Django database transport; ``amqp://``, ``redis://`` and
kombu's other URLs are broker transports, with results still in the database.
"""

from __future__ import annotations

import os
import threading
from urllib.parse import urlsplit

from ..conf import tasks_settings
from .base import OutgoingTask, Publishing, Transport

__all__ = ["OutgoingTask", "Publishing", "Transport", "get_transport", "transport_class_for"]

_local = threading.local()


def transport_class_for(url: str) -> type[Transport]:
    """The transport class serving ``url``; ``ValueError`` naming the scheme otherwise."""
    scheme = urlsplit(url).scheme
    if scheme == "django":
        from .database import DatabaseTransport

        return DatabaseTransport
    from kombu.transport import TRANSPORT_ALIASES

    if scheme in TRANSPORT_ALIASES or scheme in ("amqps", "rediss", "sentinel"):
        from .broker import BrokerTransport

        return BrokerTransport
    raise ValueError(
        f"BROKER_URL scheme {scheme!r} is unknown; use 'django://' or a kombu URL "
        f"such as 'amqp://' or 'redis://'"
    )


def _forget_inherited_transport() -> None:
    """In a forked child, drop (without closing) the parent's broker connections: closing
    them here would close the parent's sessions too."""
    transport = getattr(_local, "transport", None)
    if transport is not None:
        _inherited.append(transport)
        _local.transport = None


_inherited: list[Transport] = []
os.register_at_fork(after_in_child=_forget_inherited_transport)


def get_transport() -> Transport:
    """The transport for ``BROKER_URL``, one per thread.

    A transport's consuming connection is its thread's; broker sends borrow from a pool
    shared by the process's threads (:func:`~django_tasks.transports.pools.producer_pool`).
    """
    url = tasks_settings.BROKER_URL
    transport = getattr(_local, "transport", None)
    if transport is None or transport.url != url:
        transport = transport_class_for(url)(url)
        _local.transport = transport
    return transport
