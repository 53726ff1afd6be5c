"""The kombu message a broker transport publishes for a task, and the checks a received
message must pass before a worker takes it.

A message carries the task id and name in its headers and ``[args, kwargs]`` in its body,
encoded as the call's serializer (and compression) chose. The task row stays the record: a
worker runs a task with its row's arguments, so only headers and content type are checked on
receipt; a message without a row is read whole (:func:`body_problem`).
"""

from __future__ import annotations

from typing import Any

from kombu.message import Message
from kombu.utils import json as kombu_json

from ..messages import JSON_CONTENT_TYPE, compression_content_type, text_problem
from .base import OutgoingTask


class BadMessage(Exception):
    """A message this worker cannot run; its text says why."""


def policy_for_kombu(policy: dict[str, Any]) -> dict[str, Any]:
    """``retry_policy`` as keyword arguments of kombu's ``ensure`` and ``ensure_connection``."""
    return {
        "max_retries": policy["max_retries"],
        "interval_start": policy["interval_start"],
        "interval_step": policy["interval_step"],
        "interval_max": policy["interval_max"],
    }


def _envelope(
    *,
    task_id: str,
    task_name: str,
    queue: str,
    priority: int,
    args: Any,
    kwargs: Any,
    body: bytes | None,
    content_type: str,
    options: dict[str, Any] | None,
    retries: int,
    expires: Any,
) -> dict[str, Any]:
    headers: dict[str, Any] = {"id": task_id, "task": task_name, "retries": retries}
    content_encoding: str
    if body is None:
        payload = kombu_json.dumps([args or [], kwargs or {}]).encode()
        content_type, content_encoding = JSON_CONTENT_TYPE, "utf-8"
    else:
        payload, content_encoding = bytes(body), "binary"
        compression = (options or {}).get("compression")
        if compression:
            headers["compression"] = compression_content_type(compression)
    return {
        "task_name": task_name,
        "queue": queue,
        "priority": priority,
        "body": payload,
        "content_type": content_type,
        "content_encoding": content_encoding,
        "headers": headers,
        "expires": expires,
    }


def message_from_outgoing(outgoing: OutgoingTask) -> dict[str, Any]:
    """The message for a task being sent."""
    encoded = outgoing.encoded
    return _envelope(
        task_id=outgoing.task_id,
        task_name=outgoing.task_name,
        queue=outgoing.queue,
        priority=outgoing.priority,
        args=encoded.args,
        kwargs=encoded.kwargs,
        body=encoded.body,
        content_type=encoded.content_type,
        options=outgoing.options,
        retries=0,
        expires=outgoing.expires,
    )


def message_from_row(row: dict[str, Any]) -> dict[str, Any]:
    """The message for a stored task (the relay), from its row's relay columns."""
    return _envelope(**{k: v for k, v in row.items() if k != "id"})


def check_message(message: Message, accepted: set[str]) -> str:
    """The task id of a message a worker may take; :class:`BadMessage` saying why otherwise.

    Only the headers and the content type are checked: the arguments a task runs with are its
    row's, read when it is claimed. A message without a row gets :func:`body_problem` too.
    """
    headers = message.headers
    if not isinstance(headers, dict) or not isinstance(headers.get("id"), str):
        raise BadMessage("no task id in the message headers")
    if not isinstance(headers.get("task"), str) or not headers["task"]:
        raise BadMessage("no task name in the message headers")
    for key, label in (("id", "task id"), ("task", "task name")):
        value = headers[key]
        problem = text_problem(value) or (
            "is longer than 255 characters" if len(value) > 255 else None
        )
        if problem is not None or not value:
            raise BadMessage(f"the {label} in the message headers {problem or 'is empty'}")
    if message.errors:
        raise BadMessage(f"the message cannot be read: {message.errors[0][1]}")
    if message.content_type not in accepted:
        raise BadMessage(f"content type {message.content_type!r} is not in ACCEPT_CONTENT")
    return str(headers["id"])


def body_problem(message: Message) -> str | None:
    """Why a message's body is not ``[args, kwargs]`` in its content type, or None."""
    try:
        decoded = message.decode()
    except Exception as exc:
        return f"the body cannot be decoded: {exc}"
    if not (
        isinstance(decoded, list | tuple)
        and len(decoded) >= 2
        and isinstance(decoded[0], list | tuple)
        and isinstance(decoded[1], dict)
    ):
        return "the body is not [args, kwargs]"
    return None


__all__ = [
    "BadMessage",
    "body_problem",
    "check_message",
    "message_from_outgoing",
    "message_from_row",
    "policy_for_kombu",
]
