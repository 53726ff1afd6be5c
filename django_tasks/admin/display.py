"""HTML fragments the admin shows: state badges, pretty JSON, tracebacks, progress, ages."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from .. import states
from ..api.values import limit
from ..models import TaskJSONEncoder

#: What an empty value shows, as in the admin's own columns.
EMPTY = "-"

#: Badge colour class by state; custom states (e.g. PROGRESS) are "active".
STATE_CLASSES = {
    states.PENDING: "waiting",
    states.RECEIVED: "waiting",
    states.RETRY: "retry",
    states.STARTED: "active",
    states.SUCCESS: "success",
    states.FAILURE: "failure",
    states.REVOKED: "revoked",
}


def state_badge(state: str) -> SafeString:
    kind = STATE_CLASSES.get(state, "active")
    return format_html('<span class="dt-badge dt-{}">{}</span>', kind, state)


def state_path(history: Iterable[tuple[str, Any]]) -> SafeString:
    """``PENDING → STARTED → … → SUCCESS`` as badges."""
    arrow = format_html('<span class="dt-arrow">{}</span>', "→")
    # Every part is already escaped by format_html.
    return mark_safe(arrow.join(state_badge(state) for state, _at in history))


def pretty_json(value: Any) -> SafeString:
    """Indented JSON, containers nested deeper than ``values.MAX_DEPTH`` shown as ``"…"``."""
    text = json.dumps(
        limit(value), indent=2, sort_keys=True, ensure_ascii=False, cls=TaskJSONEncoder
    )
    return format_html('<pre class="dt-json">{}</pre>', text)


def traceback_block(text: str | None) -> SafeString | str:
    """A collapsible traceback: its last line (the exception) as the summary."""
    if not text:
        return EMPTY
    lines = text.rstrip().splitlines()
    return format_html(
        '<details class="dt-traceback"><summary>{}</summary><pre>{}</pre></details>',
        lines[-1] if lines else "Traceback",
        text,
    )


def progress(meta: Any) -> tuple[int, int] | None:
    """``(current, total)`` when ``meta`` reports progress (``{"current", "total"}``)."""
    if not isinstance(meta, dict):
        return None
    current, total = meta.get("current"), meta.get("total")
    if isinstance(current, int | float) and isinstance(total, int | float) and total > 0:
        return int(current), int(total)
    return None


def progress_bar(current: int, total: int) -> SafeString:
    percent = max(0, min(100, round(100 * current / total)))
    return format_html(
        '<div class="dt-progress"><progress max="{}" value="{}"></progress> '
        "<span>{} / {} ({}%)</span></div>",
        total,
        current,
        current,
        total,
        percent,
    )


def duration(seconds: float | None) -> str:
    """``"850 ms"``, ``"12.3 s"``, ``"4 min 5 s"``, ``"2 h 3 min"``; ``"-"`` for None."""
    if seconds is None:
        return EMPTY
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def short_time(when: Any) -> str:
    """To the second, in the current time zone, sortable: ``2026-11-22 06:49:11``."""
    if when is None:
        return EMPTY
    return timezone.localtime(when).strftime("%Y-%m-%d %H:%M:%S")


def list_time(when: Any, day_of: Any) -> str:
    """A list column's time: ``06:49:11`` on the local day of ``day_of`` (the task's creation),
    else :func:`short_time`; the whole time is the title. Keeps the list's time columns narrow
    enough to fit beside the others."""
    if when is None:
        return EMPTY
    local = timezone.localtime(when)
    if day_of is None or timezone.localtime(day_of).date() != local.date():
        return short_time(when)
    return format_html('<span title="{}">{}</span>', short_time(when), local.strftime("%H:%M:%S"))


def dotted_name(name: str) -> SafeString:
    """A dotted task name that may wrap after each dot, so a long one does not widen the list."""
    return format_html_join(mark_safe(".<wbr>"), "{}", ((part,) for part in name.split(".")))


def timestamp(when: Any) -> str:
    """To the millisecond, in the current time zone: state changes can be that close."""
    if when is None:
        return EMPTY
    return timezone.localtime(when).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def links(items: Iterable[tuple[str, str]]) -> SafeString:
    return format_html_join(", ", '<a href="{}">{}</a>', items)
