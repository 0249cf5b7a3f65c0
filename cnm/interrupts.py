"""Teardown that a Ctrl-C cannot cut short.

A ``KeyboardInterrupt`` raised halfway through :meth:`cnm.Host.close` leaves
whatever the close had not reached yet; a user who presses Ctrl-C twice to
get out of a ``with`` block (the first one starts the close, the second one
lands in it) would lose it. As trio's contract for closing says, close
always closes: while it runs, SIGINT is only noted, and once it is done the
signal is raised again, so the previous handler (by default the one raising
``KeyboardInterrupt``) sees it then, once.

Python runs signal handlers in the main thread only, so only a close in the
main thread can be interrupted, and only there is the handler replaced.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["deferred_interrupts", "uninterruptible"]

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT back until the block is done; then deliver it (once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is None or previous == signal.SIG_IGN:
        yield  # a handler not set from Python, or ignored: leave it alone
        return
    arrived: list[int] = []

    def note(signum: int, frame: object) -> None:
        arrived.append(signum)

    signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if arrived:
            signal.raise_signal(signal.SIGINT)


def uninterruptible(method: F) -> F:
    """Run *method* with SIGINT deferred (see :func:`deferred_interrupts`)."""

    @functools.wraps(method)
    def shielded(*args: Any, **kwargs: Any) -> Any:
        with deferred_interrupts():
            return method(*args, **kwargs)

    return shielded  # type: ignore[return-value]
