"""django_tasks: Celery's calling and result API for Django, without running Celery.

Public names only; importing this module does no work.
"""

from . import states
from .canvas import chain, chord, group
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
    "group",
    "signature",
    "states",
    "task",
]
__version__ = "0.1.0"
