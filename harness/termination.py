"""Ctrl-C and SIGTERM stop a command in order, resumable, with exit status 130 or 143.

Batch schedulers (Slurm, Kubernetes) send SIGTERM before they preempt a job, and `kill` sends it
by default. Its default action ends the process at once, without the orderly stop that cancels
Ray tasks and tells the user how to resume; Ray's own driver handler calls `sys.exit` instead.
`stop_on_signals()` (around every CLI command) raises `Terminated`, a KeyboardInterrupt, on
SIGTERM and a KeyboardInterrupt on SIGINT, so both stop along the same paths.

A signal handler's exception raised while a finaliser runs (Ray's object references and torch's
weak references have many) is dropped by Python, which prints it with a traceback. Within
`stop_on_signals()` such a dropped stop is not printed: it is remembered, and the long loops (each
epoch of an arm, the Ray driver's wait loop) call `check()`, which raises it again at the next
step, so the command still stops in order and no traceback reaches the user.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from harness.errors import Terminated

_terminated = threading.Event()
_interrupted = threading.Event()


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within: SIGTERM raises `Terminated` and SIGINT a KeyboardInterrupt; a second one of
    either ends the process by the signal (the user insists; the run resumes from its last
    complete epoch). A SIGINT ignored on entry (a job started in the background with `&` or
    `nohup`) stays ignored. The previous handlers and unraisable hook are back afterwards. Only
    the main thread can set handlers: in another one this changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        _terminated.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated()

    def interrupt(signum: int, frame: object) -> None:
        _interrupted.set()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        raise KeyboardInterrupt()

    def unraisable(info: sys.UnraisableHookArgs) -> None:
        if isinstance(info.exc_value, KeyboardInterrupt) and requested_stop():
            return  # remembered: check() raises it again at the next step
        previous_hook(info)

    _terminated.clear()
    _interrupted.clear()
    previous_hook = sys.unraisablehook
    previous_term = signal.signal(signal.SIGTERM, terminate)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, interrupt)
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous_term is None else previous_term)
        if previous_int is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.SIG_DFL if previous_int is None else previous_int)


def requested() -> bool:
    """Whether SIGTERM arrived since `stop_on_signals()` was entered."""
    return _terminated.is_set()


def requested_stop() -> bool:
    """Whether SIGTERM or SIGINT arrived since `stop_on_signals()` was entered."""
    return _terminated.is_set() or _interrupted.is_set()


def check() -> None:
    """Raise `Terminated` if SIGTERM arrived, KeyboardInterrupt if SIGINT did, even if the
    handler's exception was dropped."""
    if _terminated.is_set():
        raise Terminated()
    if _interrupted.is_set():
        raise KeyboardInterrupt()


__all__ = ["check", "requested", "requested_stop", "stop_on_signals"]
