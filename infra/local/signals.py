"""Stop requests by signal (SIGINT, SIGTERM) for the local processes, taken without any lock.

Python runs a signal's handler in the main thread between two bytecodes, which may be inside the
previous handler. A handler that sets a ``threading.Event`` or starts a thread takes a lock that is
not reentrant: a second signal arriving while the first handler holds it waits for it forever.
``make run`` met that: a group kill delivers two SIGTERMs at once (the shell's and make's), and the
stack, stuck in its own handler, kept its ports and ignored every later SIGTERM.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType


class StopRequests:
    """The signals received so far; the main thread polls them."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def install(self, *signals: signal.Signals) -> StopRequests:
        for signum in signals:
            signal.signal(signum, self.handle)
        return self

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        # list.append takes no lock the interrupted code could hold.
        self.received.append(signum)

    def wait(self, poll_seconds: float, *, until: Callable[[], bool] = lambda: False) -> None:
        """Until a stop is requested or ``until()`` holds. A sleep, not a lock: a signal interrupts
        it and its handler runs at once, even while other threads keep the interpreter busy."""
        while not self.received and not until():
            time.sleep(poll_seconds)
