"""The demo's sample tasks: found by the worker because this app is installed."""

import time

from django_tasks import task


@task
def add(x: int, y: int) -> int:
    """Succeeds."""
    return x + y


@task
def divide(x: float, y: float) -> float:
    """Fails with ZeroDivisionError when y is 0."""
    return x / y


@task(bind=True, max_retries=3, default_retry_delay=1)
def flaky(self, succeed_on_attempt: int) -> str:
    """Retries (keeping its id) until its attempt number reaches ``succeed_on_attempt``."""
    attempt = self.request.retries + 1
    if attempt < succeed_on_attempt:
        raise self.retry(exc=ConnectionError(f"attempt {attempt} failed"), countdown=1)
    return f"succeeded on attempt {attempt}"


@task(bind=True, track_started=True)
def crunch(self, steps: int, pause: float = 0.05) -> dict:
    """Reports progress as a custom PROGRESS state with ``{"current", "total"}``."""
    for step in range(1, steps + 1):
        time.sleep(pause)
        self.update_state(state="PROGRESS", meta={"current": step, "total": steps})
    return {"steps": steps}


@task
def noop() -> None:
    """Does nothing: for measuring the framework's own cost."""


@task
def total(numbers: list[int]) -> int:
    """Sums a list: a chord's body, given its header's results."""
    return sum(numbers)
