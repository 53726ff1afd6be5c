"""Every ```python example in docs/ is compiled, and every one not marked ``<!-- not run -->``
is run.

The convention (see docs/architecture.md, "Code examples in the docs"):

- A ```python block is run by this test, in order with the page's other run blocks, in one
  namespace per page (as a reader pastes them into one shell), with the test database.
- A block whose fence is preceded by the line ``<!-- not run -->`` (optionally
  ``<!-- not run: why -->``) is a fragment: it is only compiled. A ``>>>`` session is
  compiled statement by statement.

So a syntax error anywhere fails, and a run example that stops working fails.
"""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

from django_tasks.management.commands import purge_results, runworker, taskstatus
from django_tasks.registry import tasks_registry

DOCS = Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^```python[^\n]*\n(?P<code>.*?)^```[ \t]*$", re.S | re.M)
NOT_RUN = re.compile(r"<!-- not run(?::[^>]*)? -->[ \t]*\n\Z")


def examples(page: Path) -> list[tuple[int, str, bool]]:
    """``(line, code, run)`` of each ```python block of ``page``."""
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()]
        line = before.count("\n") + 1
        found.append((line, match["code"], NOT_RUN.search(before) is None))
    return found


PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)
PAGES_WITH_EXAMPLES = [p for p in PAGES if examples(p)]


def sources(code: str) -> list[str]:
    if code.lstrip().startswith(">>>"):
        return [example.source for example in doctest.DocTestParser().get_examples(code)]
    return [code]


def page_id(page: Path) -> str:
    return str(page.relative_to(DOCS))


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=page_id)
def test_every_example_compiles(page):
    for line, code, _ in examples(page):
        for source in sources(code):
            compile(source, f"{page_id(page)}:{line}", "exec")


@pytest.fixture
def registry_restored():
    saved = dict(tasks_registry)
    yield
    tasks_registry.clear()
    tasks_registry.update(saved)


@pytest.mark.usefixtures("registry_restored")
@pytest.mark.django_db
@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=page_id)
def test_run_examples_run(page):
    run = [(line, code) for line, code, run in examples(page) if run]
    if not run:
        pytest.skip("every example on this page is marked <!-- not run -->")
    module = page_id(page).removesuffix(".md").replace("/", "_").replace("-", "_")
    namespace = {"__name__": f"docs_example_{module}"}
    for line, code in run:
        assert not code.lstrip().startswith(">>>"), (
            f"{page_id(page)}:{line}: a >>> session must be marked <!-- not run -->"
        )
        exec(compile(code, f"{page_id(page)}:{line}", "exec"), namespace)


def test_a_marked_block_is_not_run_and_an_unmarked_one_is(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- not run -->\n```python\nfragment(\n```\n\ntext\n```python\nx = 1\n```\n"
        "<!-- not run: a fragment -->\n```python\ny\n```\n"
    )
    assert [(line, run) for line, _, run in examples(page)] == [(2, False), (7, True), (11, False)]


@pytest.mark.parametrize("command", [runworker.Command, purge_results.Command, taskstatus.Command])
def test_the_commands_page_names_every_option(command):
    from django.core.management.base import BaseCommand

    page = (DOCS / "reference" / "commands.md").read_text()
    own = {
        option
        for action in command().create_parser("manage.py", "x")._actions
        for option in action.option_strings
    } - {
        option
        for action in BaseCommand().create_parser("manage.py", "x")._actions
        for option in action.option_strings
    }
    assert own
    assert {
        option for option in own if f"`{option}" not in page and f" {option}" not in page
    } == set()
