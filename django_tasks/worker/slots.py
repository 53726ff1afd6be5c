"""The memory a prefork child shares with its parent: the task it is running, that task's
hard deadline, a terminate request, and the journal of outcomes not yet written to the
database."""

from __future__ import annotations

import mmap
import os
import pickle
import signal
import struct
import time
from typing import Any, NamedTuple

_LAYOUT = struct.Struct("=qddi")  # task pk (0: idle), hard deadline, hard limit, signal asked
#: Room for the outcomes a prefork child has not written to the database yet (anonymous
#: shared memory: only the pages used are ever allocated).
JOURNAL_SIZE = 8 * 1024 * 1024
_LENGTH = struct.Struct("=q")
_ENTRY = struct.Struct("=i")
#: After _LAYOUT: the task whose run has ended but whose outcome is not journaled yet (0: none).
_FINISHED = struct.Struct("=q")
#: After _FINISHED: 1 once the child has recorded everything and exits to be replaced (it
#: reached --max-tasks-per-child or --max-memory-per-child), not because it was told to stop.
_RETIRED = struct.Struct("=q")


class SlotState(NamedTuple):
    pk: int
    deadline: float  # time.monotonic() (system-wide on Linux); 0: no hard limit
    hard: float
    terminate: int  # the signal the parent sent to terminate the task; 0: none


class TaskSlot:
    """Shared memory a prefork child writes at each task's start and end, and the parent reads.

    Beside the running task, it holds the child's journal: the outcomes it has not written to
    the database yet. If the child dies, the parent records them, so a child that dies takes
    only the task it was running with it.
    """

    def __init__(self) -> None:
        self._mem = mmap.mmap(-1, _LAYOUT.size + _FINISHED.size + _RETIRED.size)
        self._journal = mmap.mmap(-1, JOURNAL_SIZE)

    def journal(self, entry: dict[str, Any]) -> bool:
        """Append ``entry``; False (nothing written) when it does not fit or cannot be
        pickled: write the outcomes to the database instead.

        Pickle, not JSON: the journal never leaves this child and its parent (anonymous
        shared memory), and pickling an outcome costs a fraction of encoding it as JSON.
        """
        try:
            data = pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # an outcome value pickle cannot take: write it now instead
            return False
        (used,) = _LENGTH.unpack_from(self._journal, 0)
        start = _LENGTH.size + used
        end = start + _ENTRY.size + len(data)
        if end > JOURNAL_SIZE:
            return False
        _ENTRY.pack_into(self._journal, start, len(data))
        self._journal[start + _ENTRY.size : end] = data
        # The length goes last: a reader after a crash sees whole entries only.
        _LENGTH.pack_into(self._journal, 0, used + _ENTRY.size + len(data))
        return True

    def clear_journal(self) -> None:
        """The journaled outcomes are in the database now."""
        _LENGTH.pack_into(self._journal, 0, 0)

    def read_journal(self) -> list[dict[str, Any]]:
        """The outcomes journaled since the last :meth:`clear_journal`, oldest first."""
        (used,) = _LENGTH.unpack_from(self._journal, 0)
        entries, offset = [], _LENGTH.size
        while offset < _LENGTH.size + used:
            (size,) = _ENTRY.unpack_from(self._journal, offset)
            offset += _ENTRY.size
            entries.append(pickle.loads(bytes(self._journal[offset : offset + size])))
            offset += size
        return entries

    def begin(self, pk: int, hard: float | None) -> None:
        deadline = time.monotonic() + hard if hard else 0.0
        # The pk goes last: a reader that sees it sees the rest.
        _LAYOUT.pack_into(self._mem, 0, 0, deadline, hard or 0.0, 0)
        _LAYOUT.pack_into(self._mem, 0, pk, deadline, hard or 0.0, 0)

    def end(self) -> None:
        state = self.read()
        # The task stays named until its outcome is journaled (:meth:`settled`): a child that
        # dies in between has run it, so it is not one to hand on as unstarted.
        _FINISHED.pack_into(self._mem, _LAYOUT.size, state.pk)
        _LAYOUT.pack_into(self._mem, 0, 0, 0.0, 0.0, state.terminate)

    def settled(self) -> None:
        """The task that ended last has its outcome journaled (or written)."""
        _FINISHED.pack_into(self._mem, _LAYOUT.size, 0)

    def finished(self) -> int:
        """The task that ended but whose outcome is not journaled yet; 0 for none."""
        pk: int = _FINISHED.unpack_from(self._mem, _LAYOUT.size)[0]
        return pk

    def retire(self) -> None:
        """The child exits to be replaced; nothing it claimed is left to settle."""
        _RETIRED.pack_into(self._mem, _LAYOUT.size + _FINISHED.size, 1)

    def retired(self) -> bool:
        flag: int = _RETIRED.unpack_from(self._mem, _LAYOUT.size + _FINISHED.size)[0]
        return flag == 1

    def read(self) -> SlotState:
        return SlotState(*_LAYOUT.unpack_from(self._mem, 0))

    def ask_terminate(self, signum: int) -> None:
        state = self.read()
        _LAYOUT.pack_into(self._mem, 0, state.pk, state.deadline, state.hard, signum)


def terminate_handler(slot: TaskSlot, otherwise: Any) -> Any:
    """A child's handler for SIGTERM/SIGINT: die of it if the parent is terminating the task,
    else ``otherwise`` (e.g. a warm shutdown)."""

    def handle(signum: int, frame: Any) -> None:
        if slot.read().terminate == signum:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if callable(otherwise):
            otherwise(signum, frame)

    return handle
