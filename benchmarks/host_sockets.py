"""What the look at the host's sockets costs a publish (issue 15, point 2).

Before publishing, cnm lists the sockets of the host's namespace that hold
ports (:mod:`cnm.sock_diag`: one netlink socket made inside the namespace,
one dump per protocol and family). This script measures, in one
``cnm.Host.isolated()`` host it creates and removes:

* **the look itself** (dump TCP over both families on the socket the host
  keeps; and once with a socket made for the look), the median of
  ``--probes`` looks, with no host socket, with N TCP listeners and with N
  bound UDP sockets in the host's namespace (a UDP look lists every bound
  socket, a TCP one only listeners), asking for every port and for the one
  port a publish of 8080 asks for (the kernel filters the rest out);
* **with N ports published**: the same look after endpoints have published
  N host ports (ranges from ``10000``, a thousand per endpoint): published ports are nft map
  elements, not sockets, so the look should cost what it did with none;
* **a connect that publishes one port**, the median of ``--probes`` connects
  of fresh sandboxes, with the look and with it stubbed out, interleaved
  (so both see the same load): the look's share of a publish.

It prints the figures; it asserts nothing.

    .venv/bin/python benchmarks/host_sockets.py             # N=10000, 200 probes
    .venv/bin/python benchmarks/host_sockets.py -n 1000 --probes 50
"""

from __future__ import annotations

import argparse
import resource
import socket
import statistics
import time
from collections.abc import Callable
from unittest import mock

import cnm
from cnm.api import join
from cnm.sock_diag import SockDiag


def median_ms(fn: Callable[[], object], probes: int) -> float:
    times = []
    for _ in range(probes):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=10000, help="host sockets and published ports (default 10000)")
    parser.add_argument("--probes", type=int, default=200, help="looks and connects per figure (default 200)")
    args = parser.parse_args()
    n, probes = args.n, args.probes
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 2 * n + 1000)), hard))

    with cnm.Host.isolated("bench") as host:
        namespace = host.namespace

        diag = SockDiag(namespace)  # as a host keeps one

        def look(protocols: tuple[str, ...] = ("tcp",), ports: tuple[int, int] = (1, 65535)) -> None:
            diag.holding(protocols, (4, 6), ports)

        def fresh() -> None:
            with SockDiag(namespace) as made:
                made.holding(("tcp",), (4, 6))

        print(f"look with a socket made for it, no host socket: {median_ms(fresh, probes):7.3f} ms")

        print(f"look (tcp, IPv4 + IPv6), no host socket:        {median_ms(look, probes):7.3f} ms")
        for kind, udp in (("TCP listeners", False), ("bound UDP sockets", True)):

            def make(udp: bool = udp) -> list[socket.socket]:
                made = []
                for i in range(n):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
                    s.bind(("0.0.0.0", 20000 + i))
                    if not udp:
                        s.listen(1)
                    made.append(s)
                return made

            held = host.call(make)
            try:
                protocols = ("udp",) if udp else ("tcp",)
                figure = median_ms(lambda: look(protocols), max(10, probes // 10))
                print(f"look ({protocols[0]}), {n} {kind} in the host:   {figure:7.3f} ms")
                figure = median_ms(lambda: look(protocols, (8080, 8080)), probes)
                print(f"  ... asking for port 8080 only (the kernel filters): {figure:7.3f} ms")
            finally:
                for s in held:
                    s.close()

        net = host.create_network("b", subnet="10.88.0.0/16")
        # 1000 ports per endpoint: one nft batch of 10,000 elements is more than a netlink message holds.
        for first in range(0, n, 1000):
            last = min(n, first + 1000) - 1
            net.connect(host.create_sandbox(f"many{first}"), ports=[f"{10000 + first}-{10000 + last}:{first + 1}-{last + 1}"])
        print(f"look (tcp), {n} ports published, no socket:    {median_ms(look, probes):7.3f} ms")

        counter = iter(range(probes * 2))
        with_look: list[float] = []
        without: list[float] = []

        def connect_one() -> float:
            i = next(counter)
            sandbox = host.create_sandbox(f"c{i}")
            start = time.perf_counter()
            net.connect(sandbox, ports=[f"{30000 + i}:80"])
            return time.perf_counter() - start

        def stubbed() -> float:
            with mock.patch.object(join, "held_by_host", lambda *a: None):
                return connect_one()

        for i in range(probes):  # in turns, each first every other time
            if i % 2:
                without.append(stubbed())
                with_look.append(connect_one())
            else:
                with_look.append(connect_one())
                without.append(stubbed())
        a, b = statistics.median(with_look) * 1e3, statistics.median(without) * 1e3
        print(f"connect publishing one port: {a:.3f} ms with the look, {b:.3f} ms without ({a / b:.2f}x)")


if __name__ == "__main__":
    main()
