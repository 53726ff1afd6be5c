"""Signatures: a task name with arguments and options, to call later (``add.s(2)``).

A signature is a JSON-serializable dict, as in Celery, so it can travel in a message
as a ``link`` or ``link_error``.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Self, cast

from .ids import new_id
from .result import AsyncResult

if TYPE_CHECKING:
    from .result import EagerResult, GroupResult
    from .task import Task

#: A sent canvas: the result of a task, or of a group (``GroupResult``).
AnyResult = Any


class Signature(dict):
    """``{"task", "args", "kwargs", "options", "immutable"}``; callable and sendable."""

    def __init__(
        self,
        task: str | Task,
        args: tuple | list | None = None,
        kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        immutable: bool = False,
    ) -> None:
        name = task if isinstance(task, str) else getattr(task, "name", None)
        if not isinstance(name, str):
            raise TypeError(f"a signature needs a task or a task name, not {type(task).__name__}")
        if not name:
            raise ValueError("a signature's task name must not be empty")
        if args is not None and not isinstance(args, list | tuple):
            raise TypeError(
                f"signature of {name!r}: args must be a list or tuple, not {type(args).__name__}"
            )
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(
                f"signature of {name!r}: kwargs must be a dict, not {type(kwargs).__name__}"
            )
        if options is not None and not isinstance(options, dict):
            raise TypeError(
                f"signature of {name!r}: options must be a dict, not {type(options).__name__}"
            )
        super().__init__(
            task=name,
            args=list(args or ()),
            kwargs=dict(kwargs or {}),
            options=dict(options or {}),
            immutable=bool(immutable),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        """The signature a dict describes: a task's, or a chain's, group's or chord's."""
        if isinstance(data, Signature):
            return data
        if not isinstance(data, dict) or not isinstance(data.get("task"), str):
            raise TypeError(f"not a signature: {data!r}")
        kind = data.get("subtask_type")
        if kind:
            from .canvas import SUBTASK_TYPES

            maker = SUBTASK_TYPES.get(kind)
            if maker is None:
                raise TypeError(f"unknown signature type {kind!r} in {data!r}")
            return maker.from_dict(data)
        return cls(
            data["task"],
            data.get("args"),
            data.get("kwargs"),
            data.get("options"),
            data.get("immutable", False),
        )

    @property
    def task(self) -> str:
        task: str = self["task"]
        return task

    @property
    def args(self) -> list[Any]:
        args: list[Any] = self["args"]
        return args

    @property
    def kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = self["kwargs"]
        return kwargs

    @property
    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = self["options"]
        return options

    @property
    def immutable(self) -> bool:
        immutable: bool = self["immutable"]
        return immutable

    @property
    def type(self) -> Task:
        """The registered task this signature names."""
        from .registry import tasks_registry

        return tasks_registry.get_task(self.task)

    def clone(
        self, args: tuple | list = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Signature:
        """A copy with ``args`` prepended and ``kwargs``/options merged (unless immutable)."""
        if self.immutable:
            return Signature(self.task, self.args, self.kwargs, {**self.options, **options}, True)
        return Signature(
            self.task,
            [*args, *self.args],
            {**self.kwargs, **(kwargs or {})},
            {**self.options, **options},
            False,
        )

    def apply_async(
        self, args: tuple | list = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AnyResult:
        """Send the task with ``args`` prepended (unless immutable); returns its result."""
        sig = self.clone(args, kwargs)
        return self.type.apply_async(sig.args, sig.kwargs, **{**sig.options, **options})

    def apply(
        self, args: tuple | list = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> EagerResult | GroupResult:
        """Run it in this process (eagerly), as ``Task.apply`` does."""
        sig = self.clone(args, kwargs)
        return self.type.apply(sig.args, sig.kwargs, **{**sig.options, **options})

    def delay(self, *args: Any, **kwargs: Any) -> AnyResult:
        return self.apply_async(args, kwargs)

    # -- canvas -------------------------------------------------------------------------------

    def freeze(self) -> AnyResult:
        """Give it its task id now (kept if it has one) and return its result, unsent."""
        options = self.options
        task_id = options.get("task_id")
        if task_id is None:
            task_id = options["task_id"] = new_id()
        return AsyncResult(task_id, task_name=self.task)

    def set(self, **options: Any) -> Signature:
        """Merge call options into this signature; returns it."""
        self.options.update(options)
        return self

    def link(self, callback: dict[str, Any]) -> dict[str, Any]:
        """Apply ``callback`` when this succeeds, with the result prepended."""
        self._append_option("link", callback)
        return callback

    def link_error(self, errback: dict[str, Any]) -> dict[str, Any]:
        """Apply ``errback`` when this fails."""
        self._append_option("link_error", errback)
        return errback

    def _append_option(self, name: str, sig: dict[str, Any]) -> None:
        current = self.options.get(name)
        listed = (
            [] if current is None else list(current) if isinstance(current, list) else [current]
        )
        self.options[name] = [*listed, sig]

    def errbacks(self) -> list[dict[str, Any]]:
        """The ``link_error`` signatures applied when this fails."""
        current = self.options.get("link_error")
        if current is None:
            return []
        return list(current) if isinstance(current, list | tuple) else [current]

    def set_membership(
        self, group_id: str | None, group_index: int | None, chord: str | None
    ) -> None:
        """Mark this as member ``group_index`` of group ``group_id`` (in chord ``chord``)."""
        for name, value in (("group_id", group_id), ("group_index", group_index)):
            if value is not None:
                self.options[name] = value
        if chord is not None:
            self.options["chord"] = chord

    def __or__(self, other: Any) -> Signature:
        """``a | b``: a chain (a group followed by a task becomes a chord, as in Celery)."""
        from .canvas import chain

        if not isinstance(other, dict):
            return NotImplemented
        return chain(self, other).simplified()

    def copied(self) -> Self:
        """A copy to change and send: new signatures, options, ``args`` lists and ``kwargs``
        dicts all the way down, the argument values shared (they are encoded when sent, and
        a deep copy of thousands of group members' arguments costs more than the send)."""
        copied = Signature.__new__(Signature)  # already checked: no need to check again
        dict.__init__(
            copied,
            task=self["task"],
            args=list(self["args"] or ()),
            kwargs=dict(self["kwargs"] or {}),
            options=copy.deepcopy(self["options"]) if self["options"] else {},
            immutable=self["immutable"],
        )
        return cast(Self, copied)

    def __deepcopy__(self, memo: dict[int, Any]) -> Signature:
        return Signature.from_dict({k: copy.deepcopy(v, memo) for k, v in self.items()})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        sig = self.clone(args, kwargs)
        return self.type(*sig.args, **sig.kwargs)

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.task}{'.si' if self.immutable else '.s'}({', '.join(parts)})"


def signature(
    task: str | Task | dict[str, Any],
    args: tuple | list | None = None,
    kwargs: dict[str, Any] | None = None,
    **options: Any,
) -> Signature:
    """Build a :class:`Signature` from a task, a task name or a signature dict."""
    if isinstance(task, dict):
        return Signature.from_dict(task)
    return Signature(task, args, kwargs, options)
