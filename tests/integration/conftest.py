from __future__ import annotations

import pytest

import cnm
from tests.conftest import KERNEL_TESTS_POSSIBLE

pytestmark = pytest.mark.kernel


def pytest_collection_modifyitems(items):
    if KERNEL_TESTS_POSSIBLE:
        return
    skip = pytest.mark.skip(reason="kernel tests need root, iproute2 and nftables (the nft CLI inspects rules)")
    for item in items:
        if "integration" in str(item.fspath):
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
