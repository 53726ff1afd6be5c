"""The canvas: chains, groups and chords, with Celery's names and behaviour.

Each is a :class:`~django_tasks.signature.Signature` (a JSON dict, so it can travel as a
``link``), and they nest. How they run:

* a **chain** sends its first step; each step carries the next one as its ``link``, so a
  step is sent only once the one before it has succeeded, with that result prepended;
* a **group** is stored (``GroupResult.restore``) and its tasks sent together, in one
  transaction (one bulk write on the database transport);
* a **chord** is a group whose row counts the header tasks still to succeed: the worker
  that records the last success sends the body in the same transaction
  (:mod:`django_tasks.store.canvas`), so the body is sent exactly once.
"""

from __future__ import annotations

import copy
import gc
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Self, cast

from django.db import transaction

from . import states
from .conf import tasks_settings
from .context import Request
from .exceptions import ChordError
from .ids import new_id
from .links import apply_errback, run_followups
from .messages import exception_to_dict
from .result import AsyncResult, EagerResult, GroupResult
from .signature import AnyResult, Signature

if TYPE_CHECKING:
    from .transports import OutgoingTask

__all__ = [
    "chain",
    "chord",
    "chord_failed",
    "chunks",
    "group",
    "send_chord_body",
    "xmap",
    "xstarmap",
]

#: The built-in tasks (:mod:`django_tasks.maps`) that ``Task.map`` and ``Task.starmap`` send.
MAP_TASK = "django_tasks.map"
STARMAP_TASK = "django_tasks.starmap"

#: Options that place a task in a canvas; each kind of signature passes them on its own way.
MEMBERSHIP = ("group_id", "group_index", "chord")


def _listed(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _signatures(tasks: Iterable[Any]) -> list[Signature]:
    sigs = []
    for task in tasks:
        if not isinstance(task, dict) and callable(getattr(task, "s", None)):
            task = task.s()
        sig = Signature.from_dict(task)
        sigs.append(sig.group() if isinstance(sig, chunks) else sig)
    return sigs


def _copied(value: Any) -> Any:
    """``value`` (a canvas's kwarg: a signature, a list of them, or None) copied to send."""
    if isinstance(value, Signature):
        return value.copied()
    if isinstance(value, list):
        return [_copied(item) for item in value]
    return copy.deepcopy(value)


def _tasks_argument(tasks: tuple[Any, ...]) -> Iterable[Any]:
    """``chain(a, b)``, ``chain([a, b])`` and ``chain(generator)`` all mean the same."""
    if len(tasks) == 1 and not isinstance(tasks[0], dict):
        return tasks[0]  # type: ignore[no-any-return]
    return tasks


class _Canvas(Signature):
    """What chains, groups and chords share: built from dicts, copied deeply."""

    subtask_type = ""

    def _init(self, name: str, kwargs: dict[str, Any], options: dict[str, Any]) -> None:
        dict.__init__(
            self,
            task=name,
            args=[],
            kwargs=kwargs,
            options=dict(options),
            immutable=False,
            subtask_type=self.subtask_type,
        )

    def clone(
        self, args: tuple | list = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Signature:
        """A copy (:meth:`copied`), ``args``/``kwargs`` given to the tasks it starts with
        (a chain's first step, each task of a group or a chord's header), options merged."""
        copied = self.copied()
        copied.options.update(options)
        if args or kwargs:
            for first in _first_tasks(copied):
                if not first.immutable:
                    first["args"] = [*args, *first.args]
                    first["kwargs"] = {**first.kwargs, **(kwargs or {})}
        return copied

    def copied(self) -> Self:
        """A copy to change and send; the signatures it holds are copied too."""
        kwargs = {name: _copied(value) for name, value in self.kwargs.items()}
        options = copy.deepcopy(self.options)
        return cast(Self, Signature.from_dict({**self, "kwargs": kwargs, "options": options}))

    @property
    def type(self) -> Any:
        raise TypeError(f"a {self.subtask_type} is not a task")

    def __call__(self, *args: Any, **kwargs: Any) -> AnyResult:
        """Calling a chain, group or chord sends it (as in Celery)."""
        return self.apply_async(args, kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> AnyResult:
        return self.apply_async(args, kwargs)

    def _eager(self, options: dict[str, Any]) -> bool:
        return bool(tasks_settings.TASK_ALWAYS_EAGER)

    def _apply_eagerly(
        self, args: tuple | list, kwargs: dict[str, Any] | None, options: dict[str, Any]
    ) -> AnyResult:
        """``TASK_ALWAYS_EAGER``: run it here, now or (``on_commit``) once the transaction
        commits; until then its results read ``PENDING``."""
        if not options.pop("on_commit", False):
            return self.apply(args, kwargs, **options)
        sent = self.copied()
        pending = _pending_like(sent.freeze())  # the ids the run will use
        transaction.on_commit(lambda: _take(pending, sent.apply(args, kwargs, **options)))
        return pending


class _TaskList(_Canvas):
    """A canvas over a list of signatures (``kwargs["tasks"]``): a chain or a group."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        return cls(data["kwargs"]["tasks"], **(data.get("options") or {}))

    @property
    def tasks(self) -> list[Signature]:
        tasks: list[Signature] = self["kwargs"]["tasks"]
        return tasks


class chain(_TaskList):
    """Steps run one after another, each getting the previous result: ``chain(a, b, c)``."""

    subtask_type = "chain"

    def __init__(self, *tasks: Any, **options: Any) -> None:
        steps: list[Signature] = []
        for sig in _signatures(_tasks_argument(tasks)):
            if isinstance(sig, chain):
                steps.extend(step.copied() for step in sig.tasks)
            else:
                steps.append(sig)
        self._init("celery.chain", {"tasks": _upgrade(steps)}, options)

    def simplified(self) -> Signature:
        """The one step of a one-step chain (``group | task`` is then a chord), else self."""
        return self.tasks[0] if len(self.tasks) == 1 and not self.options else self

    def __or__(self, other: Any) -> Signature:
        if not isinstance(other, dict):
            return NotImplemented
        return chain(*self.tasks, other, **self.options).simplified()

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks) or "chain()"

    # -- canvas -------------------------------------------------------------------------------

    def link(self, callback: dict[str, Any]) -> dict[str, Any]:
        return self.tasks[-1].link(callback)

    def link_error(self, errback: dict[str, Any]) -> dict[str, Any]:
        for task in self.tasks:
            task.link_error(errback)
        return errback

    def errbacks(self) -> list[dict[str, Any]]:
        return self.tasks[0].errbacks() if self.tasks else []

    def set_membership(
        self, group_id: str | None, group_index: int | None, chord: str | None
    ) -> None:
        # Any step failing fails the chord; only the last step's result fills the slot.
        for task in self.tasks[:-1]:
            task.set_membership(None, None, chord)
        self.tasks[-1].set_membership(group_id, group_index, chord)

    def freeze(self) -> AnyResult:
        """Give every step its id now; the last step's result, its parents linked."""
        previous: AnyResult = None
        for task in self.tasks:
            result = task.freeze()
            _set_parent(task, result, previous)
            previous = result
        return previous

    def _prepared(self, options: dict[str, Any]) -> tuple[chain, dict[str, Any], AnyResult]:
        """A copy to send, with the options placed where they belong, and its result."""
        if not self.tasks:
            raise ValueError("chain(): a chain needs at least one task")
        sent = self.copied()
        options = {**sent.options, **options}
        sent.options.clear()
        task_id = options.pop("task_id", None)
        if task_id is not None:
            _set_result_id(sent.tasks[-1], task_id)
        for callback in _listed(options.pop("link", None)):
            sent.link(callback)
        for errback in _listed(options.pop("link_error", None)):
            sent.link_error(errback)
        membership = [options.pop(name, None) for name in MEMBERSHIP]
        if any(value is not None for value in membership):
            sent.set_membership(*membership)
        result = sent.freeze()
        return sent, options, result

    def apply_async(
        self, args: tuple | list = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AnyResult:
        """Send the first step (with ``args``); each next step follows as its link."""
        if self._eager(options):
            return self._apply_eagerly(args, kwargs, options)
        sent, options, result = self._prepared(options)
        steps = sent.tasks
        for before, after in zip(reversed(steps[:-1]), reversed(steps[1:]), strict=True):
            before.link(after)
        steps[0].apply_async(args, kwargs, **options)
        return result

    def apply(
        self, args: tuple | list = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AnyResult:
        """Run the steps here, one after another; a failure stops the chain."""
        options.pop("on_commit", None)
        sent, options, result = self._prepared(options)
        previous: AnyResult = None
        value_args: tuple | list = args
        for index, step in enumerate(sent.tasks):
            current = step.apply(value_args, kwargs if index == 0 else None, **options)
            options = {}
            _link_parent(current, previous)
            previous = current
            if not _succeeded(current):
                for rest in sent.tasks[index + 1 :]:
                    pending = _pending_result(rest)
                    _link_parent(pending, previous)
                    previous = pending
                break
            value_args = (current.get(disable_sync_subtasks=False),)
        return previous if previous is not None else result


class group(_TaskList):
    """Tasks run in parallel; the result is a :class:`GroupResult` in the group's order."""

    subtask_type = "group"

    def __init__(self, *tasks: Any, **options: Any) -> None:
        members: list[Signature] = []
        for sig in _signatures(_tasks_argument(tasks)):
            if isinstance(sig, group):  # nested groups are flattened
                members.extend(member.copied() for member in sig.tasks)
            else:
                members.append(sig)
        self._init("celery.group", {"tasks": members}, options)

    def __repr__(self) -> str:
        return f"group([{', '.join(repr(t) for t in self.tasks)}])"

    def link(self, callback: dict[str, Any]) -> dict[str, Any]:
        for task in self.tasks:
            task.link(callback)
        return callback

    def link_error(self, errback: dict[str, Any]) -> dict[str, Any]:
        for task in self.tasks:
            task.link_error(errback)
        return errback

    def set_membership(
        self, group_id: str | None, group_index: int | None, chord: str | None
    ) -> None:
        if group_index is not None:
            raise TypeError(
                "a group cannot end a chain inside a group or a chord's header: make it a chord"
            )
        for task in self.tasks:
            task.set_membership(None, None, chord)

    def freeze(self) -> GroupResult:
        group_id = self.options.get("task_id")
        if group_id is None:
            group_id = self.options["task_id"] = new_id()
        return GroupResult(group_id, [task.freeze() for task in self.tasks])

    def _prepared(
        self, options: dict[str, Any], chord_id: str | None = None
    ) -> tuple[group, dict[str, Any], GroupResult]:
        sent = self.copied()
        options = {**sent.options, **options}
        sent.options.clear()
        group_id = options.pop("group_id", None) or options.pop("task_id", None)
        options.pop("task_id", None)
        options.pop("group_index", None)
        outer_chord = options.pop("chord", None)
        if group_id is not None:
            sent.options["task_id"] = group_id
        for callback in _listed(options.pop("link", None)):
            sent.link(callback)
        for errback in _listed(options.pop("link_error", None)):
            sent.link_error(errback)
        result = sent.freeze()
        for index, task in enumerate(sent.tasks):
            task.set_membership(result.id, index, chord_id or outer_chord)
        return sent, options, result

    def apply_async(
        self, args: tuple | list = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> GroupResult:
        """Store the group and send its tasks, all or nothing, in one transaction."""
        if self._eager(options):
            eager: GroupResult = self._apply_eagerly(args, kwargs, options)
            return eager
        with _collector_paused():
            sent, options, result = self._prepared(options)
            sent.send(result, args, kwargs, options)
        return result

    def send(
        self,
        result: GroupResult,
        args: tuple | list,
        kwargs: dict[str, Any] | None,
        options: dict[str, Any],
        chord_body: Signature | None = None,
    ) -> None:
        """Store the group row (with a chord's body) and send the prepared members."""
        if options.pop("on_commit", False):
            transaction.on_commit(
                partial(send_group, self.tasks, result, args, kwargs, options, chord_body)
            )
        else:
            send_group(self.tasks, result, args, kwargs, options, chord_body)

    def apply(
        self, args: tuple | list = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> GroupResult:
        """Run the tasks here, in order."""
        options.pop("on_commit", None)
        sent, options, result = self._prepared(options)
        results = [task.apply(args, kwargs, **options) for task in sent.tasks]
        return GroupResult(result.id, results)


class chord(_Canvas):
    """A group (the header) whose results, in order, go to a body once all have succeeded."""

    subtask_type = "chord"

    def __init__(self, header: Any, body: dict[str, Any] | None = None, **options: Any) -> None:
        if isinstance(header, group):
            members = header
        else:
            members = group(header if isinstance(header, dict) else list(header))
        kwargs: dict[str, Any] = {"header": members, "body": None}
        if body is not None:
            kwargs["body"] = _signatures([body])[0]
        self._init("celery.chord", kwargs, options)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        kwargs = data["kwargs"]
        return cls(
            Signature.from_dict(kwargs["header"]), kwargs.get("body"), **(data.get("options") or {})
        )

    @property
    def header(self) -> group:
        header: group = self["kwargs"]["header"]
        return header

    @property
    def body(self) -> Signature | None:
        body: Signature | None = self["kwargs"]["body"]
        return body

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def __call__(self, body: Any = None, **options: Any) -> AnyResult:
        """``chord(header)(body)`` sends the chord with that body (Celery's form)."""
        if body is not None:
            return chord(self.header, body, **self.options).apply_async((), None, **options)
        return self.apply_async((), None, **options)

    def _body(self) -> Signature:
        if self.body is None:
            raise ValueError("chord(): the chord has no body: chord(header, body)")
        return self.body

    def link(self, callback: dict[str, Any]) -> dict[str, Any]:
        return self._body().link(callback)

    def link_error(self, errback: dict[str, Any]) -> dict[str, Any]:
        return self._body().link_error(errback)

    def errbacks(self) -> list[dict[str, Any]]:
        return self._body().errbacks()

    def set_membership(
        self, group_id: str | None, group_index: int | None, chord: str | None
    ) -> None:
        # The body fills the outer slot; its failure (a ChordError, say) fails the outer chord.
        self._body().set_membership(group_id, group_index, chord)

    def freeze(self) -> AnyResult:
        header = self.header.freeze()
        result = self._body().freeze()
        _link_parent(result, header)
        return result

    def _prepared(
        self, options: dict[str, Any]
    ) -> tuple[group, Signature, dict[str, Any], AnyResult]:
        sent = self.copied()
        options = {**sent.options, **options}
        body = sent._body()
        task_id = options.pop("task_id", None)
        if task_id is not None:
            _set_result_id(body, task_id)
        for callback in _listed(options.pop("link", None)):
            body.link(callback)
        for errback in _listed(options.pop("link_error", None)):
            body.link_error(errback)
        membership = [options.pop(name, None) for name in MEMBERSHIP]
        if any(value is not None for value in membership):
            body.set_membership(*membership)
        header_id = sent.header.options.get("task_id") or new_id()
        header, options, header_result = sent.header._prepared(
            {**options, "task_id": header_id}, chord_id=header_id
        )
        result = body.freeze()
        _link_parent(result, header_result)
        return header, body, options, result

    def apply_async(
        self, args: tuple | list = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AnyResult:
        """Store the chord and send its header; the body follows the last header success."""
        if self._eager(options):
            return self._apply_eagerly(args, kwargs, options)
        with _collector_paused():
            header, body, options, result = self._prepared(options)
            header.send(_parent_of(result), args, kwargs, options, chord_body=body)
        return result

    def apply(
        self, args: tuple | list = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AnyResult:
        """Run the header here, then the body with its results (or fail it, ChordError)."""
        options.pop("on_commit", None)
        header, body, options, result = self._prepared(options)
        header_result = GroupResult(
            _parent_of(result).id, [task.apply(args, kwargs, **options) for task in header.tasks]
        )
        failed = next((r for r in header_result.results if not _succeeded(r)), None)
        if failed is None:
            values = header_result.get(disable_sync_subtasks=False)
            outcome = body.apply((values,))
        else:
            exc = chord_error(failed.id, failed.result)
            outcome = _failed_result(body, exc)
            request = Request(id=outcome.id, task=body.task, called_directly=False)
            run_followups(partial(apply_errback, sig, request, exc, "") for sig in body.errbacks())
        _link_parent(outcome, header_result)
        return outcome


def _upgrade(steps: list[Signature]) -> list[Signature]:
    """A group followed by more steps becomes a chord whose body is the rest (Celery's rule)."""
    for index, step in enumerate(steps[:-1]):
        if isinstance(step, group):
            rest = steps[index + 1 :]
            body = rest[0] if len(rest) == 1 else chain(*rest)
            return [*steps[:index], chord(step, body)]
    return steps


def _set_result_id(sig: Signature, task_id: str) -> None:
    """Give the task whose result stands for ``sig`` the id ``task_id``."""
    if isinstance(sig, chain):
        _set_result_id(sig.tasks[-1], task_id)
    elif isinstance(sig, chord):
        _set_result_id(sig._body(), task_id)
    else:
        sig.options["task_id"] = task_id


def _first_tasks(sig: Signature) -> list[Signature]:
    """The plain tasks a canvas starts with (a group's or a chord header's: each member's)."""
    if isinstance(sig, chain):
        return _first_tasks(sig.tasks[0]) if sig.tasks else []
    if isinstance(sig, group):
        return [first for member in sig.tasks for first in _first_tasks(member)]
    if isinstance(sig, chord):
        return _first_tasks(sig.header)
    return [sig]


def _set_parent(sig: Signature, result: AnyResult, previous: AnyResult) -> None:
    _link_parent(result, previous)
    if isinstance(previous, AsyncResult):
        for first in _first_tasks(sig):
            first.options["parent_id"] = previous.id


def _link_parent(result: AnyResult, parent: AnyResult) -> None:
    """Set ``result.parent`` where the result has no parent yet (a chord's has its header)."""
    if result is None or parent is None:
        return
    node = result
    while node._parent is not None and node._parent is not parent:
        node = node._parent
    if node._parent is None and node is not parent:
        node._parent = parent


def _parent_of(result: AnyResult) -> GroupResult:
    parent: GroupResult = result._parent
    while not isinstance(parent, GroupResult):
        parent = parent._parent
    return parent


_pauses = threading.Lock()
_paused = 0  # sends in progress, in every thread, that paused the collector
_resume = False  # the collector was on when the first of them began


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a group or chord is prepared and sent.

    Sending thousands of members makes tens of thousands of objects that live until the send
    is over, so the collector runs full collections over the whole heap during the send: a
    fifth to a third of a group's send time (``docs/performance.md``). Those objects are
    freed by reference counting all the same; anything cyclic waits for the next collection.
    The collector is turned back on when the last concurrent send ends, and only if it was
    on before the first began."""
    global _paused, _resume
    with _pauses:
        if _paused == 0:
            _resume = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        with _pauses:
            _paused -= 1
            if _paused == 0 and _resume:
                gc.enable()


def send_group(
    members: list[Signature],
    result: GroupResult,
    args: tuple | list,
    kwargs: dict[str, Any] | None,
    options: dict[str, Any],
    chord_body: Signature | None,
) -> None:
    """Store group ``result`` (with a chord's body) and send its prepared ``members``, in one
    transaction: a group is sent all or nothing."""
    from .store import create_group

    body = None
    body_task_id = None
    if chord_body is not None:
        body = dict(chord_body)
        body_task_id = chord_body.freeze().id
    with _collector_paused(), transaction.atomic():  # paused again when sent on commit
        create_group(result.id, [r.id for r in result.results], body, body_task_id)
        send_members(members, args, kwargs, options)
        if chord_body is not None and not members:
            send_chord_body(body or {}, [])  # an empty header: the body runs at once


def _succeeded(result: AnyResult) -> bool:
    return bool(result.successful())


def _pending_result(sig: Signature) -> AnyResult:
    frozen = sig.freeze()
    if isinstance(frozen, GroupResult):
        return frozen
    return EagerResult(frozen.id, states.PENDING, None, task_name=frozen.name)


def _pending_like(result: AnyResult) -> AnyResult:
    """``PENDING`` eager results with the ids and shape of ``result`` (and its parents)."""
    if result is None:
        return None
    parent = _pending_like(result._parent)
    if isinstance(result, GroupResult):
        return GroupResult(result.id, [_pending_like(r) for r in result.results], parent)
    pending = EagerResult(result.id, states.PENDING, None, task_name=result._task_name)
    pending._parent = parent
    return pending


def _take(pending: AnyResult, actual: AnyResult) -> None:
    """Make the ``PENDING`` stand-ins ``pending`` become what was run, ``actual``."""
    if pending is None or actual is None:
        return
    if isinstance(pending, GroupResult):
        pending.results = list(actual.results)
    else:
        pending.take(actual)
    pending._parent = actual._parent


def _failed_result(sig: Signature, exc: BaseException) -> EagerResult:
    frozen = sig.freeze()
    return EagerResult(
        frozen.id,
        states.FAILURE,
        exc,
        task_name=getattr(frozen, "name", None),
        exc_dict=exception_to_dict(exc),
    )


def chord_error(task_id: str, exc: Any) -> ChordError:
    """Celery's ``ChordError``: which header task failed, and with what."""
    if isinstance(exc, BaseException):
        return ChordError(f"Dependency {task_id} raised {exc!r}")
    return ChordError(f"Dependency {task_id} did not succeed")


def send_members(
    members: list[Signature],
    args: tuple | list,
    kwargs: dict[str, Any] | None,
    options: dict[str, Any],
) -> None:
    """Send a group's members (inside the caller's transaction): its plain tasks in bulk
    (one multi-row ``INSERT`` per 1,000 on the database transport), chains and chords on
    their own.

    Plain tasks are prepared as the bulk write takes them, so that on PostgreSQL this
    process checks and encodes the next members while the server stores the last ones. A
    member that cannot be sent ends the bulk write there and is raised once it is over; the
    caller's transaction takes back what was written."""
    from .options import BulkSend
    from .registry import tasks_registry
    from .transports import get_transport

    nested: list[Signature] = []
    refused: list[BaseException] = []
    bulk = BulkSend()

    def prepared() -> Iterator[OutgoingTask]:
        try:
            for member in members:
                task = None if isinstance(member, _Canvas) else tasks_registry.get(member.task)
                if task is None:  # a canvas, or a task this process does not know (by name)
                    nested.append(member)
                    continue
                sig = member.clone(args, kwargs) if args or kwargs else member
                yield task.prepare_member(sig.args, sig.kwargs, {**sig.options, **options}, bulk)
        except GeneratorExit:  # the write failed and let go of the rest
            raise
        except BaseException as exc:  # raised below, not inside the database's bulk write
            refused.append(exc)

    get_transport().send_many(prepared(), bulk)
    if refused:
        raise refused[0]
    for member in nested:
        member.apply_async(args, kwargs, **options)


# -- the store's calls, once a chord is decided (registered in AppConfig.ready) ---------------


def send_chord_body(body: dict[str, Any], results: list[Any]) -> None:
    """Send a chord's body with its header's results, in the transaction that decided it."""
    Signature.from_dict(body).apply_async((results,))


def chord_failed(body: dict[str, Any], body_task_id: str, exc: BaseException) -> None:
    """Apply the errbacks of a chord's body, which failed with ``exc`` (a ``ChordError``)."""
    sig = Signature.from_dict(body)
    request = Request(id=body_task_id, task=sig.task, called_directly=False)
    run_followups(partial(apply_errback, errback, request, exc, "") for errback in sig.errbacks())


# -- map, starmap and chunks --------------------------------------------------------------


class _basemap(Signature):
    """One task that calls ``task`` for each item of ``it``, in the worker that runs it."""

    subtask_type = ""
    task_name = ""

    def __init__(self, task: Any, it: Iterable[Any], **options: Any) -> None:
        sig = _mapped(task)
        if "queue" not in options:
            # Routed as the task it calls (Celery routes it by that task's name).
            from .registry import tasks_registry

            mapped = tasks_registry.get(sig.task)
            if mapped is not None and mapped.queue is not None:
                options["queue"] = mapped.queue
        dict.__init__(
            self,
            task=self.task_name,
            args=[],
            kwargs={"task": sig, "it": self._items(it)},
            options=dict(options),
            immutable=True,
            subtask_type=self.subtask_type,
        )

    @staticmethod
    def _items(it: Iterable[Any]) -> list[Any]:
        if isinstance(it, str | bytes | dict) or not isinstance(it, Iterable):
            raise TypeError(f"map and starmap take a list of items, not {type(it).__name__}")
        return list(it)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        kwargs = data["kwargs"]
        return cls(kwargs["task"], kwargs["it"], **(data.get("options") or {}))


def _mapped(task: Any) -> Signature:
    """The signature of the task a map, starmap or chunks calls: a task, not a canvas."""
    (sig,) = _signatures([task])
    if sig.get("subtask_type"):
        raise TypeError(f"map, starmap and chunks call a task, not a {sig['subtask_type']}")
    return sig


class xmap(_basemap):
    """``add.map([1, 2])``: one task whose result is ``[add(1), add(2)]``."""

    subtask_type = "xmap"
    task_name = MAP_TASK

    def __repr__(self) -> str:
        return f"[{self.kwargs['task']['task']}(x) for x in {self.kwargs['it']!r}]"


class xstarmap(_basemap):
    """``add.starmap([(1, 2), (3, 4)])``: one task whose result is ``[add(1, 2), add(3, 4)]``."""

    subtask_type = "xstarmap"
    task_name = STARMAP_TASK

    @staticmethod
    def _items(it: Iterable[Any]) -> list[Any]:
        items = _basemap._items(it)
        for index, item in enumerate(items):
            if not isinstance(item, list | tuple):
                raise TypeError(
                    f"starmap: item {index} must be a list or tuple of arguments, "
                    f"not {type(item).__name__}"
                )
        return [list(item) for item in items]  # as JSON will give them back

    def __repr__(self) -> str:
        return f"[{self.kwargs['task']['task']}(*x) for x in {self.kwargs['it']!r}]"


class chunks(Signature):
    """``add.chunks(items, 10)``: ``items`` split into a group of ``starmap`` tasks of 10
    each; its result is a :class:`GroupResult` whose ``get()`` is a list of lists."""

    subtask_type = "chunks"

    def __init__(self, task: Any, it: Iterable[Any], n: int, **options: Any) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"chunks: n must be a positive integer, not {n!r}")
        sig = _mapped(task)
        dict.__init__(
            self,
            task="celery.chunks",
            args=[],
            kwargs={"task": sig, "it": xstarmap._items(it), "n": n},
            options=dict(options),
            immutable=True,
            subtask_type=self.subtask_type,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        kwargs = data["kwargs"]
        return cls(kwargs["task"], kwargs["it"], kwargs["n"], **(data.get("options") or {}))

    @property
    def type(self) -> Any:
        raise TypeError("chunks is not a task: send it, or turn it into a group with .group()")

    def group(self) -> group:
        """The group of ``starmap`` tasks it sends, one per chunk."""
        task, items, n = self.kwargs["task"], self.kwargs["it"], self.kwargs["n"]
        parts = [items[start : start + n] for start in range(0, len(items), n)]
        return group([xstarmap(task, part) for part in parts], **self.options)

    def __call__(self, *args: Any, **options: Any) -> GroupResult:
        """Calling it sends it, as in Celery (its tasks take their arguments from ``it``)."""
        return self.apply_async(args, **options)

    def apply_async(
        self, args: tuple | list = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> GroupResult:
        _no_arguments(args, kwargs)
        result: GroupResult = self.group().apply_async(**options)
        return result

    def apply(
        self, args: tuple | list = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> GroupResult:
        _no_arguments(args, kwargs)
        result: GroupResult = self.group().apply(**options)
        return result

    def __repr__(self) -> str:
        return f"{self.kwargs['task']['task']}.chunks({self.kwargs['it']!r}, {self.kwargs['n']})"


def _no_arguments(args: Any, kwargs: Any) -> None:
    # Celery ignores them (its chunks' tasks are immutable); dropping them silently hides a
    # mistake, so they are refused.
    if args or kwargs:
        raise TypeError("chunks takes no arguments when sent; its items are the arguments")


SUBTASK_TYPES: dict[str, type[Signature]] = {
    "chain": chain,
    "group": group,
    "chord": chord,
    "xmap": xmap,
    "xstarmap": xstarmap,
    "chunks": chunks,
}
