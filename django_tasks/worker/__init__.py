"""The worker: a supervisor (:mod:`.supervisor`) around a pool (:mod:`.pool`) of consumer
loops (:mod:`.consumer`), each running tasks through :mod:`.execution`."""

from .supervisor import Worker

__all__ = ["Worker"]
