"""One lowest-free allocator over a range of integers, for addresses and host ports alike.

:class:`LowestFree` is pure bookkeeping: which integers are taken, and which
is the lowest free one of its range. IPAM pools number the addresses of a
subnet with it (an IPv6 /64 has 2**64 of them) and the host port book the
ephemeral ports of each protocol, so its cost must not depend on the size of
the range: every operation is O(log n) in the number of values taken so far,
and memory grows with that number, never with the range.
"""

from __future__ import annotations

import heapq

__all__ = ["LowestFree"]


class LowestFree:
    """The integers *first* to *last* (both included), handed out lowest free first.

    :meth:`take_lowest` hands out the lowest free value of the range, so a
    released value is the next one handed out. :meth:`take` and
    :meth:`release` accept any integer, inside the range or not: a value
    outside it is only recorded, never handed out by :meth:`take_lowest`. That
    lets one book hold a range and the values around it (a static address
    outside a network's ``ip_range``, a fixed host port outside the
    ephemeral range), so that the caller keeps one record of what is taken.

    Not thread-safe; callers serialise.
    """

    __slots__ = ("_cursor", "_first", "_freed", "_in_heap", "_last", "_taken")

    # How lowest-free is kept cheap. Everything of the range below ``_cursor``
    # has been looked at once: it is taken, or (once released) on the
    # ``_freed`` heap. Everything from ``_cursor`` up has never been handed
    # out by take_lowest, though take may have claimed some of it; the cursor
    # steps over those when it reaches them. So the lowest free value is the
    # smallest live heap entry if there is one (all of them lie below the
    # cursor), else the first untaken value at or after the cursor. A take of
    # a value that sits on the heap leaves it there: the entry is skipped when
    # popped because the value is taken ("lazy deletion"), which spares an
    # O(n) removal from the middle of the heap. ``_in_heap`` holds the values
    # on the heap, live or stale, so that none is pushed twice: the heap then
    # stays bounded by what the cursor passed, even when one value is taken
    # and released forever.

    def __init__(self, first: int, last: int) -> None:
        if first > last:
            raise ValueError(f"LowestFree: range {first}-{last} ends before it starts")
        self._first = first
        self._last = last
        self._cursor = first
        self._taken: set[int] = set()
        self._freed: list[int] = []
        self._in_heap: set[int] = set()

    def __repr__(self) -> str:
        return f"<LowestFree {self._first}-{self._last}, {len(self._taken)} taken>"

    @property
    def first(self) -> int:
        """The lowest value :meth:`take_lowest` may hand out."""
        return self._first

    @property
    def last(self) -> int:
        """The highest value :meth:`take_lowest` may hand out."""
        return self._last

    def __contains__(self, value: object) -> bool:
        """Whether *value* is taken (by :meth:`take` or :meth:`take_lowest`)."""
        return value in self._taken

    def __len__(self) -> int:
        """How many values are taken, inside the range or not."""
        return len(self._taken)

    def taken(self) -> frozenset[int]:
        """Every value taken and not released."""
        return frozenset(self._taken)

    def take_lowest(self) -> int | None:
        """Take the lowest free value of the range and return it; ``None`` if none is free.

        ``None`` rather than an exception: the caller knows what the values
        stand for, and so how to say that none is left.
        """
        heap = self._freed
        while heap:
            value = heapq.heappop(heap)
            self._in_heap.discard(value)
            if value not in self._taken:
                self._taken.add(value)
                return value
        while self._cursor <= self._last:
            value = self._cursor
            self._cursor += 1
            if value not in self._taken:
                self._taken.add(value)
                return value
        return None

    def take(self, value: int) -> bool:
        """Take *value*; ``False`` (and nothing changes) if it is taken already."""
        if value in self._taken:
            return False
        self._taken.add(value)
        return True

    def release(self, value: int) -> None:
        """Give *value* back; a value that is not taken is skipped silently."""
        if value not in self._taken:
            return
        self._taken.remove(value)
        if not self._first <= value < self._cursor or value in self._in_heap:
            # Above the cursor the cursor finds it itself; on the heap already
            # (a stale entry) it is live again.
            return
        if value == self._cursor - 1:
            # The last value handed out comes back: stepping the cursor back
            # keeps the heap empty in the common allocate-release pattern.
            # (Not in the heap, so every heap entry stays below the cursor.)
            self._cursor = value
            return
        heapq.heappush(self._freed, value)
        self._in_heap.add(value)
