"""The local processes' stop handlers take no lock: a second signal can arrive inside the first."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

import pytest

from infra.local import stack
from infra.local.signals import StopRequests


def _handled_with_a_signal_at_every_line(handler: Any, within_seconds: float = 5) -> bool:
    """Run ``handler`` as a first signal's, with a second signal's handler run at each line of code
    the first one executes (Python runs a pending handler between two bytecodes of the main thread).
    Whether both ended in time (a handler waiting on a lock its own thread holds never does)."""
    done = threading.Event()

    def run() -> None:
        nested = False

        def trace(frame: FrameType, event: str, _arg: Any) -> Any:
            nonlocal nested
            if event == "line" and not nested:
                nested = True
                handler(signal.SIGTERM, frame)
                nested = False
            return trace

        sys.settrace(trace)
        try:
            handler(signal.SIGTERM, None)
        finally:
            sys.settrace(None)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(within_seconds)


def test_a_second_signal_inside_the_stop_handler_neither_blocks_nor_is_lost() -> None:
    stops = StopRequests()
    assert _handled_with_a_signal_at_every_line(stops.handle)
    assert stops.received and set(stops.received) == {signal.SIGTERM}


def test_the_check_itself_catches_a_handler_that_takes_a_lock() -> None:
    """What `make run` had: ``threading.Event.set`` in the handler. A group kill of `make run` sent two
    SIGTERMs at once, and the stack hung in its own handler, deaf to every later one."""
    stop = threading.Event()
    assert not _handled_with_a_signal_at_every_line(lambda signum, frame: stop.set(), within_seconds=1)


def test_the_local_stacks_handlers_survive_a_second_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    installed: dict[int, Any] = {}
    monkeypatch.setattr(signal, "signal", lambda signum, handler: installed.__setitem__(signum, handler))

    class Started(Exception):
        pass

    def start_stack(**_: Any) -> None:
        raise Started  # main() has installed its handlers by now

    monkeypatch.setattr(stack, "start_stack", start_stack)
    with pytest.raises(Started):
        stack.main(["--api-port", "1", "--aws-port", "2", "--identity-port", "3"])
    assert set(installed) == {signal.SIGINT, signal.SIGTERM}
    assert all(_handled_with_a_signal_at_every_line(handler) for handler in installed.values())
