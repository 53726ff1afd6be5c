"""The package's shape: only ``django_tasks/store/`` (and migrations) writes task rows.

Two halves of one rule. :func:`test_only_the_store_writes_task_rows` reads the source;
the runtime half is ``tests/write_guard.py``, which every test runs under (the autouse
``_task_write_guard`` fixture) and which is tested here on made-up stacks.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests import write_guard

PACKAGE = Path(write_guard.package_dir())
ALLOWED = tuple(PACKAGE / name for name in write_guard.ALLOWED_SUBPACKAGES)

#: Calls that write whatever they are called on.
ALWAYS_WRITES = {"bulk_create", "bulk_update", "update_or_create", "get_or_create"}
#: Calls that write when called on a task model, its manager, a queryset or an instance.
WRITES_ON_MODELS = {"update", "delete", "create", "save"}

#: A receiver (or what a local name was assigned from) that is the task models' ORM.
ORM = re.compile(r"\b(?:TaskResult|TaskStateChange|TaskGroup|objects)\b|queryset", re.IGNORECASE)
#: SQL that writes; applied to string literals (f-strings with ``{}`` for their fields).
WRITE_SQL = re.compile(
    r"\bINSERT\s+(?:OR\s+\w+\s+|IGNORE\s+)?INTO\b"
    r"|\bDELETE\s+FROM\b"
    r"|^\s*UPDATE\s"
    r"|\bUPDATE\s+(?:ONLY\s+)?[`\"]?[\w{}.]+[`\"]?\s+(?:AS\s+\w+\s+)?SET\b",
    re.IGNORECASE,
)
SCOPES = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def checked_files() -> Iterator[Path]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if not any(path.is_relative_to(allowed) for allowed in ALLOWED):
            yield path


class _WriteFinder:
    """The write sites of one module, found in its syntax tree."""

    def __init__(self, source: str, filename: str) -> None:
        self.source = source.encode()  # AST columns count UTF-8 bytes
        self.line_starts = [0]
        for line in self.source.splitlines(keepends=True):
            self.line_starts.append(self.line_starts[-1] + len(line))
        self.tree = ast.parse(source, filename)
        self.parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
        self.tainted = self._tainted_names()

    def text(self, node: ast.AST) -> str:
        """``node``'s source (``ast.get_source_segment``, without re-splitting the file)."""
        end_lineno = getattr(node, "end_lineno", None)
        if end_lineno is None:
            return ""
        start = self.line_starts[node.lineno - 1] + node.col_offset  # type: ignore[attr-defined]
        end = self.line_starts[end_lineno - 1] + node.end_col_offset  # type: ignore[attr-defined]
        return self.source[start:end].decode()

    def short(self, node: ast.AST) -> str:
        text = " ".join(self.text(node).split())
        return text if len(text) <= 80 else f"{text[:77]}..."

    def scope(self, node: ast.AST) -> ast.AST:
        node = self.parents[node]
        while not isinstance(node, SCOPES):
            node = self.parents[node]
        return node

    def _tainted_names(self) -> dict[ast.AST, set[str]]:
        """Per scope, the local names that hold the task ORM: assigned (or looped over)
        from something naming it or another such name, or annotated as a queryset/model.
        """
        bindings: list[tuple[ast.AST, Sequence[ast.AST], ast.AST]] = []
        tainted: dict[ast.AST, set[str]] = {}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Assign):
                bindings.append((self.scope(node), node.targets, node.value))
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)) and node.value:
                bindings.append((self.scope(node), [node.target], node.value))
            elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
                bindings.append((self.scope(node), [node.target], node.iter))
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                for item in node.items:
                    if item.optional_vars is not None:
                        bindings.append((self.scope(node), [item.optional_vars], item.context_expr))
            elif isinstance(node, ast.arg) and ORM.search(self.text(node.annotation or node)):
                tainted.setdefault(self.scope(node), set()).add(node.arg)
        changed = True
        while changed:  # to a fixed point: ``base = …objects…; base = base.filter(…)``
            changed = False
            for scope, targets, value in bindings:
                if not self._names_orm(value, scope, tainted):
                    continue
                names = tainted.setdefault(scope, set())
                for target in targets:
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name) and name.id not in names:
                            names.add(name.id)
                            changed = True
        return tainted

    def _names_orm(
        self, node: ast.AST, scope: ast.AST, tainted: dict[ast.AST, set[str]] | None = None
    ) -> bool:
        """Whether ``node`` names the ORM, or is a chain (``rows.filter(…)[0]``,
        ``list(rows)``) on a local name that holds it."""
        tainted = self.tainted if tainted is None else tainted
        if ORM.search(self.text(node)):
            return True
        root = _root(node)
        return isinstance(root, ast.Name) and (
            root.id in tainted.get(scope, ()) or root.id in tainted.get(self.tree, ())
        )

    def _in_model_class(self, node: ast.AST) -> bool:
        """Inside a method of a QuerySet, Manager or Model subclass (``self.update()``)."""
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, ast.ClassDef):
                bases = " ".join(self.text(base) for base in node.bases)
                return bool(re.search(r"QuerySet|Manager|\bModel\b", bases))
        return False

    def findings(self) -> Iterator[tuple[int, str]]:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                method, receiver = node.func.attr, node.func.value
                if method in ALWAYS_WRITES:
                    yield node.lineno, f".{method}() writes: {self.short(node.func)}()"
                elif method in WRITES_ON_MODELS:
                    on_self = (
                        isinstance(receiver, ast.Name) and receiver.id == "self"
                    ) or self.text(receiver) == "super()"
                    if self._names_orm(receiver, self.scope(node)) or (
                        on_self and self._in_model_class(node)
                    ):
                        yield node.lineno, f"ORM write: {self.short(node.func)}()"
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                in_fstring = isinstance(self.parents.get(node), ast.JoinedStr)  # seen whole below
                if not in_fstring and not self._is_docstring(node) and WRITE_SQL.search(node.value):
                    yield node.lineno, f"SQL write: {_short(node.value)}"
            elif isinstance(node, ast.JoinedStr):
                rendered = "".join(
                    str(v.value) if isinstance(v, ast.Constant) else "{}" for v in node.values
                )
                if WRITE_SQL.search(rendered):
                    yield node.lineno, f"SQL write: {_short(rendered)}"

    def _is_docstring(self, node: ast.Constant) -> bool:
        statement = self.parents.get(node)
        if not isinstance(statement, ast.Expr):
            return False
        owner = self.parents.get(statement)
        body = getattr(owner, "body", [])
        return bool(body) and body[0] is statement


#: Calls whose result is (made of) their first argument's rows.
_PASS_THROUGH = {"list", "tuple", "sorted", "reversed", "iter", "next", "enumerate"}


def _root(node: ast.AST) -> ast.AST:
    """The start of an access chain: ``rows`` in ``rows.filter(a=1).first()`` or ``list(rows)``."""
    while True:
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in _PASS_THROUGH and node.args:
                node = node.args[0]
            else:
                node = func
        elif isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred, ast.Await)):
            node = node.value
        else:
            return node


def _short(text: str) -> str:
    return repr(" ".join(text.split())[:80])


def write_sites(source: str, filename: str) -> list[str]:
    finder = _WriteFinder(source, filename)
    return sorted({f"{filename}:{line}: {what}" for line, what in finder.findings()}, key=_order)


def _order(site: str) -> tuple[str, int]:
    name, line, _ = site.split(":", 2)
    return name, int(line)


def test_only_the_store_writes_task_rows() -> None:
    root = PACKAGE.parent
    found = []
    for path in checked_files():
        found += write_sites(path.read_text(encoding="utf-8"), str(path.relative_to(root)))
    if found:
        pytest.fail(
            f"{len(found)} write(s) to the task tables outside django_tasks/store/ (only the "
            "store, and migrations, may write TaskResult/TaskStateChange rows):\n  "
            + "\n  ".join(found),
            pytrace=False,
        )


@pytest.mark.parametrize(
    "source",
    [
        "TaskResult.objects.filter(pk=1).update(state='X')",
        "TaskGroup.objects.filter(pk=1).update(remaining=0)",
        "def f():\n    qs = TaskResult.objects.all()\n    qs = qs.filter(a=1)\n    qs.delete()",
        "def f(rows: list[TaskResult]):\n    for row in rows:\n        row.save()",
        "def f():\n    rows = list(TaskResult.objects.all())\n    rows[0].delete()",
        "class Q(models.QuerySet):\n    def go(self):\n        return self.update(a=1)",
        "Anything.bulk_create([])",
        "def f():\n    cursor.execute(f'UPDATE {table} SET a = %s')",
        "SQL = 'INSERT INTO t (a) VALUES (%s)'",
        "def f(t):\n    return f'DELETE FROM {t} WHERE id = %s'",
    ],
)
def test_the_static_check_finds(source: str) -> None:
    assert write_sites(source, "m.py")


@pytest.mark.parametrize(
    "source",
    [
        "def f(options):\n    options.update(x=1)\n    seen = set()\n    seen.update([1])",
        "def f():\n    fields = {'a': 1}\n    fields.update(b=2)\n    cache.delete('k')",
        "def f(rows: list[TaskResult]):\n    pks = {'pk': rows[0].pk}\n    pks.update(a=1)",
        "def f():\n    '''One UPDATE per kind; DELETE FROM and INSERT INTO, in prose.'''",
        "rows = TaskResult.objects.filter(a=1).select_for_update()\nrows.count()",
        "class Form(forms.Form):\n    def save(self):\n        return self.cleaned_data.update()",
        "sql = 'SELECT id FROM t FOR UPDATE SKIP LOCKED'",
    ],
)
def test_the_static_check_leaves_alone(source: str) -> None:
    assert write_sites(source, "m.py") == []


# -- the runtime guard -------------------------------------------------------------------------


def _frames(*paths: str) -> list[tuple[str, int, str]]:
    return [(path, n, f"f{n}") for n, path in enumerate(paths, start=1)]


@pytest.fixture
def tables() -> tuple[str, str]:
    from django_tasks.models import TaskResult, TaskStateChange

    return TaskResult._meta.db_table, TaskStateChange._meta.db_table


def test_runtime_guard_catches_a_write_outside_the_store(tables: tuple[str, str]) -> None:
    task, history = tables
    django = os.path.join(os.path.dirname(ast.__file__), "site-packages", "django", "x.py")
    tests = str(PACKAGE.parent / "tests" / "test_x.py")
    consumer = str(PACKAGE / "worker" / "consumer.py")
    store = str(PACKAGE / "store" / "tasks.py")
    update = f'UPDATE "{task}" SET "state" = %s WHERE "id" = %s'

    # Outside the store: a violation, at the innermost package frame.
    found = write_guard.violation_for(update, _frames(django, consumer, store, tests))
    assert found is not None
    assert (found.filename, found.lineno, found.function) == (consumer, 2, "f2")
    assert found.site() == "django_tasks/worker/consumer.py:2 in f2()"
    # The store (or a migration) writing, even when called from elsewhere in the package.
    assert write_guard.violation_for(update, _frames(django, store, consumer, tests)) is None
    migration = str(PACKAGE / "migrations" / "0009_x.py")
    assert write_guard.violation_for(update, _frames(migration, consumer)) is None
    # No package code on the stack: a test making rows, Django's flush.
    assert write_guard.violation_for(update, _frames(django, tests)) is None

    # Every kind of write, to either table, quoted or not, in any case.
    for sql in [
        f"INSERT INTO `{history}` (a) VALUES (%s)",
        f"insert into {task} (a) values (%s)",
        f'DELETE FROM "{history}" WHERE "task_id" IN (%s)',
        f'WITH v AS (VALUES (1)), u AS (UPDATE "{task}" AS t SET a = 1 RETURNING t.id) '
        f'INSERT INTO "{history}" SELECT * FROM u',
        f'TRUNCATE "auth_user", "{task.upper()}"',
    ]:
        assert write_guard.violation_for(sql, _frames(consumer)) is not None, sql
    # Reads, locks and other tables are not writes to the task tables.
    for sql in [
        f'SELECT "id" FROM "{task}" WHERE "state" = %s FOR UPDATE SKIP LOCKED',
        f'SELECT "id" FROM "{task}" FOR UPDATE OF "{task}"',
        f'UPDATE "{task}_archive" SET a = 1',
        'UPDATE "auth_user" SET a = 1',
    ]:
        assert write_guard.violation_for(sql, _frames(consumer)) is None, sql


@pytest.mark.django_db
def test_runtime_guard_sees_a_real_statement(tables: tuple[str, str]) -> None:
    """The wrapper on a real connection: a test's own write passes, the package's doesn't.

    (This inner guard takes the statements over from the autouse one, so the planted
    violation does not fail this test.)
    """
    from django.db import connection

    from django_tasks import models

    with write_guard.guard() as violations:
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {tables[1]}")  # from a test: allowed
        assert violations == []
        # A write issued from a function whose code claims a file in the package.
        code = compile(
            f"with connection.cursor() as c:\n    c.executemany('DELETE FROM {tables[1]} "
            "WHERE id = %s', [[1], [2]])",
            models.__file__,
            "exec",
        )
        exec(code, {"connection": connection})
    assert len(violations) == 1  # executemany goes through the wrapper too (once, many=True)
    assert violations[0].site().startswith("django_tasks/models.py:2 in <module>()")
