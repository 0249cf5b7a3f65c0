"""Open file descriptors and threads do not grow with the number of sandboxes; many threads can share a host."""

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
    assert _fds() <= fds  # the newest sandbox's kept socket went with it


def test_operations_from_many_threads_are_serialized_per_host(host):
    from concurrent.futures import ThreadPoolExecutor

    net = host.create_network("web")

    def build(i: int):
        sandbox = host.create_sandbox(f"t{i}")
        return net.connect(sandbox, ports=[f"{21000 + i}:80"])

    with ThreadPoolExecutor(max_workers=6) as pool:
        endpoints = list(pool.map(build, range(24)))
    addresses = {e.ip for e in endpoints}
    ports = {e.published[0].host_port for e in endpoints}
    assert len(addresses) == 24 and len(ports) == 24
    assert sorted(s.name for s in host.sandboxes) == sorted(f"t{i}" for i in range(24))
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda s: s.delete(), host.sandboxes))
    assert host.sandboxes == [] and net.endpoints == []


def test_reads_are_safe_while_another_thread_changes_the_host(host):
    net = host.create_network("web")
    sandboxes = [host.create_sandbox(f"r{i}") for i in range(4)]
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            for _ in range(8):
                for s in sandboxes:
                    net.connect(s)
                for s in sandboxes:
                    net.disconnect(s)
        except BaseException as exc:  # reported below
            errors.append(exc)

    worker = threading.Thread(target=churn)
    worker.start()
    reads = 0
    try:
        while worker.is_alive():
            net.inspect()
            for s in host.sandboxes:
                s.inspect()
            reads += 1
    except BaseException as exc:
        errors.append(exc)
    finally:
        worker.join()
    assert errors == [] and reads > 0
