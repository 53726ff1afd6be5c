"""Encoding task arguments, results and exceptions, through kombu's registries.

Plain JSON arguments (the default) are kept as JSON in the task row, so the admin and
the database can read them; any other serializer, or any compression, produces an
encoded ``body`` with its media type, as a message on the wire would carry.
"""

from __future__ import annotations

import importlib
import re
import sys
import traceback as tb_module
from dataclasses import dataclass, field
from typing import Any

from kombu import compression as kombu_compression
from kombu import serialization
from kombu.exceptions import ContentDisallowed, DecodeError, EncodeError
from kombu.utils import json as kombu_json

from .exceptions import TaskError

JSON_CONTENT_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class EncodedArguments:
    """Arguments ready to store: plain JSON in ``args``/``kwargs``, or an encoded body."""

    args: list[Any] | None
    kwargs: dict[str, Any] | None
    body: bytes | None = None
    content_type: str = ""
    compression: str | None = None
    #: The JSON text of ``args`` and of ``kwargs``, as kombu's encoder (the JSON columns'
    #: encoder) writes them: a bulk send stores them without encoding them again.
    json: tuple[str, str] | None = field(default=None, compare=False, repr=False)


def known_serializers() -> list[str]:
    return sorted(serialization.registry._encoders)


def known_compressions() -> list[str]:
    return sorted(set(kombu_compression._aliases) | {"brotli", "zstd"})


def check_serializer(name: str, *, option: str = "serializer") -> None:
    """Raise ``ValueError`` naming ``option`` unless ``name`` is a registered serializer."""
    if name not in serialization.registry._encoders:
        raise ValueError(
            f"{option}={name!r} is not a known serializer; "
            f"choose one of {', '.join(known_serializers())}"
        )


def check_compression(name: str, *, option: str = "compression") -> None:
    """Raise ``ValueError`` naming ``option`` unless kombu can compress with ``name``."""
    try:
        kombu_compression.get_encoder(name)
    except (KeyError, ImportError, AttributeError):
        hint = ""
        if name in ("brotli", "zstd"):
            hint = f" (install the {name!r} extra: pip install 'django-kombu-tasks[{name}]')"
        raise ValueError(
            f"{option}={name!r} is not an available compression method{hint}; "
            f"choose one of {', '.join(known_compressions())}"
        ) from None


def compression_content_type(name: str) -> str:
    """The media type kombu puts in a message's ``compression`` header for ``name``."""
    content_type: str = kombu_compression.get_encoder(name)[1]
    return content_type


def serializer_of(content_type: str) -> str:
    """The serializer name for a media type (``application/json`` -> ``json``)."""
    name: str = serialization.registry.type_to_name[content_type]
    return name


def accepted_content_types(accept: list[str]) -> set[str]:
    """Media types for a list of serializer names or media types (``ACCEPT_CONTENT``)."""
    return {serialization.registry.name_to_type.get(a, a) for a in accept}


#: ``kombu_json.dumps`` without a new encoder per call (its output is the same).
_JSON_ENCODER = kombu_json.JSONEncoder()


def encode_arguments(
    args: list[Any],
    kwargs: dict[str, Any],
    *,
    serializer: str,
    compression: str | None,
    task_name: str,
) -> EncodedArguments:
    """Encode call arguments, or raise ``EncodeError`` naming the task."""
    try:
        if serializer == "json" and not compression:
            # Validate now; the JSON field encodes the same way when the row is saved.
            texts = (_JSON_ENCODER.encode(args), _JSON_ENCODER.encode(kwargs) if kwargs else "{}")
            problem = _unstorable_in("".join(texts), [(args, "args"), (kwargs, "kwargs")])
            if problem is not None:
                raise EncodeError(f"Task {task_name!r}: {problem}")
            return EncodedArguments(args=list(args), kwargs=dict(kwargs), json=texts)
        content_type, _encoding, data = serialization.dumps([args, kwargs], serializer=serializer)
    except EncodeError as exc:
        if str(exc).startswith(f"Task {task_name!r}: "):
            raise
        raise EncodeError(
            f"Task {task_name!r}: arguments cannot be encoded with {serializer!r}: {safe_str(exc)}"
        ) from exc
    except Exception as exc:
        raise EncodeError(
            f"Task {task_name!r}: arguments cannot be encoded with {serializer!r}: {safe_str(exc)}"
        ) from exc
    body = data.encode() if isinstance(data, str) else bytes(data)
    if compression:
        body, _ctype = kombu_compression.compress(body, compression)
    return EncodedArguments(
        args=None, kwargs=None, body=body, content_type=content_type, compression=compression
    )


def decode_arguments(
    args: Any,
    kwargs: Any,
    body: bytes | memoryview | None,
    content_type: str,
    compression: str | None,
    accept: set[str],
) -> tuple[list[Any], dict[str, Any]]:
    """Decode stored arguments; raise ``ContentDisallowed`` or ``DecodeError`` with a reason."""
    if body is None:
        if JSON_CONTENT_TYPE not in accept:
            raise ContentDisallowed(f"content type {JSON_CONTENT_TYPE!r} is not in ACCEPT_CONTENT")
        args, kwargs = args if args is not None else [], kwargs if kwargs is not None else {}
    else:
        if content_type not in accept:
            raise ContentDisallowed(f"content type {content_type!r} is not in ACCEPT_CONTENT")
        data = bytes(body)
        if compression:
            try:
                data = kombu_compression.decompress(
                    data, kombu_compression._aliases.get(compression, compression)
                )
            except Exception as exc:
                raise DecodeError(
                    f"cannot decompress the body with {compression!r}: {exc}"
                ) from exc
        try:
            decoded = serialization.loads(data, content_type, "binary", accept=accept)
        except ContentDisallowed:
            raise
        except Exception as exc:
            raise DecodeError(f"cannot decode the {content_type!r} body: {exc}") from exc
        if not (isinstance(decoded, list | tuple) and len(decoded) == 2):
            raise DecodeError("the body is not an [args, kwargs] pair")
        args, kwargs = decoded
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        raise DecodeError(
            f"args must be a list and kwargs a dict, not {type(args).__name__} "
            f"and {type(kwargs).__name__}"
        )
    return list(args), kwargs


def check_json(value: Any, what: str) -> Any:
    """Return ``value`` if every supported database can store it as JSON; else
    ``EncodeError`` naming ``what`` and the part at fault."""
    try:
        text = kombu_json.dumps(value)
    except Exception as exc:
        raise EncodeError(f"{what} cannot be stored as JSON: {safe_str(exc)}") from exc
    problem = _unstorable_in(text, [(value, what)])
    if problem is not None:
        raise EncodeError(problem)
    return value


#: What JSON text shows of a value some database cannot store: NaN and infinities, and
#: (escaped) NUL characters and surrogates. Surrogate pairs (emoji…) look alike here and are
#: told apart by :func:`unstorable`.
_SUSPECT = re.compile(r"NaN|Infinity|\\u(?:0000|d[89a-f])")


def _unstorable_in(text: str, parts: list[tuple[Any, str]]) -> str | None:
    """:func:`unstorable` for each ``(value, name)``, only when ``text`` (their JSON) shows
    a suspect; the common case costs one regular-expression search."""
    if _SUSPECT.search(text) is None:
        return None
    for value, name in parts:
        problem = unstorable(value, name)
        if problem is not None:
            return problem
    return None


def unstorable(value: Any, name: str) -> str | None:
    """Why ``value`` (named ``name``) cannot be stored by every supported database, or None.

    PostgreSQL's ``jsonb`` rejects NaN and infinities, and its ``jsonb`` and ``text`` reject
    NUL characters and lone surrogates; the same values are refused on every database, so that
    a task behaves alike wherever it runs. Walks without recursion (deep values are fine).
    """
    stack: list[tuple[Any, str]] = [(value, name)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float) and (item != item or item in (_INF, -_INF)):
            return f"{path} is {item!r}, which cannot be stored as JSON"
        if isinstance(item, str):
            problem = text_problem(item)
            if problem is not None:
                return f"{path} {problem}, which cannot be stored"
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and (problem := text_problem(key)) is not None:
                    return f"a key of {path} {problem}, which cannot be stored"
                stack.append((child, f"{path}[{_short_repr(key)}]"))
        elif isinstance(item, list | tuple):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(item))
    return None


_INF = float("inf")


def _short_repr(key: Any) -> str:
    text = safe_repr(key)
    return text if len(text) <= 40 else f"{text[:37]}..."


def text_problem(text: str) -> str | None:
    """What in ``text`` a database cannot store: a NUL character or a lone surrogate."""
    if "\x00" in text:
        return "holds a NUL character (\\x00)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "holds a lone surrogate (not valid UTF-8)"
    return None


def storable_text(text: str) -> str:
    """``text`` with what a database cannot store replaced (NUL and lone surrogates)."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def safe_str(value: object) -> str:
    """``str(value)`` that never raises (an exception's ``__str__`` may) and is storable."""
    try:
        text = str(value)
    except BaseException:  # a task's object decides what its __str__ raises
        text = f"<{type(value).__name__} object: str() failed>"
    return storable_text(text)


def safe_repr(value: object) -> str:
    """``repr(value)`` that never raises and is storable."""
    try:
        text = repr(value)
    except BaseException:  # whatever it raises, the caller needs an answer
        text = f"<{type(value).__name__} object: repr() failed>"
    return storable_text(text)


def encode_result(value: Any, task_name: str = "") -> Any:
    """Check that a return value can be stored as JSON; raise ``EncodeError`` naming the task
    and the part at fault if not."""
    what = f"the return value of task {task_name!r}" if task_name else "the return value"
    return check_json(value, what)


def json_round_trip(value: Any) -> Any:
    """What a value looks like after being stored and read back (for eager mode)."""
    return kombu_json.loads(kombu_json.dumps(value))


def exception_to_dict(exc: BaseException) -> dict[str, Any]:
    """Celery's JSON form of an exception: type, module and message arguments."""
    exc_type = type(exc)
    try:
        exc_args = json_round_trip(list(exc.args))
        if unstorable(exc_args, "args") is not None:
            exc_args = [storable_text(safe_str(a)) for a in exc.args]
    except BaseException:  # args that cannot be stored, read or even listed
        exc_args = [safe_str(exc)]
    return {
        "exc_type": exc_type.__qualname__,
        "exc_module": exc_type.__module__,
        "exc_message": exc_args,
    }


def format_traceback(exc: BaseException) -> str:
    """The formatted traceback of ``exc``, storable (never raises)."""
    try:
        text = "".join(tb_module.format_exception(type(exc), exc, exc.__traceback__))
    except BaseException:  # whatever it raises, the caller needs an answer
        text = f"{type(exc).__qualname__} (its traceback could not be formatted)"
    return storable_text(text)


def _find_exception_class(module: str, qualname: str) -> type[BaseException] | None:
    mod = sys.modules.get(module)
    if mod is None:
        try:
            mod = importlib.import_module(module)
        except Exception:
            return None
    obj: Any = mod
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    if isinstance(obj, type) and issubclass(obj, BaseException):
        return obj
    return None


def exception_from_dict(data: Any, traceback: str | None = None) -> BaseException:
    """Rebuild a stored exception as its own type, else as :class:`TaskError`.

    Only ``BaseException`` subclasses are rebuilt. The remote traceback is attached as
    ``exc.remote_traceback`` and as an exception note, so it prints with the error.
    """
    if not isinstance(data, dict) or "exc_type" not in data:
        exc: BaseException = TaskError(f"Task failed: {data!r}")
    else:
        module, qualname = str(data.get("exc_module", "")), str(data["exc_type"])
        message = data.get("exc_message", [])
        exc_args = message if isinstance(message, list) else [message]
        cls = _find_exception_class(module, qualname)
        exc = None  # type: ignore[assignment]
        if cls is not None:
            try:
                exc = cls(*exc_args)
            except Exception:
                exc = None  # type: ignore[assignment]
        if exc is None:
            text = ", ".join(str(a) for a in exc_args)
            name = f"{module}.{qualname}" if module and module != "builtins" else qualname
            exc = TaskError(f"{name}: {text}" if text else name)
    if traceback:
        exc.remote_traceback = traceback  # type: ignore[attr-defined]
        exc.add_note(f"Remote traceback:\n{traceback.rstrip()}")
    return exc
