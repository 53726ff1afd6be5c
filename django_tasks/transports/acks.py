"""Acknowledging a batch of delivered messages at once, where the broker allows it.

kombu acknowledges one message at a time. On Redis each acknowledgement is a transaction of
its own (``ZREM`` and ``HDEL`` on the unacknowledged index and hash, through a new client),
which cost a worker loop about as much CPU as running a no-op task. This module settles a
batch of Redis messages in one transaction, doing exactly what kombu's per-message
acknowledgement does for each. Anything else (AMQP, other transports, a kombu without the
pieces this relies on) is left for the caller to acknowledge one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

from kombu.message import Message

kombu_redis: ModuleType | None
try:
    from kombu.transport import redis as kombu_redis
except ImportError:  # kombu's Redis transport needs the redis package
    kombu_redis = None


def acknowledge_together(messages: Sequence[Message]) -> bool:
    """Acknowledge ``messages`` (all received on one channel, none settled yet) in one
    round trip; False, with nothing done, when that cannot be done for them."""
    if len(messages) < 2 or kombu_redis is None:
        return False
    channel = messages[0].channel
    qos = getattr(channel, "qos", None)
    if (
        not isinstance(qos, kombu_redis.QoS)
        or not hasattr(qos, "_remove_from_indices")
        or channel.no_ack_consumers
        or any(m.channel is not channel or m.acknowledged for m in messages)
    ):
        return False
    with qos.pipe_or_acquire() as pipe:
        for message in messages:
            qos._remove_from_indices(message.delivery_tag, pipe)
        pipe.execute()
    # What kombu's Redis QoS.ack does after its transaction, and Message.ack after that.
    for message in messages:
        super(kombu_redis.QoS, qos).ack(message.delivery_tag)
        message._state = "ACK"
    return True
