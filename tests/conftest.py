"""Suite-wide guard: the machine's own network namespace must not change.

Every kernel test runs inside namespaces it creates (``cnm.Host.isolated()``).
This session fixture snapshots the root namespace (links, addresses, routes,
rules, nftables ruleset, ip_forward, /run/netns and /run/cnm) before the run and fails the
run if anything differs afterwards.
"""

from __future__ import annotations

import shutil

import pytest

from tests.kernelstate import diff, snapshot

_CAP_NET_ADMIN, _CAP_SYS_ADMIN = 12, 21


def _capable() -> bool:
    """Whether this process may make namespaces and change their networks
    (root is not enough: a root without capabilities runs the unit tests alone)."""
    with open("/proc/self/status") as f:
        effective = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    return all(effective >> bit & 1 for bit in (_CAP_NET_ADMIN, _CAP_SYS_ADMIN))


KERNEL_TESTS_POSSIBLE = _capable() and shutil.which("ip") is not None and shutil.which("nft") is not None


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
