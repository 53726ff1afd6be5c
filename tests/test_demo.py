"""``manage.py demo`` (``make demo``): each result is printed next to the code that sent it."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from testproject.demo.management.commands.demo import CALLBACK_CODE, CALLS
from tests.conftest import database_url


@pytest.mark.worker
def test_the_demo_prints_each_calling_code_next_to_its_result(transactional_db, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database_url())
    out = io.StringIO()
    call_command("demo", stdout=out, no_color=True)
    rows = {line.split("  ")[0]: line for line in out.getvalue().splitlines()}
    for label, code in CALLS.items():
        assert code in rows[label], rows.get(label)
    assert "add.delay(2, 2)" in rows["success"] and rows["success"].split()[-1] == "SUCCESS"
    assert "divide.delay(1, 0)" in rows["failure"] and "ZeroDivisionError" in rows["failure"]
    assert CALLBACK_CODE in rows["callback of link"] and " 14 " in rows["callback of link"]
