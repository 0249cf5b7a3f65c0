"""Interfaces the kernel is still taking apart, and what waits for them to go.

Deleting a sandbox's namespace is how cnm removes its interfaces cheaply
(see :doc:`/explanation`): unmounting the namespace takes a few
microseconds, and the kernel then dismantles the namespace and every link
with an end in it on its own, in a work queue, tens of milliseconds later.
Waiting for that on every ``sandbox.delete()`` is what made one delete cost
~38 ms.

So a deleted sandbox's veths are handed to :class:`DyingLinks`, together
with the releases that must wait for them: the endpoint's address and its
host ports. Until the kernel has removed the old interface, the old
address is still configured on a link that is still a port of the bridge,
so handing it to a new endpoint would put two interfaces with one address
on one bridge. Names (of sandboxes and endpoints) are cnm's bookkeeping,
not the kernel's, and are given back at once.

A held release runs at the first :meth:`DyingLinks.settle` after its links
are gone (cnm settles before every allocation of an address or host port;
a settle asks the kernel at most every few milliseconds)
or in :meth:`DyingLinks.wait`, which an allocation that found nothing free
calls before trying again, as do ``close()`` and ``delete_sandboxes``. Each
check asks the kernel for just the pending links, in one pipelined round.
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from .errors import ConflictError, ExhaustedError
from .kernel import LINKS_STALL, Rtnl

__all__ = ["DyingLinks"]

#: Settling checks the kernel at most this often. The kernel takes tens to
#: hundreds of milliseconds to remove a deleted namespace's veths, so a check
#: per allocation (two per connect) only repeated itself: right after 1000
#: deletes, those checks cost 0.4 ms per connect.
SETTLE_INTERVAL = 0.005

T = TypeVar("T")


class DyingLinks:
    """Groups of link indexes, each with the releases to run once all of them are gone."""

    def __init__(self, rtnl: Rtnl, timeout: float, what: str, stall: float = LINKS_STALL) -> None:
        self._rtnl = rtnl
        #: how long :meth:`wait` gives the kernel before deleting links one by one
        self.timeout = timeout
        #: ... giving up earlier once none went for this long
        self.stall = stall
        #: who holds them, for messages ("host 'web'")
        self.what = what
        self._groups: list[tuple[frozenset[int], list[Callable[[], object]]]] = []
        #: every index of every group, kept up to date (read on every delete)
        self._pending: set[int] = set()
        self._checked = 0.0  # when settle() last asked the kernel (time.monotonic)
        #: the open holding() block: its indexes and the releases made in it
        self._holding: tuple[set[int], list[Callable[[], object]]] | None = None

    def __len__(self) -> int:
        """How many groups still wait for the kernel."""
        return len(self._groups)

    def pending(self, indexes: Iterable[int]) -> set[int]:
        """Those of *indexes* that are still held."""
        return self._pending.intersection(indexes)

    @contextlib.contextmanager
    def holding(self, indexes: Iterable[int]) -> Iterator[None]:
        """Releases made (through :meth:`release`) inside this block wait for *indexes* to go.

        A block inside another one adds its indexes to the outer block's.
        """
        wanted = set(indexes)
        if self._holding is not None:
            self._holding[0].update(wanted)
            yield
            return
        if not wanted:
            yield
            return
        steps: list[Callable[[], object]] = []
        self._holding = (wanted, steps)
        try:
            yield
        finally:
            self._holding = None
            if steps:
                self._groups.append((frozenset(wanted), steps))
                self._pending.update(wanted)

    def release(self, step: Callable[[], object]) -> None:
        """Run *step* now, or, inside :meth:`holding`, once that block's links are gone."""
        if self._holding is not None:
            self._holding[1].append(step)
        else:
            step()

    def settle(self) -> list[Exception]:
        """Run the releases of every group whose links the kernel has removed; return their failures.

        Asks the kernel at most every :data:`SETTLE_INTERVAL` seconds; in between
        it does nothing (what is held stays held a little longer).
        """
        now = time.monotonic()
        if not self._groups or now - self._checked < SETTLE_INTERVAL:
            return []
        self._checked = now
        present = set(self._rtnl.wait_gone(self._pending, 0))
        return self._run(present)

    def wait(self, only: Iterable[int] | None = None) -> list[Exception]:
        """Wait until the kernel has removed every pending link (or those of
        them in *only*), then run the releases that no longer wait for anything.

        A link still there after :attr:`timeout`, or once none went for
        :attr:`stall` (something else keeps its namespace alive, a process
        entered from outside, say), is deleted by itself; one that cannot be
        stays pending, its failure returned.
        """
        if not self._groups:
            return []
        waited = self._pending if only is None else self.pending(only)
        failures: list[Exception] = []
        present = self._pending - waited  # not looked at: taken as still there
        for index in self._rtnl.wait_gone(waited, self.timeout, stall=self.stall):
            try:
                self._rtnl.delete_link(index, f"{self.what}: veth index {index} (its namespace outlived the wait)")
            except OSError as exc:
                if exc.errno != errno.ENODEV:
                    failures.append(exc)
                    present.add(index)
        return failures + self._run(present)

    def retrying(self, allocate: Callable[[], T]) -> T:
        """``allocate()``, settled first; if nothing was free, wait for the dying links and try again.

        A release that fails here is not this allocation's business: it stays
        queued, and the next :meth:`wait` (``close()``, ``settle()``,
        ``delete_sandboxes``) retries and reports it.
        """
        self.settle()
        try:
            return allocate()
        except (ConflictError, ExhaustedError) as exc:
            if not self._groups:
                raise
            for failure in self.wait():
                exc.add_note(f"{self.what}: a release failed while waiting: {failure!r}")
        return allocate()

    def outlive(self, indexes: Iterable[int]) -> list[Exception]:
        """Return once none of *indexes* is pending (waiting for just those)."""
        if not self.pending(indexes):
            return []
        return self.wait(only=indexes)

    def abandon(self) -> None:
        """Forget every group: their links went with a namespace that is gone."""
        self._groups.clear()
        self._pending.clear()

    def _run(self, present: set[int]) -> list[Exception]:
        """Run the releases of every group with no index in *present*.

        Each step leaves its group before it runs, so an interrupted run
        never runs a step twice; a step that fails goes back, in a group of
        its own with no links to wait for, and the next settle retries it.
        """
        failures: list[Exception] = []
        for group, steps in [g for g in self._groups if not g[0] & present]:
            while steps:
                step = steps.pop(0)
                try:
                    step()
                except Exception as exc:  # noqa: BLE001 - reported together
                    failures.append(exc)
                    self._groups.append((frozenset(), [step]))
            self._groups.remove((group, steps))
        self._pending = {index for group, _ in self._groups for index in group}
        return failures
