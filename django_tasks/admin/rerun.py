"""The admin's re-run action: send a finished task again, as it was sent."""

from __future__ import annotations

from typing import Any

from .. import store
from ..conf import tasks_settings
from ..messages import accepted_content_types, decode_arguments
from ..models import TaskResult
from ..registry import tasks_registry
from ..result import AsyncResult


def rerun(original: TaskResult) -> AsyncResult:
    """Send a new task with ``original``'s name, arguments, queue, priority and owner.

    The new row records ``rerun_of = original``. Returns its ``AsyncResult``; raises
    :class:`~django_tasks.exceptions.NotRegistered` for a task this process does not know,
    and ``DecodeError``/``ContentDisallowed`` for arguments it cannot decode.
    """
    task = tasks_registry.get_task(original.task_name)
    options = original.options or {}
    args, kwargs = decode_arguments(
        original.args,
        original.kwargs,
        original.body,
        original.content_type,
        options.get("compression"),
        accepted_content_types(list(tasks_settings.ACCEPT_CONTENT)),
    )
    call: dict[str, Any] = {"queue": original.queue, "priority": original.priority}
    if original.owner_id is not None:
        call["owner"] = original.owner_id
    for option in ("headers", "link", "link_error", "ignore_result"):
        if options.get(option):
            call[option] = options[option]
    result = task.apply_async(args, kwargs, **call)
    # Sending stays one INSERT; the link is a second, separate write.
    store.link_rerun(result.id, original.pk)
    return result
