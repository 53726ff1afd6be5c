import os
import signal
from pathlib import Path

from django.apps import AppConfig

#: Set to a file path, a worker dies (its whole process group, SIGKILL) right after the
#: commit of the transaction that decided a chord, before anything else runs (a broker's
#: publish of the body included); the file marks that it happened, so only one worker dies.
DIE_AFTER_CHORD = "DJANGO_TASKS_TEST_DIE_AFTER_CHORD"


class TaskAppConfig(AppConfig):
    name = "tests.taskapp"
    label = "taskapp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        marker = os.environ.get(DIE_AFTER_CHORD)
        if marker:
            die_after_deciding_a_chord(Path(marker))


def die_after_deciding_a_chord(marker: Path) -> None:
    from django.db import transaction

    from django_tasks.store import canvas

    send_body = canvas._handlers["send_body"]

    def send_then_die(body, results):
        def die():
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os.killpg(os.getpgrp(), signal.SIGKILL)

        transaction.on_commit(die)  # before the body's own after-commit publish
        send_body(body, results)

    canvas._handlers["send_body"] = send_then_die
