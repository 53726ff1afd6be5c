"""``tasks/metrics``: Prometheus's text format, from a fixed number of indexed queries.

A fresh registry and collector per scrape (never the global registry): the numbers come
from the database as of the scrape, so any number of web processes report the same thing.
"""

from __future__ import annotations

import datetime as dt
import hmac
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.views import APIView

from .. import states
from ..conf import metrics_token_problem, tasks_settings
from ..models import TaskResult, WorkerRecord
from ..store import finished_by_name, recent_runtimes
from .permissions import DenyAll, reads_every_result

#: Tasks finished by name, and runtimes, cover this recent window.
WINDOW = dt.timedelta(minutes=5)
#: Runtime quantiles come from at most this many of the latest tasks in the window.
RUNTIME_SAMPLE = 1000
QUANTILES = (0.5, 0.9, 0.99)


def _quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of sorted ``values`` (nearest rank)."""
    index = min(len(values) - 1, max(0, round(q * len(values) + 0.5) - 1))
    return values[index]


class TasksCollector(Collector):
    """Reads the task table and the worker rows once, when collected (4 queries)."""

    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        lease = float(tasks_settings.WORKER_LEASE_SECONDS)
        depth = GaugeMetricFamily(
            "django_tasks_queue_tasks",
            "Tasks per queue and state: due (may run now), scheduled (waiting for their eta), "
            "running (held by a worker).",
            labels=["queue", "state"],
        )
        finished_hour = GaugeMetricFamily(
            "django_tasks_queue_finished_last_hour",
            "Tasks per queue that finished in the last hour, by final state.",
            labels=["queue", "state"],
        )
        oldest = GaugeMetricFamily(
            "django_tasks_queue_oldest_due_age_seconds",
            "Age of each queue's oldest due task (how far behind it is); 0 when none is due.",
            labels=["queue"],
        )
        for row in TaskResult.objects.queue_overview(now):
            queue = row["queue"]
            for state in ("due", "scheduled", "running"):
                depth.add_metric([queue, state], row[state])
            finished_hour.add_metric([queue, states.SUCCESS], row["succeeded"])
            finished_hour.add_metric([queue, states.FAILURE], row["failed"])
            age = (now - row["oldest_due"]).total_seconds() if row["oldest_due"] else 0.0
            oldest.add_metric([queue], max(age, 0.0))
        yield from (depth, finished_hour, oldest)

        cutoff = now - dt.timedelta(seconds=lease)
        counts = WorkerRecord.objects.filter(stopped__isnull=True).aggregate(
            live=Count("pk", filter=Q(last_heartbeat__gte=cutoff)),
            stale=Count("pk", filter=Q(last_heartbeat__lt=cutoff)),
        )
        workers = GaugeMetricFamily(
            "django_tasks_workers",
            "Workers by status: live (heartbeat within the lease), stale (none within the "
            "lease: killed or hung, not stopped cleanly).",
            labels=["status"],
        )
        workers.add_metric([WorkerRecord.LIVE], counts["live"])
        workers.add_metric([WorkerRecord.STALE], counts["stale"])
        yield workers

        since = now - WINDOW
        window = f"{int(WINDOW.total_seconds() // 60)} minutes"
        finished = GaugeMetricFamily(
            "django_tasks_tasks_finished_recent",
            f"Tasks finished in the last {window}, by task name and final state (a sliding "
            "window read from the database, not a counter).",
            labels=["task", "state"],
        )
        for entry in finished_by_name(since):
            finished.add_metric([entry["task_name"], entry["state"]], entry["count"])
        yield finished

        by_name: dict[str, list[float]] = defaultdict(list)
        for name, seconds in recent_runtimes(since, RUNTIME_SAMPLE):
            by_name[name].append(max(seconds, 0.0))
        runtime = Metric(
            "django_tasks_task_runtime_seconds",
            f"Runtime (start to finish) of tasks finished in the last {window}, per task name: "
            f"quantiles of the latest {RUNTIME_SAMPLE} at most.",
            "summary",
        )
        for name, values in sorted(by_name.items()):
            values.sort()
            for q in QUANTILES:
                runtime.add_sample(
                    "django_tasks_task_runtime_seconds",
                    {"task": name, "quantile": str(q)},
                    _quantile(values, q),
                )
            runtime.add_sample(
                "django_tasks_task_runtime_seconds_count", {"task": name}, len(values)
            )
            runtime.add_sample("django_tasks_task_runtime_seconds_sum", {"task": name}, sum(values))
        yield runtime


def render_metrics() -> bytes:
    """One scrape: the text format from a registry made for it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TasksCollector())
    return generate_latest(registry)


def _metrics_response() -> HttpResponse:
    return HttpResponse(render_metrics(), content_type=CONTENT_TYPE_LATEST)


def bearer_token(request: HttpRequest) -> str | None:
    """The token of an ``Authorization: Bearer`` header; None without one."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def token_matches(given: str) -> bool:
    """Constant-time comparison with ``METRICS_TOKEN``; False when none (or a bad one) is set."""
    expected = tasks_settings.METRICS_TOKEN
    if expected is None or metrics_token_problem(expected) is not None:
        return False  # fail closed: a missing or bad setting (system check E032) lets none in
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


class MetricsView(APIView):
    """The metrics for those the API's permission classes let in (and who may read every
    result, when a class narrows results per user, as the default does)."""

    schema = None  # not part of the JSON API's schema

    def get_permissions(self) -> list[Any]:
        classes = tasks_settings.API_PERMISSION_CLASSES
        if not classes:
            return [DenyAll()]
        return [permission() for permission in classes]

    def check_permissions(self, request: Request) -> None:
        super().check_permissions(request)
        narrows = any(hasattr(p, "filter_queryset") for p in self.get_permissions())
        if narrows and not reads_every_result(request.user):
            raise PermissionDenied("Metrics cover every task: only staff who read every result.")

    def get(self, request: Request) -> HttpResponse:
        return _metrics_response()


_session_view = MetricsView.as_view()


@csrf_exempt
def metrics(request: HttpRequest) -> HttpResponseBase:
    """``Authorization: Bearer <METRICS_TOKEN>`` for scrapers; else the API's permissions."""
    token = bearer_token(request)
    if token is None:
        return _session_view(request)
    if request.method not in ("GET", "HEAD"):
        return HttpResponse("Method not allowed.\n", status=405, content_type="text/plain")
    if not token_matches(token):
        response = HttpResponse(
            "Invalid metrics token.\n", status=401, content_type="text/plain; charset=utf-8"
        )
        response["WWW-Authenticate"] = 'Bearer realm="django_tasks metrics"'
        return response
    return _metrics_response()
