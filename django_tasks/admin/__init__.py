"""The admin: a read-only result browser with re-run, revoke, purge and a queue overview, and
the periodic task entries with "run now"."""

from .results import TaskResultAdmin, TaskStateChangeInline
from .schedules import PeriodicTaskAdmin

__all__ = ["PeriodicTaskAdmin", "TaskResultAdmin", "TaskStateChangeInline"]
