"""``manage.py runworker``: parse and check the options, then hand over to the worker."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import autoreload

from django_tasks.conf import tasks_settings
from django_tasks.options import queue_name_problem
from django_tasks.worker import Worker
from django_tasks.worker.pool import POOLS
from django_tasks.worker.startup import StartupError

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
#: The settings behind the prefork-only flags.
CHILD_LIMITS = {
    "max_tasks_per_child": "WORKER_MAX_TASKS_PER_CHILD",
    "max_memory_per_child": "WORKER_MAX_MEMORY_PER_CHILD",
}

logger = logging.getLogger("django_tasks.worker")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, not {text!r}")
    return value


class Command(BaseCommand):
    help = "Run a django_tasks worker: claim and run tasks until stopped."
    requires_system_checks = "__all__"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "-Q",
            "--queues",
            default=None,
            help="Comma-separated queues to consume (default: TASK_DEFAULT_QUEUE).",
        )
        parser.add_argument(
            "-c",
            "--concurrency",
            type=int,
            default=None,
            help="Tasks run at once (default: the number of CPUs).",
        )
        parser.add_argument(
            "-P",
            "--pool",
            choices=POOLS,
            default="prefork",
            help="prefork (processes, default), threads, or solo (inline).",
        )
        parser.add_argument(
            "--burst", action="store_true", help="Exit 0 once no task is due in the queues."
        )
        parser.add_argument(
            "--without-beat",
            action="store_true",
            help="Do not run the periodic task scheduler in this worker.",
        )
        parser.add_argument(
            "--max-tasks-per-child",
            type=positive_int,
            default=None,
            metavar="N",
            help="prefork: replace a child after it has run N tasks "
            "(default: WORKER_MAX_TASKS_PER_CHILD, None: never).",
        )
        parser.add_argument(
            "--max-memory-per-child",
            type=positive_int,
            default=None,
            metavar="KIB",
            help="prefork: replace a child whose resident memory is over KIB kibibytes after "
            "a task (default: WORKER_MAX_MEMORY_PER_CHILD, None: never).",
        )
        parser.add_argument(
            "--reload",
            action="store_true",
            help="Restart the worker when code changes (development; Django's autoreloader).",
        )
        parser.add_argument(
            "-l",
            "--loglevel",
            choices=LOG_LEVELS,
            default="info",
            type=str.lower,
            help="Logging level (default: info).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        queues = [
            q.strip()
            for q in (options["queues"] or tasks_settings.TASK_DEFAULT_QUEUE).split(",")
            if q.strip()
        ]
        if not queues:
            raise CommandError("--queues: name at least one queue")
        for queue in queues:
            problem = queue_name_problem(queue)
            if problem is not None:
                raise CommandError(f"--queues: queue {queue!r} {problem}")
        concurrency = options["concurrency"]
        if concurrency is None:
            concurrency = os.cpu_count() or 1
        if concurrency < 1:
            raise CommandError(f"--concurrency must be at least 1, not {concurrency}")
        if options["pool"] == "solo" and concurrency != 1:
            if options["concurrency"] is not None:
                raise CommandError("--pool solo runs one task at a time; use --concurrency 1")
            concurrency = 1
        if options["reload"] and options["burst"]:
            raise CommandError("--reload restarts a worker that runs until stopped, not --burst")
        configure_logging(options["loglevel"])
        worker_options = {
            "queues": queues,
            "concurrency": concurrency,
            "pool": options["pool"],
            "burst": options["burst"],
            "beat": not options["without_beat"],
            **child_limits(options),
        }
        if options["reload"]:
            if os.environ.get(autoreload.DJANGO_AUTORELOAD_ENV) == "true":
                # As runserver's child process: the worker in a thread, the reloader
                # watching files in the main one.
                autoreload.run_with_reloader(self.run_reloading, worker_options)
            else:
                restart_until_stopped()
            return
        code = self.run_worker(Worker(**worker_options))
        if code:
            sys.exit(code)

    def run_worker(self, worker: Worker, running: threading.Event | None = None) -> int:
        """Wait for the database and broker, print the banner, run (``running`` set from
        then on); the exit status."""
        try:
            worker.wait_until_ready()
        except StartupError as exc:
            raise CommandError(str(exc)) from None
        except KeyboardInterrupt:
            raise CommandError("interrupted before the worker started") from None
        self.stdout.write(worker.banner())
        self.stdout.flush()
        if running is not None:
            running.set()
        return worker.run()

    def run_reloading(self, worker_options: dict[str, Any]) -> None:
        """The worker in the reloader's child process: on a code change, a warm shutdown
        (running tasks finish, claimed ones are given back) before the process restarts."""
        worker = Worker(**worker_options)
        running, stopped = threading.Event(), threading.Event()

        def on_change(sender: Any, file_path: Any, **kwargs: Any) -> None:
            logger.warning("%s changed: restarting the worker", file_path)
            if running.is_set():  # else still waiting for the database or broker: no task
                worker.request_stop()
                stopped.wait()
            # Returning None lets the reloader restart the process.

        autoreload.file_changed.connect(on_change, weak=False)
        try:
            code = self.run_worker(worker, running)
        except CommandError as exc:
            logger.error("%s; the worker starts again when a file changes", exc)
            return
        finally:
            stopped.set()
        if code:
            logger.error(
                "The worker stopped (status %d); it starts again when a file changes", code
            )


def restart_until_stopped() -> None:
    """The first process of ``--reload``: run the worker in a child process, again after each
    code change (Django's ``restart_with_reloader``), and also after a change to code that
    kept the child from starting (a syntax error in a tasks.py), where runserver's own
    special case of ``manage.py`` does not reach."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            code = autoreload.restart_with_reloader()
            if code <= 0:  # it stopped (Ctrl-C), or was killed
                sys.exit(1 if code else 0)
            logger.error(
                "The worker exited with status %d; it starts again when a file changes", code
            )
            wait_for_a_change()
    except KeyboardInterrupt:
        pass


def wait_for_a_change(interval: float = 1.0) -> None:
    """Return once a Python module this process imported changes on disk."""

    def mtimes() -> dict[Any, float]:
        found = {}
        for path in autoreload.iter_all_python_module_files():
            try:
                found[path] = path.stat().st_mtime
            except OSError:
                continue
        return found

    before = mtimes()
    while mtimes() == before:
        time.sleep(interval)


def child_limits(options: dict[str, Any]) -> dict[str, int | None]:
    """``--max-tasks-per-child`` and ``--max-memory-per-child``, else their settings.

    They recycle prefork children. Other pools have no child to replace: a flag is then an
    error, a setting (which every worker reads, whatever its pool) is ignored with a warning.
    """
    limits: dict[str, int | None] = {}
    for name, setting in CHILD_LIMITS.items():
        flag = "--" + name.replace("_", "-")
        value = options[name]
        if value is not None and options["pool"] != "prefork":
            raise CommandError(
                f"{flag} replaces prefork children; --pool {options['pool']} has none"
            )
        if value is None:
            value = getattr(tasks_settings, setting)
            if value is not None and options["pool"] != "prefork":
                logger.warning(
                    "%s is ignored: --pool %s has no child processes to replace",
                    setting,
                    options["pool"],
                )
                value = None
        limits[name] = value
    return limits


def configure_logging(level: str) -> None:
    """Log at ``level`` to stderr, unless the project's LOGGING already handles our logger."""
    logger = logging.getLogger("django_tasks")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("[%(asctime)s: %(levelname)s/%(process)d] %(message)s")
        )
        logger.addHandler(handler)
        logger.propagate = False
