"""The demo's progress page: start a task, then watch it through the HTTP API."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_POST

from .tasks import crunch, divide


@login_required
def progress_page(request: HttpRequest) -> HttpResponse:
    return render(request, "demo/progress.html")


@login_required
@require_POST
def start(request: HttpRequest) -> JsonResponse:
    """Send ``crunch`` (reports progress) or, with ``kind=fail``, a division by zero."""
    if request.POST.get("kind") == "fail":
        result = divide.apply_async((1, 0), owner=request.user)
    else:
        raw = request.POST.get("steps", "")
        steps = min(max(int(raw), 1), 200) if raw.isdigit() else 20
        result = crunch.apply_async((steps, 0.1), owner=request.user)
    url = reverse("django_tasks:task-detail", args=[result.id])
    return JsonResponse({"id": result.id, "url": url}, status=202)
