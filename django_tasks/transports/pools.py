"""kombu producer pools, one per broker and process, shared by the process's threads."""

from __future__ import annotations

import os
import threading
from typing import Any

from kombu import Connection
from kombu.pools import ProducerPool
from kombu.utils.collections import eqhash

from ..conf import tasks_settings

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
