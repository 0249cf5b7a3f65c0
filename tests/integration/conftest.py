from __future__ import annotations

from pathlib import Path

import pytest

import cnm
from tests.conftest import KERNEL_TESTS_POSSIBLE

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before pytest's own hook deselects by ``-m``
def pytest_collection_modifyitems(items):
    """Mark every test of this directory ``kernel`` (and skip them where the
    kernel tests cannot run). A ``pytestmark`` in a conftest marks nothing:
    pytest reads it from test modules only. The hook sees the whole session's
    items, so it picks this directory's by their path
    (tests/unit/test_markers.py checks that ``-m kernel`` selects them all)."""
    skip = pytest.mark.skip(reason="kernel tests need root, iproute2 and nftables (the nft CLI inspects rules)")
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.kernel)
            if not KERNEL_TESTS_POSSIBLE:
                item.add_marker(skip)


@pytest.fixture
def host():
    """A fresh isolated host, closed after the test however it ends.

    Tests that close it themselves may: closing again does nothing (and
    finishes the job if the test's own close was interrupted).
    """
    h = cnm.Host.isolated()
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def lab():
    """A lab of three hosts (h1, h2, h3), closed after the test."""
    made = cnm.Lab(["h1", "h2", "h3"])
    try:
        yield made
    finally:
        made.close()
