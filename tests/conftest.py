"""Suite-wide guard: the machine's own network namespace must not change.

Every kernel test runs inside namespaces it creates (``cnm.Host.isolated()``).
This session fixture snapshots the root namespace (links, addresses, routes,
rules, nftables ruleset, ip_forward, /run/netns and /run/cnm) before the run and fails the
run if anything differs afterwards.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.kernelstate import diff, snapshot

KERNEL_TESTS_POSSIBLE = os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("nft") is not None


@pytest.fixture(scope="session", autouse=True)
def root_namespace_unchanged():
    if not KERNEL_TESTS_POSSIBLE:
        yield
        return
    before = snapshot()
    yield
    after = snapshot()
    changed = diff(before, after)
    if changed:
        pytest.fail(f"the test run changed the machine's own network namespace:\n{changed}", pytrace=False)
