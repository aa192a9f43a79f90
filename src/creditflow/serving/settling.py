"""When a queue that requests join a few per event-loop iteration is acted on: once the loop has stopped bringing
company (no timer).

A callback scheduled with `loop.call_soon` runs at the front of the next loop iteration, before the handlers of the
requests that iteration's I/O poll read. `Settling.settle` puts itself at the back of the ready queue once more while
the last iteration brought someone, so those handlers join first; it acts once an iteration brought no one, after
POLLS iterations, or once `max_rows` rows wait. A request alone is acted on two iterations after it joined. Used by
the coalescer (one model call for the requests read together) and by the feature store (one MGET for their ids).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

POLLS = 8  # at most this many loop iterations waited for company


class Settling:
    """Calls `act` for a queue once it has settled; `joined` for each request that joins it."""

    __slots__ = ("act", "max_rows", "arrived", "seen", "rows", "polls")

    def __init__(self, act: Callable[[], None], max_rows: int):
        self.act, self.max_rows = act, max_rows
        self.arrived = self.seen = self.rows = self.polls = 0  # requests and rows waiting; requests at the last look

    def joined(self, loop: asyncio.AbstractEventLoop, rows: int) -> None:
        """A request of `rows` rows joined the queue (the first one schedules `settle`)."""
        if not self.arrived:
            loop.call_soon(self.settle, loop)
        self.arrived += 1
        self.rows += rows

    def settle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Act, or look again one loop iteration later while the last one brought company."""
        if self.arrived != self.seen and self.polls < POLLS and self.rows < self.max_rows:
            self.seen, self.polls = self.arrived, self.polls + 1
            loop.call_soon(self.settle, loop)
            return
        self.arrived = self.seen = self.rows = self.polls = 0
        self.act()
