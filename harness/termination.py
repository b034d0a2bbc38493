"""SIGTERM stops a command as Ctrl-C does: in order, resumable, with exit status 143.

Batch schedulers (Slurm, Kubernetes) send SIGTERM before they preempt a job, and `kill` sends it
by default. Its default action ends the process at once, without the orderly stop that cancels
Ray tasks and tells the user how to resume; Ray's own driver handler calls `sys.exit` instead.
`stop_on_sigterm()` (around every CLI command) raises `Terminated`, a KeyboardInterrupt, so every
path that stops cleanly on Ctrl-C stops the same way.

An exception raised by a signal handler while a finaliser runs is printed and dropped by Python;
the long loops (each epoch of an arm, the Ray driver's wait loop) call `check()`, so a dropped
one still stops the command at the next step.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from harness.errors import Terminated

_requested = threading.Event()


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within: SIGTERM raises `Terminated`, and a second one ends the process by the signal, as a
    second Ctrl-C does; the previous handler is back afterwards. Only the main thread can set
    handlers: in another one this changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        _requested.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated()

    _requested.clear()
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def requested() -> bool:
    """Whether SIGTERM arrived since `stop_on_sigterm()` was entered."""
    return _requested.is_set()


def check() -> None:
    """Raise `Terminated` if SIGTERM arrived, even if the handler's exception was dropped."""
    if _requested.is_set():
        raise Terminated()


__all__ = ["check", "requested", "stop_on_sigterm"]
