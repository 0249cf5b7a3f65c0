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

An operation's undo is an :class:`Undo`: kernel steps and bookkeeping steps
(addresses, host ports, registries) in two logs, the books released only
when the kernel side is clean.

Unwinding never stops at a failure: every step runs, and the failures are
returned together. A failed step stays in the log, so unwinding again retries
what is left and nothing is forgotten. Removing something that is already
gone (ENOENT, ENODEV, ESRCH) counts as success, which makes unwinding
idempotent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from .errors import ALREADY_GONE, TeardownError

__all__ = ["Undo", "UndoLog", "raise_collected", "transaction"]


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

    def steps(self) -> list[Callable[[], object]]:
        """The steps, newest first (for a backend that can run several in one go)."""
        return [step for _, step in reversed(self._steps)]

    def absorb(self, other: UndoLog) -> None:
        """Take over *other*'s steps (they run before this log's older ones)."""
        self._steps.extend(other._steps)
        other._steps.clear()

    def unwind(self) -> list[Exception]:
        """Run every step, newest first; return the failures.

        A step that fails stays in the log, so unwinding again (a second
        ``delete()`` or ``close()``) retries exactly what is still left. An
        interruption (KeyboardInterrupt and the like) puts the step it hit
        back before propagating, for the same reason.
        """
        failures: list[Exception] = []
        kept: list[tuple[str, Callable[[], object]]] = []
        try:
            while self._steps:
                what, step = self._steps.pop()
                try:
                    step()
                except OSError as exc:
                    if exc.errno in ALREADY_GONE:
                        continue
                    exc.add_note(f"while undoing: {what}")
                    failures.append(exc)
                    kept.append((what, step))
                except Exception as exc:
                    exc.add_note(f"while undoing: {what}")
                    failures.append(exc)
                    kept.append((what, step))
                except BaseException:
                    kept.append((what, step))
                    raise
        finally:
            self._steps.extend(reversed(kept))
        return failures


class Undo:
    """The undo of one object or operation, in two logs.

    ``kernel`` holds the inverses of kernel changes; ``books`` holds the
    release of what cnm hands out (addresses, host ports, names in a
    registry). :meth:`unwind` always runs every kernel step, but releases the
    books only once the kernel side is clean: an address or host port whose
    interface or forwarding rule could not be removed stays reserved (and the
    failed steps stay in their log), so nothing is handed out twice, and
    unwinding again retries what is left.
    """

    __slots__ = ("kernel", "books")

    def __init__(self) -> None:
        self.kernel = UndoLog()
        self.books = UndoLog()

    def __len__(self) -> int:
        return len(self.kernel) + len(self.books)

    def unwind(self) -> list[Exception]:
        failures = self.kernel.unwind()
        if failures:
            return failures
        return self.books.unwind()


def raise_collected(what: str, failures: list[Exception]) -> None:
    """Raise one :class:`TeardownError` holding *failures*, if there are any."""
    if failures:
        raise TeardownError(f"{what}: {len(failures)} teardown step(s) failed", failures)


@contextlib.contextmanager
def transaction(keep: Callable[[Undo], object] | None = None) -> Iterator[Undo]:
    """An :class:`Undo` that unwinds itself if the block raises.

    The original exception propagates unchanged; any failure while rolling
    back is attached to it as a note (the caller's error is the one that
    matters, and the notes say what could not be put back). What could not be
    rolled back is handed to *keep*, so that its owner retries it later
    (when it is deleted or closed) instead of it being forgotten.
    """
    undo = Undo()
    try:
        yield undo
    except BaseException as exc:
        for failure in undo.unwind():
            exc.add_note(f"rollback also failed: {failure!r}")
        if len(undo) and keep is not None:
            keep(undo)
            exc.add_note("what could not be rolled back is retried when its owner is deleted or closed")
        raise
