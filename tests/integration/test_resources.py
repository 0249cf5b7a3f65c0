"""Open file descriptors and threads do not grow with the number of sandboxes."""

from __future__ import annotations

import os
import threading


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_descriptors_and_threads_stay_flat(host):
    net = host.create_network("web")
    first = host.create_sandbox("s0")
    net.connect(first, ports=["20000:80"])
    fds, threads = _fds(), threading.active_count()
    for i in range(1, 40):
        sandbox = host.create_sandbox(f"s{i}")
        net.connect(sandbox, ports=[f"{20000 + i}:80"])
    assert len(host.sandboxes) == 40
    assert _fds() == fds
    assert threading.active_count() == threads
    for sandbox in host.sandboxes[20:]:
        sandbox.delete()
    assert _fds() == fds
