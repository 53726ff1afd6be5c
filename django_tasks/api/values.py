"""Stored JSON values (arguments, results, meta) as the admin and the API show them:
depth-limited, and read as text so that no nesting depth can break decoding. And which text
the surfaces may put into a query at all (:func:`usable_text`).

Rows may hold values nested deeper than Python's JSON decoder (or its encoder, or a
template) can recurse: old data, another process's data, a hostile client's arguments. The
surfaces therefore read these columns as JSON text (:func:`with_json_text`), cut every
container deeper than :data:`MAX_DEPTH` to :data:`TRUNCATED` in the text itself, without
recursion (:func:`limit_text`), and only then decode.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from django.db.models import QuerySet, TextField
from django.db.models.functions import Cast

from ..models import TaskJSONDecoder

#: Containers nested deeper than this are shown as :data:`TRUNCATED`.
MAX_DEPTH = 20
#: What stands for a container nested too deep.
TRUNCATED = "…"
#: The JSON columns of a task row that the surfaces show.
JSON_COLUMNS = ("args", "kwargs", "result", "meta")
#: The annotation holding a column's JSON text: ``args`` -> ``args_json_text``.
TEXT_SUFFIX = "_json_text"

_QuerySet = TypeVar("_QuerySet", bound=QuerySet[Any])

#: A JSON string (with its escapes), or a bracket; nothing else matters for the depth.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def usable_text(value: str) -> bool:
    """Whether ``value`` can be a text parameter of a query: PostgreSQL rejects NUL
    characters, and no database takes a lone surrogate (it has no UTF-8 form)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def limit_text(text: str, max_depth: int = MAX_DEPTH) -> str:
    """``text`` (JSON) with every container nested deeper than ``max_depth`` replaced by
    ``"…"``. Iterative: any depth is fine. Text that is not JSON comes back mangled at worst,
    and then fails to decode as it would have anyway."""
    if text.count("[") + text.count("{") <= max_depth:
        return text  # cannot be deeper than that: the common case, at no cost
    parts: list[str] = []
    depth = 0
    copied = 0  # text[:copied] is in parts (or skipped)
    skip_from = -1  # where the container being cut began, while cutting
    for token in _TOKENS.finditer(text):
        char = token.group()
        if char in "[{":
            depth += 1
            if depth == max_depth + 1:
                parts.append(text[copied : token.start()])
                skip_from = token.start()
        elif char in "]}":
            if depth == max_depth + 1 and skip_from >= 0:
                parts.append(json.dumps(TRUNCATED, ensure_ascii=False))
                copied = token.end()
                skip_from = -1
            depth -= 1
    if skip_from >= 0:  # unbalanced: let the decoder report it
        return text
    parts.append(text[copied:])
    return "".join(parts)


def loads(text: str | None, max_depth: int = MAX_DEPTH) -> Any:
    """A stored column's JSON text decoded, depth-limited; None for SQL NULL."""
    if text is None:
        return None
    return json.loads(limit_text(text, max_depth), cls=TaskJSONDecoder)


def limit(value: Any, max_depth: int = MAX_DEPTH) -> Any:
    """A decoded value with containers deeper than ``max_depth`` replaced by ``"…"``. Recurses
    at most ``max_depth`` levels, whatever the depth of ``value``."""
    if isinstance(value, dict):
        if max_depth <= 0:
            return TRUNCATED
        return {key: limit(item, max_depth - 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        if max_depth <= 0:
            return TRUNCATED
        return [limit(item, max_depth - 1) for item in value]
    return value


def with_json_text(queryset: _QuerySet, columns: tuple[str, ...] = JSON_COLUMNS) -> _QuerySet:
    """``queryset`` reading ``columns`` as JSON text (see :func:`stored`), not decoded."""
    annotations = {f"{column}{TEXT_SUFFIX}": Cast(column, TextField()) for column in columns}
    return queryset.defer(*columns).annotate(**annotations)


def stored(obj: Any, column: str) -> Any:
    """A task's JSON ``column``, depth-limited: decoded from the text that
    :func:`with_json_text` read, or (an instance made in memory) limited as it is."""
    cache: dict[str, Any] = obj.__dict__.setdefault("_stored_json", {})
    if column not in cache:
        name = f"{column}{TEXT_SUFFIX}"
        if name in obj.__dict__:
            cache[column] = loads(obj.__dict__[name])
        else:
            cache[column] = limit(getattr(obj, column))
    return cache[column]
