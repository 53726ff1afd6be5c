"""Values nested deeper than Python's recursion limit, as old or foreign rows may hold."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@contextmanager
def old_data() -> Iterator[None]:
    """Writes values nested deeper than this process's JSON encoder would take, as another
    process (with a higher recursion limit) may have stored them."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)
