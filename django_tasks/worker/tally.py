"""What a consumer loop tells its supervisor for the worker's row: tasks done and failed,
and the task it is running. Anonymous shared memory, so the same counters serve a thread
and a forked child; each loop writes only its own, so no lock is needed."""

from __future__ import annotations

import mmap
import struct
from typing import NamedTuple

from .. import states

_LAYOUT = struct.Struct("=qqq")  # done, failed, running task pk (0: idle)


class TallyState(NamedTuple):
    done: int
    failed: int
    running: int


class Tally:
    """One consumer loop's counters."""

    def __init__(self) -> None:
        self._mem = mmap.mmap(-1, _LAYOUT.size)

    def begin(self, pk: int) -> None:
        done, failed, _ = self.read()
        _LAYOUT.pack_into(self._mem, 0, done, failed, pk)

    def end(self, state: str) -> None:
        """The running task's run ended in ``state`` (counted when it is a final state)."""
        done, failed, _ = self.read()
        if state in states.READY_STATES:
            done += 1
            failed += state == states.FAILURE
        _LAYOUT.pack_into(self._mem, 0, done, failed, 0)

    def read(self) -> TallyState:
        return TallyState(*_LAYOUT.unpack_from(self._mem, 0))

    def close(self) -> None:
        self._mem.close()


class Tallies:
    """A pool's tallies by lease token; the counts of loops that ended are kept as totals."""

    def __init__(self) -> None:
        self._by_token: dict[str, Tally] = {}
        self._retired_done = 0
        self._retired_failed = 0

    def new(self, token: str) -> Tally:
        tally = self._by_token[token] = Tally()
        return tally

    def retire(self, token: str) -> None:
        """The loop holding ``token`` ended: keep its counts, free its memory."""
        tally = self._by_token.pop(token, None)
        if tally is not None:
            state = tally.read()
            self._retired_done += state.done
            self._retired_failed += state.failed
            tally.close()

    def totals(self, live_tokens: list[str]) -> tuple[int, int, list[int]]:
        """``(done, failed, pks of running tasks)`` over every loop, running ones only for
        ``live_tokens``."""
        done, failed, running = self._retired_done, self._retired_failed, []
        for token, tally in self._by_token.items():
            state = tally.read()
            done += state.done
            failed += state.failed
            if state.running and token in live_tokens:
                running.append(state.running)
        return done, failed, running
