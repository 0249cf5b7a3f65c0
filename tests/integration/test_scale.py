"""Scale: a thousand sandboxes fit in 256 file descriptors, a sandbox costs little
Python memory, and building and tearing down again and again leaks nothing
(memory, descriptors, threads, addresses, host ports, veths, namespaces)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import tracemalloc
from ipaddress import IPv4Network
from pathlib import Path

import cnm
from cnm.kernel import Rtnl
from tests.kernelstate import namespaces

REPO = Path(__file__).resolve().parents[2]


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _namespaces(token: str, *, sandboxes: bool = False) -> list[str]:
    """The host's namespaces (or only its sandboxes') that are mounted, as kernelstate names them."""
    prefixes = (f"cnm/{token}/sb-",) if sandboxes else (f"cnm-{token}-", f"cnm/{token}/")
    return [n for n in namespaces() if n.startswith(prefixes)]


def _sandbox_veths(rtnl: Rtnl) -> list[str]:
    """Host ends of sandboxes' veths: enslaved to a bridge (the uplink veth is not)."""
    return [link.name for link in rtnl.links() if link.kind == "veth" and link.master]


# Runs in a child process, so that its descriptor limit is its own. Prints
# "token T" as soon as the host exists (so the test can sweep after a crash)
# and one JSON line of measurements at the end.
_FD_CHILD = r"""
import json, os, resource, sys, threading
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
import cnm
from cnm.kernel import Rtnl
from cnm.netns import NETNS_DIR

N = int(sys.argv[1])

def fds():
    return len(os.listdir("/proc/self/fd"))

host = cnm.Host.isolated("fd")
print("token", host.token, flush=True)
out = {"limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}
try:
    net = host.create_network("web", subnet="10.88.0.0/16")
    out["before"] = fds()
    # The peak is sampled all along create_sandboxes, not only at its end.
    samples, stop = [], threading.Event()
    def sample():
        while not stop.is_set():
            samples.append(fds())
            stop.wait(0.002)
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        made = host.create_sandboxes(
            [cnm.SandboxRequest(f"s{i}", ports=[f"{20000 + i}:80"]) for i in range(N)], network=net
        )
    finally:
        stop.set()
        sampler.join()
    out["after"] = fds()
    out["peak"] = max(samples + [out["after"]])
    out["samples"] = len(samples)
    out["made"] = len(made)
    out["sandboxes"] = len(host.sandboxes)
    out["endpoints"] = len(net.endpoints)
    out["addresses"] = sorted(int(s.address(net).ip) for s in made)
    out["host_ports"] = sorted({p.host_port for e in net.endpoints for p in e.published})
    out["last"] = str(made[-1].address(net).ip)
    sb = [n for n in os.listdir(f"/run/cnm/{host.token}") if n.startswith("sb-")]
    out["sandbox_namespaces"] = len(sb)
    with Rtnl(host.namespace) as rtnl:
        out["veths"] = sum(1 for link in rtnl.links() if link.kind == "veth" and link.master)
    # A sandbox really is a namespace of its own with its interface inside.
    out["s_last_links"] = made[-1].run(["ip", "-o", "-4", "addr", "show", "dev", "eth0"], capture_output=True, text=True).stdout
finally:
    host.close()
out["left"] = [n for n in os.listdir(NETNS_DIR) if n.startswith(f"cnm-{host.token}")]
out["left"] += [f"/run/cnm/{host.token}"] if os.path.exists(f"/run/cnm/{host.token}") else []
print(json.dumps(out), flush=True)
"""


def test_a_thousand_sandboxes_fit_in_256_descriptors():
    n = 1000
    token = None
    child = subprocess.Popen(
        [sys.executable, "-c", _FD_CHILD, str(n)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        try:
            stdout, stderr = child.communicate(timeout=600)  # a hang guard, not a timing assertion
        except subprocess.TimeoutExpired:
            child.kill()
            stdout, stderr = child.communicate()
        lines = stdout.splitlines()
        token = next((line.split()[1] for line in lines if line.startswith("token ")), None)
        assert child.returncode == 0, f"child failed ({child.returncode}):\n{stdout[-3000:]}\n{stderr[-3000:]}"
        assert token is not None
        out = json.loads(lines[-1])
        print(f"fds with {n} sandboxes under ulimit -n {out['limit']}: before {out['before']}, "
              f"peak {out['peak']} ({out['samples']} samples), after {out['after']}")
        assert out["limit"] == 256
        assert out["made"] == out["sandboxes"] == out["endpoints"] == n
        subnet = IPv4Network("10.88.0.0/16")
        assert out["addresses"] == [int(subnet[i]) for i in range(2, n + 2)]  # distinct, lowest first
        assert out["host_ports"] == list(range(20000, 20000 + n))
        assert out["sandbox_namespaces"] == n and out["veths"] == n
        assert f"inet {out['last']}/16" in out["s_last_links"]
        assert out["samples"] > 0
        # Descriptors do not grow with N: a handful over the baseline, far below the limit.
        fds = {k: out[k] for k in ("before", "peak", "after")}
        assert out["peak"] < 64 and out["peak"] - out["before"] <= 32, fds
        assert out["left"] == []
        assert _namespaces(token) == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if token is not None:  # after a crash or a timeout, whatever the child left behind
            cnm.gc()  # the child is gone: its owner record names what it left


def test_python_memory_per_sandbox_is_at_most_20_kb(host):
    n = 300
    net = host.create_network("web", subnet="10.88.0.0/16")
    # Warm up: one-time costs (caches, worker threads, lazily built tables) are not per sandbox.
    host.create_sandboxes([cnm.SandboxRequest("warm", ports=["19999:80"])], network=net)
    requests = [cnm.SandboxRequest(f"s{i}", ports=[f"{20000 + i}:80"]) for i in range(n)]
    gc.collect()
    tracemalloc.start()
    try:
        gc.collect()
        before, snap_before = tracemalloc.get_traced_memory()[0], tracemalloc.take_snapshot()
        made = host.create_sandboxes(requests, network=net)
        gc.collect()
        after, snap_after = tracemalloc.get_traced_memory()[0], tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert len(made) == n and len(host.sandboxes) == n + 1 and len(net.endpoints) == n + 1
    assert all(s.endpoints and s.endpoints[0].published for s in made)
    per_sandbox = (after - before) / n
    print(f"Python memory per sandbox (one published port): {per_sandbox / 1024:.1f} KB")
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    top = snap_after.filter_traces(ignore).compare_to(snap_before.filter_traces(ignore), "lineno")[:20]
    assert per_sandbox <= 20 * 1024, (
        f"{per_sandbox / 1024:.1f} KB per sandbox (over {n}); top allocation sites:\n"
        + "\n".join(f"  {stat.size_diff / n:8.0f} B/sandbox  {stat}" for stat in top)
    )


def test_build_and_teardown_cycles_leak_nothing(host):
    cycles, n = 10, 50
    net = host.create_network("web", subnet="10.88.0.0/16")
    watcher = Rtnl(host.namespace)  # opened before any baseline is taken
    memory: list[int] = []
    fds: list[int] = []
    threads: list[int] = []
    first_layout = None
    tracemalloc.start()
    try:
        for cycle in range(cycles):
            requests = [cnm.SandboxRequest(f"c{i}", ports=[f"{20000 + i}:80", "443"]) for i in range(n)]
            made = host.create_sandboxes(requests, network=net)
            assert len(made) == n and len(_sandbox_veths(watcher)) == n and len(_namespaces(host.token, sandboxes=True)) == n
            # Addresses and host ports (fixed and ephemeral) come back: every
            # cycle hands out exactly what the first one did, lowest first.
            layout = (
                sorted(int(s.address(net).ip) for s in made),
                sorted((p.host_port, p.container_port) for s in made for e in s.endpoints for p in e.published),
            )
            if first_layout is None:
                first_layout = layout
                assert layout[0] == [int(net.subnet[i]) for i in range(2, n + 2)]  # 10.88.0.2 first
                assert [p for p, _ in layout[1]] == sorted([*range(20000, 20000 + n), *range(49153, 49153 + n)])
            assert layout == first_layout, f"cycle {cycle + 1} got other addresses or host ports"
            host.delete_sandboxes(made)
            del made
            assert host.sandboxes == [] and net.endpoints == [] and net.inspect()["Containers"] == {}
            assert _sandbox_veths(watcher) == [], f"cycle {cycle + 1}: veths left"
            assert _namespaces(host.token, sandboxes=True) == [], f"cycle {cycle + 1}: sandbox namespaces left"
            gc.collect()
            memory.append(tracemalloc.get_traced_memory()[0])
            fds.append(_fds())
            threads.append(threading.active_count())
    finally:
        tracemalloc.stop()
        watcher.close()
    print("traced memory after each cycle (KB):", [round(m / 1024, 1) for m in memory])
    print("fds after each cycle:", fds, "threads:", threads)
    assert len(memory) == cycles
    assert memory[-1] <= memory[1] + 64 * 1024, [round(m / 1024, 1) for m in memory]
    assert fds[-1] == fds[0] and threads[-1] == threads[0], (fds, threads)
