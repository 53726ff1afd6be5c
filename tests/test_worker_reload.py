"""runworker --reload: a task added to an app's tasks.py runs without restarting by hand."""

import importlib
import os
import sys
import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from django_tasks import signature, states
from django_tasks.registry import tasks_registry
from tests.conftest import wait_until

pytestmark = pytest.mark.worker

OLD = """from django_tasks import task


@task
def old():
    return "old"
"""
NEW = """

@task
def shout(word):
    return word.upper()
"""


@pytest.fixture
def reload_app(tmp_path):
    """A throwaway app, ``reloadapp``, on the path of the workers and of this process."""
    app = tmp_path / "reloadapp"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "tasks.py").write_text(OLD)
    sys.path.insert(0, str(tmp_path))
    yield app
    sys.path.remove(str(tmp_path))
    for name in [n for n in sys.modules if n == "reloadapp" or n.startswith("reloadapp.")]:
        del sys.modules[name]
    for name in [n for n in tasks_registry if n.startswith("reloadapp.")]:
        del tasks_registry[name]


def change(path, text, seen, timeout=60):
    """Write ``text`` to ``path`` and touch it until ``seen()``: a reloader notices changes
    from its first look at the files on, which may come a little after the banner."""
    path.write_text(text)
    deadline = time.monotonic() + timeout
    while not seen():
        assert time.monotonic() < deadline, f"no reload after writing {path}"
        time.sleep(0.5)
        if not seen():
            os.utime(path)


def test_a_task_added_after_start_runs_after_the_reload(start_worker, reload_app):
    env = {
        "PYTHONPATH": os.pathsep.join([str(reload_app.parent), os.environ.get("PYTHONPATH", "")]),
        "DJANGO_TASKS_TEST_EXTRA_APPS": "reloadapp",
    }
    worker = start_worker("--reload", "--concurrency", "1", env=env)
    wait_until(lambda: ". reloadapp.tasks.old" in worker.output(), timeout=30, what="the banner")
    assert "reloadapp.tasks.shout" not in worker.output()

    tasks_py = reload_app / "tasks.py"
    change(tasks_py, OLD + NEW, lambda: "tasks.py changed: restarting" in worker.output())
    wait_until(
        lambda: ". reloadapp.tasks.shout" in worker.output(), timeout=30, what="the new banner"
    )

    importlib.import_module("reloadapp.tasks")  # this process sends it by name
    result = signature("reloadapp.tasks.shout", ("hello",)).delay()
    assert result.get(timeout=30) == "HELLO", worker.output()
    assert result.state == states.SUCCESS
    out = worker.output()
    assert out.count("django_tasks worker ") >= 2  # restarted by the reloader
    assert "Warm shutdown" in out
    assert worker.proc.poll() is None

    # A typo keeps the next worker from starting; fixing it starts one again.
    failed = "The worker exited with status 1; it starts again when a file changes"
    change(tasks_py, OLD + NEW + "\ndef broken(:\n", lambda: failed in worker.output())
    assert "SyntaxError" in worker.output()
    fixed = OLD + NEW.replace("shout", "whisper").replace("upper", "lower")
    change(tasks_py, fixed, lambda: ". reloadapp.tasks.whisper" in worker.output())
    importlib.reload(sys.modules["reloadapp.tasks"])
    assert signature("reloadapp.tasks.whisper", ("HeLLo",)).delay().get(timeout=30) == "hello"


def test_reload_and_burst_do_not_mix():
    with pytest.raises(CommandError, match="--reload .* not --burst"):
        call_command("runworker", "--reload", "--burst")
