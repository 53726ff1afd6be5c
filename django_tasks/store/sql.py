"""Hand-written SQL for the hot paths (send, claim, read a result), built once per database.

Compiling a QuerySet or ``Model.save()`` costs more than running these statements; values
still go through the model fields (``get_db_prep_save``, Django's converters), so what is
written and read is exactly what the ORM would write and read.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Field, JSONField
from django.db.models.expressions import Col

from ..models import TaskResult

#: The columns a send writes; every other column is NULL until the task runs.
INSERT_FIELDS = (
    "task_id",
    "task_name",
    "state",
    "queue",
    "priority",
    "args",
    "kwargs",
    "body",
    "content_type",
    "options",
    "retries",
    "worker",
    "owner",
    "date_created",
    "run_after",
    "expires",
    "revoked",
    "dispatched",
    "parent_id",
    "group_id",
    "group_index",
    "chord_id",
)

#: The canvas columns a send writes, and the call options they come from.
CANVAS_COLUMNS = {
    "parent_id": "parent_id",
    "group_id": "group_id",
    "group_index": "group_index",
    "chord_id": "chord",
}

#: Python-side touches beyond Django's converters, by column.
_EXTRA: dict[str, Callable[[Any], Any]] = {
    "body": lambda value: bytes(value) if value is not None else None,
    # NULL means no options; any other value is kept, for the claim to judge (an options
    # column holding [] or false is a malformed row, not an empty one).
    "options": lambda value: {} if value is None else value,
    "revoked": bool,
}


def finish_value(column: str, value: Any) -> Any:
    """The last touch a column's Python value gets (bytes for ``body``, ``{}`` for no options)."""
    extra = _EXTRA.get(column)
    return extra(value) if extra else value


def concrete_field(name: str) -> Field:
    """TaskResult's field ``name``: one with a column (not a reverse relation)."""
    field = TaskResult._meta.get_field(name)
    assert isinstance(field, Field), name  # every field these statements name is concrete
    return field


def column_of(field: Field) -> str:
    """``field.column``: set for every concrete field once its model class is built."""
    assert field.column is not None, field
    return field.column


def _field(column: str) -> Field:
    return concrete_field("owner" if column == "owner_id" else column)


def insert_statement() -> tuple[str, list[Field]]:
    """The one INSERT that sends a task, and the fields of its parameters."""
    return _insert_statement(connection.vendor)


def _send_columns() -> tuple[str, str, list[Field]]:
    """The quoted table, its quoted send columns, and their fields, in order."""
    fields = [concrete_field(name) for name in INSERT_FIELDS]
    qn = connection.ops.quote_name
    columns = ", ".join(qn(column_of(f)) for f in fields)
    return qn(TaskResult._meta.db_table), columns, fields


@functools.cache
def _insert_statement(vendor: str) -> tuple[str, list[Field]]:
    table, columns, fields = _send_columns()
    marks = ", ".join(["%s"] * len(fields))
    return f"INSERT INTO {table} ({columns}) VALUES ({marks})", fields


def copy_statement() -> tuple[str, list[Field]]:
    """PostgreSQL: the ``COPY … FROM STDIN`` that sends many tasks, and its fields in order.

    psycopg dumps each row's values in C and PostgreSQL parses no statement per batch, which
    a multi-row ``INSERT`` of thousands of placeholders costs on both sides."""
    return _copy_statement(connection.vendor)


@functools.cache
def _copy_statement(vendor: str) -> tuple[str, list[Field]]:
    table, columns, fields = _send_columns()
    return f"COPY {table} ({columns}) FROM STDIN", fields


def copy_preparers() -> list[Callable[[Any], Any] | None]:
    """PostgreSQL: per column of :func:`copy_statement`, what turns a value into what
    ``get_db_prep_save`` would give the ``COPY`` (None: the value as is).

    Decided once per column rather than per value: JSON is encoded with the field's encoder
    (the text ``Jsonb`` would send), aware datetimes go as they are (Django adapts them
    unchanged on PostgreSQL), and anything else goes through ``get_db_prep_save`` of the
    connection itself, not of its per-thread proxy."""
    conn = connections[DEFAULT_DB_ALIAS]
    return [_copy_preparer(field, conn) for field in copy_statement()[1]]


def _copy_preparer(field: Field, conn: Any) -> Callable[[Any], Any] | None:
    kind = field.get_internal_type()
    if kind in PASSED_AS_IS:
        return None
    if isinstance(field, JSONField):
        encode = (field.encoder or json.JSONEncoder)().encode

        def json_text(value: Any) -> Any:
            return None if value is None else encode(value)

        return json_text
    prep_save = field.get_db_prep_save
    if kind == "DateTimeField":

        def aware(value: Any) -> Any:
            if value is None or value.tzinfo is not None:
                return value
            return prep_save(value, conn)  # naive: Django's warning and time zone

        return aware

    def prepared(value: Any) -> Any:
        return None if value is None else prep_save(value, conn)

    return prepared


#: Field types whose Python values a driver takes unchanged.
PASSED_AS_IS = frozenset(
    {
        "CharField",
        "TextField",
        "SmallIntegerField",
        "IntegerField",
        "PositiveIntegerField",
        "PositiveSmallIntegerField",
        "BigIntegerField",
        "BooleanField",
    }
)


def row_converter(columns: Sequence[str]) -> Callable[[Sequence[Any]], list[Any]]:
    """Turn a database row of ``columns`` into Python values, as a QuerySet would."""
    return _row_converter(connection.vendor, tuple(columns))


@functools.cache
def _row_converter(vendor: str, columns: tuple[str, ...]) -> Callable[[Sequence[Any]], list[Any]]:
    steps = []
    for column in columns:
        field = _field(column)
        expression = Col(TaskResult._meta.db_table, field)
        converters = connection.ops.get_db_converters(expression)
        converters += field.get_db_converters(connection)
        steps.append((expression, converters, _EXTRA.get(column)))

    def convert(row: Sequence[Any]) -> list[Any]:
        values = []
        for value, (expression, converters, extra) in zip(row, steps, strict=True):
            for converter in converters:
                value = converter(value, expression, connection)
            values.append(extra(value) if extra else value)
        return values

    return convert


def convert_leniently(
    columns: Sequence[str], row: Sequence[Any]
) -> tuple[list[Any], dict[str, str]]:
    """:func:`row_converter`'s values, column by column: a column that cannot be read (JSON
    nested deeper than Python's stack, say) becomes None, and is named with the reason."""
    convert = row_converter(columns)
    try:
        return convert(row), {}
    except Exception:  # find which columns, one at a time
        pass
    values: list[Any] = []
    problems: dict[str, str] = {}
    for column, value in zip(columns, row, strict=True):
        try:
            values.append(row_converter((column,))([value])[0])
        except Exception as exc:  # RecursionError, a bad date, ...
            values.append(None)
            problems[column] = f"{type(exc).__name__}: {exc}"[:200]
    return values, problems


def fetch_by_task_id(task_id: str, columns: Sequence[str]) -> dict[str, Any] | None:
    """One task's ``columns`` by task id, as a dict, or None."""
    sql = _select_by_task_id(connection.vendor, tuple(columns))
    with connection.cursor() as cursor:
        cursor.execute(sql, [task_id])
        row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip(columns, row_converter(columns)(row), strict=True))


@functools.cache
def _select_by_task_id(vendor: str, columns: tuple[str, ...]) -> str:
    qn = connection.ops.quote_name
    names = ", ".join(qn(column_of(_field(c))) for c in columns)
    return f"SELECT {names} FROM {qn(TaskResult._meta.db_table)} WHERE task_id = %s"


def fetch_by_task_ids(task_ids: Sequence[str], columns: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Many tasks' ``columns`` by task id, in one query: ``{task_id: row}``."""
    if not task_ids:
        return {}
    wanted = tuple(dict.fromkeys(("task_id", *columns)))
    convert = row_converter(wanted)
    qn = connection.ops.quote_name
    names = ", ".join(qn(column_of(_field(c))) for c in wanted)
    found: dict[str, dict[str, Any]] = {}
    ids = list(dict.fromkeys(task_ids))
    with connection.cursor() as cursor:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join(["%s"] * len(chunk))
            cursor.execute(
                f"SELECT {names} FROM {qn(TaskResult._meta.db_table)} WHERE task_id IN ({marks})",
                chunk,
            )
            for row in cursor.fetchall():
                values = dict(zip(wanted, convert(row), strict=True))
                found[values["task_id"]] = values
    return found
