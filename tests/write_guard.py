"""A runtime guard: only ``django_tasks/store/`` (and migrations) write the task tables.

Installed for every test by the autouse fixture in ``tests/conftest.py`` (set
``DJANGO_TASKS_WRITE_GUARD=0`` to switch it off). It is a Django ``execute_wrapper``
(https://docs.djangoproject.com/en/stable/topics/db/instrumentation/) that sees every
statement, ``executemany`` included, on every connection of the test: the calling
thread's, through :func:`guard`, and those other threads open during the test, through
``connection_created``.

For an ``INSERT``/``UPDATE``/``DELETE``/``TRUNCATE`` of a task table, the Python stack
decides, innermost frame first: the first frame whose file is inside the django_tasks
package is the code that wrote. Inside ``store/`` or ``migrations/``: allowed. Anywhere
else in the package: a violation. No package frame at all (a test making rows itself,
Django's flush between tests): allowed. Cascades (``on_delete``) are ordinary statements
run by Django's ``Collector`` inside the same call, so they are attributed the same way.

Only statements that name a task table are looked at further (a lower-cased substring
test first), so the guard costs next to nothing on other statements.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any

ENABLED = os.environ.get("DJANGO_TASKS_WRITE_GUARD", "1").lower() not in ("0", "false", "no", "off")

#: Where the writers may live, relative to the package directory.
ALLOWED_SUBPACKAGES = ("store", "migrations")


@functools.cache
def package_dir() -> str:
    import django_tasks

    return os.path.realpath(os.path.dirname(django_tasks.__file__))


@functools.cache
def task_tables() -> tuple[str, ...]:
    """The task tables' names, lower-cased (needs the app registry, so asked lazily)."""
    from django_tasks.models import TaskGroup, TaskResult, TaskStateChange

    return tuple(m._meta.db_table.lower() for m in (TaskResult, TaskStateChange, TaskGroup))


@functools.cache
def _write_pattern() -> re.Pattern[str]:
    """A write *to* a task table, in lower-cased SQL: the table right after the verb,
    quoted or not, optionally schema-qualified. ``select … for update [of t]`` does not
    match; ``with … u as (update t …) insert into h …`` does, as both writes it is."""
    tables = "|".join(re.escape(t) for t in task_tables())
    name = rf"[`\"\[]?(?:{tables})[`\"\]]?"
    schema = r"(?:[`\"\[]?\w+[`\"\]]?\.)?"
    verbs = (
        r"insert(?:\s+or\s+\w+|\s+ignore)?\s+into",  # SQLite OR IGNORE, MySQL IGNORE
        r"replace\s+into",
        r"merge\s+into",
        r"update(?:\s+or\s+\w+)?(?:\s+only)?",
        r"delete(?:\s+from)?(?:\s+only)?",  # MySQL: DELETE `t` FROM `t` …
        r"truncate(?:\s+table)?(?:\s+only)?(?:\s+[^;]*?,)?",  # TRUNCATE a, b, t
    )
    return re.compile(rf"\b(?:{'|'.join(verbs)})\s+{schema}{name}(?![\w$])")


#: Words every write statement has; a statement naming a task table is searched with the
#: (slower) pattern only if it has one of them too.
_VERBS = ("insert", "update", "delete", "truncate", "replace", "merge")


def is_task_write(sql: str) -> bool:
    """Whether ``sql`` writes to a task table."""
    low = sql.lower()
    for table in task_tables():
        if table in low:
            break
    else:
        return False  # the cheap test that almost every statement stops at
    return any(verb in low for verb in _VERBS) and _write_pattern().search(low) is not None


@dataclasses.dataclass(frozen=True)
class Violation:
    filename: str
    lineno: int
    function: str
    sql: str
    thread: str = ""

    def site(self) -> str:
        path = self.filename
        root = os.path.dirname(package_dir())
        if path.startswith(root + os.sep):
            path = os.path.relpath(path, root)
        return f"{path}:{self.lineno} in {self.function}()"

    def __str__(self) -> str:
        where = f" [thread {self.thread}]" if self.thread else ""
        return f"{self.site()}{where}: {self.sql}"


OUTSIDE, ALLOWED, FORBIDDEN = 0, 1, 2
#: co_filename -> OUTSIDE the package, an ALLOWED writer, or FORBIDDEN to write.
_verdicts: dict[str, int] = {}


def _verdict(filename: str) -> int:
    verdict = _verdicts.get(filename)
    if verdict is None:
        path = os.path.realpath(os.path.abspath(filename))
        pkg = package_dir()
        if not path.startswith(pkg + os.sep):
            verdict = OUTSIDE
        else:
            top, _, rest = os.path.relpath(path, pkg).partition(os.sep)
            verdict = ALLOWED if rest and top in ALLOWED_SUBPACKAGES else FORBIDDEN
        _verdicts[filename] = verdict
    return verdict


def _shorten(sql: str) -> str:
    return " ".join(sql.split())[:120]


def violation_for(sql: Any, frames: Iterable[tuple[str, int, str]]) -> Violation | None:
    """The violation ``sql`` run from ``frames`` is, or None.

    ``frames``: ``(filename, lineno, function)``, innermost first; the first one inside the
    package decides. Pure, for tests on made-up stacks; :class:`WriteGuard` makes the
    same decision on the live stack.
    """
    if not isinstance(sql, str):
        sql = str(sql)  # e.g. psycopg's sql.Composed
    if not is_task_write(sql):
        return None
    for filename, lineno, function in frames:
        verdict = _verdict(filename)
        if verdict == FORBIDDEN:
            return Violation(filename, lineno, function, _shorten(sql))
        if verdict == ALLOWED:
            return None
    return None  # no package code on the stack: the test itself, or Django's flush


#: The guards in force, outermost first; a statement's violation goes to the innermost.
_active: list[WriteGuard] = []


class WriteGuard:
    """The ``execute_wrapper``; collects violations (from any thread) in ``violations``."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self._main = threading.get_ident()

    def __call__(
        self, execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: Any
    ) -> Any:
        text = sql if isinstance(sql, str) else str(sql)
        if is_task_write(text):
            self._check(text)
        return execute(sql, params, many, context)

    def _check(self, sql: str) -> None:
        # violation_for() on the live stack, without a generator: a test's own writes walk
        # the whole (deep) pytest stack.
        frame: FrameType | None = sys._getframe(2)
        verdicts = _verdicts
        while frame is not None:
            code = frame.f_code
            verdict = verdicts.get(code.co_filename)
            if verdict is None:
                verdict = _verdict(code.co_filename)
            if verdict == ALLOWED:
                return
            if verdict == FORBIDDEN:
                break
            frame = frame.f_back
        else:
            return  # no package code on the stack
        if not (_active and _active[-1] is self):
            return  # a guard nested inside this one takes the statements over
        thread = "" if threading.get_ident() == self._main else threading.current_thread().name
        self.violations.append(
            Violation(code.co_filename, frame.f_lineno, code.co_name, _shorten(sql), thread)
        )


@contextlib.contextmanager
def guard() -> Iterator[list[Violation]]:
    """Watch every database connection while the block runs; yields the violations list.

    This thread's connections get the wrapper through ``execute_wrapper``; a connection
    opened in another thread meanwhile gets it from the ``connection_created`` signal and
    loses it on the way out. (A thread's connection that was already open before the block
    is not watched.)
    """
    from django.db import connections
    from django.db.backends.signals import connection_created

    wrapper = WriteGuard()
    others: list[Any] = []
    lock = threading.Lock()

    def on_connection_created(sender: Any, connection: Any, **kwargs: Any) -> None:
        with lock:
            if wrapper not in connection.execute_wrappers:
                connection.execute_wrappers.append(wrapper)
                others.append(connection)

    uid = f"tests.write_guard.{id(wrapper)}"
    connection_created.connect(on_connection_created, weak=False, dispatch_uid=uid)
    _active.append(wrapper)
    try:
        with contextlib.ExitStack() as stack:
            for conn in connections.all():
                stack.enter_context(conn.execute_wrapper(wrapper))
            yield wrapper.violations
    finally:
        _active.remove(wrapper)
        connection_created.disconnect(dispatch_uid=uid)
        with lock:
            for conn in others:
                with contextlib.suppress(ValueError):
                    conn.execute_wrappers.remove(wrapper)


def describe(violations: list[Violation], limit: int = 20) -> str:
    """A failure message: each offending site once, with a count and its first statement."""
    by_site: dict[str, list[Violation]] = {}
    for violation in violations:
        by_site.setdefault(violation.site(), []).append(violation)
    lines = [
        f"{len(violations)} write(s) to the task tables from outside django_tasks/store/ "
        f"(only the store may write TaskResult/TaskStateChange rows):"
    ]
    for site, found in itertools.islice(by_site.items(), limit):
        times = f" (x{len(found)})" if len(found) > 1 else ""
        thread = f" [thread {found[0].thread}]" if found[0].thread else ""
        lines.append(f"  {site}{times}{thread}: {found[0].sql}")
    if len(by_site) > limit:
        lines.append(f"  ... and {len(by_site) - limit} more site(s)")
    return "\n".join(lines)
