"""The admin: a read-only result browser with re-run, revoke, purge and a queue overview."""

from .results import TaskResultAdmin, TaskStateChangeInline

__all__ = ["TaskResultAdmin", "TaskStateChangeInline"]
