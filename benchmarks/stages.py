"""Where the time of building and tearing down N sandboxes goes, stage by stage.

Runs the benchmark's scenario once with cnm's bulk API inside an isolated
host, with timers wrapped around cnm's internal stages, and prints for each
stage its milliseconds per sandbox and the thread it runs on; then the CPU
time (user and kernel) of the two threads, and how teardown splits between
``host.close()`` and the kernel's own dismantling. Run as root:

    .venv/bin/python benchmarks/stages.py            # N=1000
    .venv/bin/python benchmarks/stages.py -n 200

The timers are wrappers around private functions (they cost a few
microseconds each), so the total is slightly above bench.py's figure.
"""

from __future__ import annotations

import argparse
import collections
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import cnm
import cnm.api.bulk as host_module
import cnm.facade as facade
from cnm.firewall.nftables import NftablesFirewall
from cnm.kernel import Rtnl
from cnm.netns import Namespace

spent: collections.defaultdict[str, float] = collections.defaultdict(float)
cpu: dict[str, tuple[float, float]] = {}
lock = threading.Lock()


def timed(owner: Any, name: str, label: str) -> None:
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            with lock:
                spent[label] += time.perf_counter() - start

    setattr(owner, name, staticmethod(wrapper) if isinstance(owner.__dict__.get(name), staticmethod) else wrapper)


def thread_cpu() -> tuple[float, float]:
    """(user, kernel) CPU seconds of the calling thread so far."""
    with open(f"/proc/self/task/{threading.get_native_id()}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def note_cpu(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a thread's work so its CPU time is recorded under *label*."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = thread_cpu()
        try:
            return fn(*args, **kwargs)
        finally:
            after = thread_cpu()
            with lock:
                u, k = cpu.get(label, (0.0, 0.0))
                cpu[label] = (u + after[0] - before[0], k + after[1] - before[1])

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="sandboxes (at most 1000; default 1000)")
    n = parser.parse_args().n
    # Namespace thread: the namespace itself (unshare, bind mount; its setup,
    # lo up and a socket, is timed apart).
    timed(Namespace, "create", "namespace thread: namespace with lo up")
    timed(facade, "_new_namespace_socket", "namespace thread:   of which lo up and a socket")
    # Calling thread: veth (create, echo, settings), then the sandbox end.
    timed(Rtnl, "add_veth", "calling thread: veth pair on the bridge")
    timed(Rtnl, "configure_link", "calling thread: sandbox end (no IPv6, up, address, route)")
    timed(NftablesFirewall, "add_port_forwards_many", "calling thread: published ports (one transaction)")
    original_pipeline = host_module.pipeline

    def pipeline(count: int, first: Callable[[int], None], second: Callable[[int], None]) -> None:
        spent["calling thread: bookkeeping before the kernel work"] += time.perf_counter() - started
        note_cpu("calling thread", original_pipeline)(count, note_cpu("namespace thread", first), second)

    host_module.pipeline = pipeline

    host = cnm.Host.isolated("stages")
    try:
        net = host.create_network("bench", subnet="10.88.0.0/16")
        requests = [cnm.SandboxRequest(f"s{i}", ports=[f"{20000 + i}:80"]) for i in range(n)]
        started = time.perf_counter()
        host.create_sandboxes(requests, network=net)
        setup = time.perf_counter() - started
        watcher = Rtnl(host.namespace)
    except BaseException:
        host.close()
        raise
    try:
        time.sleep(2)
        start = time.perf_counter()
        host.close()
        closed = time.perf_counter() - start
        while any(link.kind == "veth" and link.master for link in watcher.links()):
            time.sleep(0.005)
        gone = time.perf_counter() - start
    finally:
        watcher.close()

    per = 1000 / n
    print(f"setup: {setup * per:.3f} ms per sandbox (N={n}), by stage:")
    for label, seconds in sorted(spent.items()):
        print(f"  {label:<62} {seconds * per:7.3f}")
    print("CPU time per sandbox (user / kernel):")
    for label, (user, kernel) in sorted(cpu.items()):
        print(f"  {label:<62} {user * per:.3f} / {kernel * per:.3f}")
    print(f"teardown: {gone * per:.3f} ms per sandbox: host.close() returned after {closed * per:.3f};")
    print(f"  the kernel took the veths apart in the remaining {(gone - closed) * per:.3f}")


if __name__ == "__main__":
    main()
