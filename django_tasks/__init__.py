"""django_tasks: Celery's calling and result API for Django, without running Celery.

Public names only; importing this module does no work.
"""

from . import states
from .canvas import chain, chord, chunks, group, xmap, xstarmap
from .result import AsyncResult, EagerResult, GroupResult
from .signature import Signature, signature
from .task import Task, task

__all__ = [
    "AsyncResult",
    "EagerResult",
    "GroupResult",
    "Signature",
    "Task",
    "chain",
    "chord",
    "chunks",
    "group",
    "signature",
    "states",
    "task",
    "xmap",
    "xstarmap",
]
__version__ = "0.1.0"
