"""django_tasks: Celery's calling and result API for Django, without running Celery.

Public names only; importing this module does no work.
"""

from . import states
from .result import AsyncResult, EagerResult
from .signature import Signature, signature
from .task import Task, task

__all__ = ["AsyncResult", "EagerResult", "Signature", "Task", "signature", "states", "task"]
__version__ = "0.1.0"
