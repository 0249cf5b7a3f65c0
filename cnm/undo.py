"""The undo log: how every operation is all-or-nothing and every teardown complete.

Each kernel change registers its own inverse on an :class:`UndoLog` at the
moment it succeeds, in one place next to the change. Nothing else knows how
to remove what was made:

* if a public operation fails halfway, :func:`transaction` unwinds the log in
  reverse and re-raises the original error (rollback failures are attached to
  it as notes), so the kernel is as it was before the call;
* if it succeeds, the log is handed to the object that was created, and that
  object's ``delete()`` replays it. Deletion is therefore the same code as
  rollback, written once.

Unwinding never stops at a failure: every step runs, and the failures are
returned together. Removing something that is already gone (ENOENT, ENODEV,
ESRCH) counts as success, which makes unwinding idempotent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from .errors import ALREADY_GONE, TeardownError

__all__ = ["UndoLog", "raise_collected", "transaction"]


class UndoLog:
    """A stack of inverse steps, run last-first by :meth:`unwind`."""

    __slots__ = ("_steps",)

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def __len__(self) -> int:
        return len(self._steps)

    def push(self, what: str, step: Callable[[], object]) -> None:
        """Register *step* as the inverse of the change described by *what*."""
        self._steps.append((what, step))

    def absorb(self, other: UndoLog) -> None:
        """Take over *other*'s steps (they run before this log's older ones)."""
        self._steps.extend(other._steps)
        other._steps.clear()

    def unwind(self) -> list[Exception]:
        """Run every step, newest first; return the failures. The log is empty after."""
        failures: list[Exception] = []
        while self._steps:
            what, step = self._steps.pop()
            try:
                step()
            except OSError as exc:
                if exc.errno in ALREADY_GONE:
                    continue
                exc.add_note(f"while undoing: {what}")
                failures.append(exc)
            except Exception as exc:
                exc.add_note(f"while undoing: {what}")
                failures.append(exc)
        return failures


def raise_collected(what: str, failures: list[Exception]) -> None:
    """Raise one :class:`TeardownError` holding *failures*, if there are any."""
    if failures:
        raise TeardownError(f"{what}: {len(failures)} teardown step(s) failed", failures)


@contextlib.contextmanager
def transaction() -> Iterator[UndoLog]:
    """An undo log that unwinds itself if the block raises.

    The original exception propagates unchanged; any failure while rolling
    back is attached to it as a note (the caller's error is the one that
    matters, and the notes say what could not be put back).
    """
    log = UndoLog()
    try:
        yield log
    except BaseException as exc:
        for failure in log.unwind():
            exc.add_note(f"rollback also failed: {failure!r}")
        raise
