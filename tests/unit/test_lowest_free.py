"""The lowest-free allocator shared by IPAM pools and the host port book: pure, no kernel."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cnm._lowest_free import LowestFree

# A small range with values on both sides of it, so that takes outside the
# range, exhaustion and reuse all happen often.
_FIRST, _LAST = 10, 17
_values = st.integers(min_value=_FIRST - 3, max_value=_LAST + 3)
_operations = st.lists(
    st.one_of(
        st.tuples(st.just("lowest"), st.just(0)),
        st.tuples(st.just("take"), _values),
        st.tuples(st.just("release"), _values),
    ),
    max_size=100,
)


@given(_operations)
def test_matches_a_set_scanned_for_the_lowest_free(operations):
    """Every answer is what scanning the range against a plain set gives."""
    book, model = LowestFree(_FIRST, _LAST), set[int]()
    for operation, value in operations:
        if operation == "lowest":
            free = [v for v in range(_FIRST, _LAST + 1) if v not in model]
            expected = free[0] if free else None
            assert book.take_lowest() == expected
            if expected is not None:
                model.add(expected)
        elif operation == "take":
            assert book.take(value) == (value not in model)
            model.add(value)
        else:
            book.release(value)
            model.discard(value)
        assert book.taken() == model
        assert len(book) == len(model)
        assert all((v in book) == (v in model) for v in range(_FIRST - 3, _LAST + 4))


@given(st.lists(st.integers(_FIRST, _LAST), unique=True))
def test_released_values_come_back_lowest_first(released):
    book = LowestFree(_FIRST, _LAST)
    handed_out = [book.take_lowest() for _ in range(_LAST - _FIRST + 1)]
    assert handed_out == list(range(_FIRST, _LAST + 1))
    assert book.take_lowest() is None
    for value in released:
        book.release(value)
    assert [book.take_lowest() for _ in released] == sorted(released)
    assert book.take_lowest() is None


@given(_operations)
def test_take_lowest_stays_in_the_range(operations):
    book = LowestFree(_FIRST, _LAST)
    for operation, value in operations:
        if operation == "lowest":
            got = book.take_lowest()
            assert got is None or _FIRST <= got <= _LAST
        elif operation == "take":
            book.take(value)
        else:
            book.release(value)


def test_a_range_ending_before_it_starts_is_refused():
    with pytest.raises(ValueError, match="range 5-4 ends before it starts"):
        LowestFree(5, 4)
    assert LowestFree(5, 5).take_lowest() == 5


def test_a_range_of_two_to_the_64_costs_what_is_handed_out():
    """An IPv6 /64 must not be listed: memory follows the values taken."""
    first = 2**64 * 0xFD00
    tracemalloc.start()
    try:
        book = LowestFree(first, first + 2**64 - 1)
        handed_out = [book.take_lowest() for _ in range(1000)]
        assert book.take(first + 2**64 - 1)
        for value in handed_out[::2]:
            book.release(value)
        again = book.take_lowest()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert handed_out[:2] == [first, first + 1]
    assert again == first
    assert peak < 1_000_000


def test_taking_and_releasing_one_value_forever_does_not_grow():
    book = LowestFree(0, 100)
    for _ in range(10):
        book.take_lowest()
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        for _ in range(20_000):
            book.release(3)
            book.take(3)
            book.release(9)  # the last handed out: the cursor steps back
            assert book.take_lowest() == 9
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current - baseline < 20_000


def test_a_stale_heap_entry_does_not_let_the_cursor_step_back_past_it():
    """Released, re-taken (its heap entry goes stale), the values above it
    released (the cursor steps back), then released again: the heap must not
    end up holding a value at or above the cursor, or a lower free value
    behind the cursor would be skipped."""
    book = LowestFree(0, 9)
    assert [book.take_lowest() for _ in range(5)] == [0, 1, 2, 3, 4]
    book.release(2)  # on the heap
    assert book.take(2)  # its entry is stale now
    book.release(4)
    book.release(3)  # the cursor is back at 3
    book.release(2)  # live again on the heap: not a step back
    book.release(1)
    assert [book.take_lowest() for _ in range(4)] == [1, 2, 3, 4]
