"""Many published ports on one host: what the 10,000th costs, and what 10,000 cost each connection.

Two identical ``cnm.Host.isolated()`` hosts, which this script creates and
removes: each has one bridge network and one sandbox running a TCP server on
port 80, published as host port 8080 (``net.connect(sandbox,
ports=["8080:80"])``). Host "one" keeps that single mapping; host "n" gets
N-1 more (host ports 10000, 10001, ... -> the sandbox's port 80), added one
call at a time, each call timed. Then:

* **adding a mapping**: the median cost of the first and of the last 100
  calls of that fill, and, because a drift in the machine's load during the
  fill shows up in that comparison too, a drift-free one: probes that
  publish one more port and withdraw it again (each timed), alternating
  between host "one" (a map of 1) and host "n" (a map of N);
* **new TCP connections per second** from each host's outside namespace to
  its published port 8080 (DNATed to its sandbox), in windows that alternate
  between the two hosts, so both see the same background load;
* a check that a connection through the last host port added reaches the
  server, and the cost of withdrawing the N-1 mappings again one at a time.

Published ports are elements of the nft maps ``ports``/``ports_addr``, so
neither the cost of adding one nor the cost of a new connection should
depend on how many are installed: the 10,000th mapping should cost about
what the first did, and a new connection through one of 10,000 mappings
about what it costs through one. (A chain of one DNAT rule per port would
fail both: each add would grow the chain, and every new connection would
walk it.) The script prints the figures and their ratios; it asserts nothing.

    .venv/bin/python benchmarks/ports.py                  # N=10000, 5 windows of 1 s per host
    .venv/bin/python benchmarks/ports.py -n 1000 --seconds 0.5 --windows 3 --json ports.json

Needs root; takes about 20 s with the defaults. A connection is: connect (the
handshake goes outside -> host prerouting DNAT -> bridge -> sandbox), then
close with SO_LINGER 0 (a reset, so no TIME_WAIT piles up on either side).
Only the first packet of a connection consults the nat hooks, so this is the
path the map lookup is on. The clients run in this process (in a thread
inside the outside namespace), each server in a Python process of its own
inside its sandbox, so they do not compete for one interpreter lock. Each
rate is the median of ``--windows`` windows of ``--seconds``, after a short
warm-up.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable
from typing import Any
from contextlib import ExitStack
from ipaddress import IPv4Address

import cnm
from cnm.firewall import NetworkRules, PortForward
from cnm.undo import UndoLog

FIRST_PORT = 8080  # mapping #1, made by net.connect
CONTAINER_PORT = 80
EDGE = 100  # "first" and "last" calls of the fill: the median of this many at each end

# The server, run inside a sandbox: accept, say "ok" (the client of the
# functional check reads it; the rate clients have already reset), close.
SERVER = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {CONTAINER_PORT}))
s.listen(4096)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    try:
        c.send(b"ok")
    except OSError:
        pass
    c.close()
"""

LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


class Published:
    """One isolated host with a network, a sandbox serving port 80, and host port 8080 published to it."""

    def __init__(self, stack: ExitStack, label: str) -> None:
        self.host = stack.enter_context(cnm.Host.isolated(label))
        net = self.host.create_network("p", subnet="10.89.0.0/16")
        sandbox = self.host.create_sandbox("srv")
        net.connect(sandbox, ports=[f"{FIRST_PORT}:{CONTAINER_PORT}"])  # mapping #1
        self.container_ip: IPv4Address = sandbox.address(net).ip
        # Reaches into the host's services on purpose: the benchmark drives the backend itself.
        rules = self.host._services.networks["p"].rules
        assert rules is not None
        self.rules: NetworkRules = rules
        server = sandbox.popen([sys.executable, "-c", SERVER], stdout=-1, text=True)  # killed with the sandbox
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{label}: the server in the sandbox did not start")
        if self.ask(FIRST_PORT) != "ok":
            raise RuntimeError(f"{label}: no answer through host port {FIRST_PORT}")
        self.warm = False

    # There is no public API that publishes another port on an endpoint
    # already joined, so this drives the documented FirewallBackend contract
    # on the host's own backend: each call is exactly what one `docker run -p`
    # adds, one nft transaction with one map element, and pushes one undo
    # step that withdraws it (again one transaction).
    def publish(self, port: int, log: UndoLog) -> None:
        forward = PortForward("tcp", None, port, self.container_ip, CONTAINER_PORT)
        self.host._services.firewall.add_port_forwards(self.rules, [forward], log)

    def ask(self, port: int) -> str:
        """Connect from outside to host.address.ip:port; what the server said."""

        def go() -> bytes:
            assert self.host.address is not None
            with socket.create_connection((str(self.host.address.ip), port), timeout=5.0) as c:
                return c.recv(10)

        assert self.host.outside is not None
        return self.host.outside.call(go).decode(errors="replace")

    def rate(self, seconds: float) -> float:
        """New TCP connections per second to host.address.ip:8080 over *seconds* (after a warm-up, the first time)."""
        assert self.host.address is not None
        target = (str(self.host.address.ip), FIRST_PORT)

        def window(duration: float) -> float:
            count = 0
            start = time.perf_counter()
            deadline = start + duration
            while True:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                s.settimeout(5.0)
                s.connect(target)
                s.close()
                count += 1
                now = time.perf_counter()
                if now >= deadline:
                    return count / (now - start)

        def measure() -> float:
            if not self.warm:
                window(0.2)  # caches, conntrack, the server's accept loop
                self.warm = True
            return window(seconds)

        assert self.host.outside is not None
        return self.host.outside.call(measure)

    def map_size(self) -> int | None:
        """Elements in the backend's ``ports`` map, by ``nft`` (None if nft is not installed)."""
        if shutil.which("nft") is None:
            return None
        table = f"cnm-{self.host.token}"
        argv = ["nft", "-j", "list", "map", "ip", table, "ports"]
        done = self.host.run(argv, capture_output=True, text=True, check=True)
        for item in json.loads(done.stdout)["nftables"]:
            if "map" in item:
                return len(item["map"].get("elem", []))
        return 0


def host_ports(count: int) -> list[int]:
    """*count* host ports for mappings #2.., none of them FIRST_PORT."""
    candidates = [p for p in [*range(10000, 65536), *range(1024, 10000)] if p != FIRST_PORT]
    if count > len(candidates):
        raise SystemExit(f"at most {len(candidates)} TCP mappings fit on one host address")
    return candidates[:count]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def unwound(log: UndoLog) -> None:
    failures = log.unwind()
    if failures:
        raise failures[0]


def edges(times: list[float]) -> tuple[float, float]:
    """Median of the first and of the last EDGE (or fewer) times."""
    k = max(1, min(EDGE, len(times) // 2))
    return statistics.median(times[:k]), statistics.median(times[-k:])


def tenths(times: list[float]) -> list[float]:
    """The median of each tenth of *times*, in order (shows a trend, if any)."""
    parts = min(10, len(times))
    size = len(times) / parts
    return [statistics.median(times[round(i * size) : round((i + 1) * size)]) for i in range(parts)]


def run(mappings: int, seconds: float, windows: int, probes: int) -> dict[str, Any]:
    # mapping #1 is 8080; the fill takes the next N-1 ports; the probes use the one after
    *fill_ports, probe_port = host_ports(mappings)
    with ExitStack() as stack:
        one = Published(stack, "ports-one")
        many = Published(stack, "ports-n")
        print(f"# hosts: {one.host.namespace.name} (1 mapping), {many.host.namespace.name} ({mappings} mappings)")

        logs: list[UndoLog] = []
        add_ms: list[float] = []
        started = time.perf_counter()
        for port in fill_ports:
            log = UndoLog()
            add_ms.append(timed(lambda: many.publish(port, log)))
            logs.append(log)
        fill_s = time.perf_counter() - started
        elements = many.map_size()
        print(f"# added {len(fill_ports)} mappings in {fill_s:.2f} s; map 'ports' holds {elements} elements")

        # Probes: publish one more port and withdraw it, alternating hosts (and which goes first).
        probe_ms: dict[str, list[float]] = {"one": [], "n": []}
        unprobe_ms: dict[str, list[float]] = {"one": [], "n": []}
        for i in range(probes):
            for name, target in (("one", one), ("n", many)) if i % 2 == 0 else (("n", many), ("one", one)):
                log = UndoLog()
                probe_ms[name].append(timed(lambda: target.publish(probe_port, log)))
                unprobe_ms[name].append(timed(lambda: unwound(log)))

        rates: dict[str, list[float]] = {"one": [], "n": []}
        for i in range(windows):
            for name, target in (("one", one), ("n", many)) if i % 2 == 0 else (("n", many), ("one", one)):
                rates[name].append(target.rate(seconds))
        print("# connections/s per window, 1 mapping: " + ", ".join(f"{r:,.0f}" for r in rates["one"]))
        print(f"# connections/s per window, {mappings} mappings: " + ", ".join(f"{r:,.0f}" for r in rates["n"]))

        answer = many.ask(fill_ports[-1])
        print(f"# through the last host port added ({fill_ports[-1]}): {'ok' if answer == 'ok' else repr(answer)}")

        # Withdraw the fill again, newest first, one undo step (one transaction) each.
        remove_ms = [timed(lambda: unwound(log)) for log in reversed(logs)]

    first_add, last_add = edges(add_ms)
    from_full, near_empty = edges(remove_ms)
    probe_one, probe_n = statistics.median(probe_ms["one"]), statistics.median(probe_ms["n"])
    unprobe_one, unprobe_n = statistics.median(unprobe_ms["one"]), statistics.median(unprobe_ms["n"])
    rate_one, rate_n = statistics.median(rates["one"]), statistics.median(rates["n"])
    return {
        "mappings": mappings,
        "add_ms_first": first_add,
        "add_ms_last": last_add,
        "add_ratio": last_add / first_add,
        "add_ms_tenths": tenths(add_ms),
        "add_seconds_total": fill_s,
        "map_elements": elements,
        "probe_ms_one": probe_one,
        "probe_ms_n": probe_n,
        "probe_ratio": probe_n / probe_one,
        "unprobe_ms_one": unprobe_one,
        "unprobe_ms_n": unprobe_n,
        "unprobe_ratio": unprobe_n / unprobe_one,
        "probes": probes,
        # withdrawal runs newest first: it starts from the full map
        "remove_ms_from_full": from_full,
        "remove_ms_near_empty": near_empty,
        "remove_ms_tenths": tenths(remove_ms),
        "rate_one": rate_one,
        "rate_n": rate_n,
        "rate_ratio": rate_n / rate_one,
        "rate_windows": rates,
        "seconds": seconds,
        "last_port": fill_ports[-1],
        "last_port_answer": answer,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-n", "--mappings", type=int, default=10000, help="published ports on the big host (default 10000)"
    )
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one rate window in seconds (default 1)")
    parser.add_argument("--windows", type=int, default=5, help="rate windows per host; medians are printed (default 5)")
    parser.add_argument("--probes", type=int, default=200, help="publish-and-withdraw probes per host (default 200)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = parser.parse_args()
    if args.mappings < 3:
        parser.error("--mappings must be at least 3")
    if args.windows < 1 or args.seconds <= 0 or args.probes < 1:
        parser.error("--windows and --probes must be at least 1, --seconds positive")

    r = run(args.mappings, args.seconds, args.windows, args.probes)
    n = r["mappings"]
    edge = max(1, min(EDGE, (n - 1) // 2))
    print()
    print(f"{'':<46} {'first':>9} {'last':>9} {'last/first':>11}")
    print(
        f"{f'add one mapping, ms (median of {edge})':<46} "
        f"{r['add_ms_first']:>9.3f} {r['add_ms_last']:>9.3f} {r['add_ratio']:>10.2f}x"
    )
    print(
        f"{'withdraw one, ms (full map -> near empty)':<46} "
        f"{r['remove_ms_from_full']:>9.3f} {r['remove_ms_near_empty']:>9.3f} "
        f"{r['remove_ms_near_empty'] / r['remove_ms_from_full']:>10.2f}x"
    )
    print()
    print(f"{'alternating between the two hosts':<46} {'1 mapping':>9} {f'{n} maps':>9} {'N/1':>11}")
    print(
        f"{f'add one more mapping, ms (median of {args.probes})':<46} "
        f"{r['probe_ms_one']:>9.3f} {r['probe_ms_n']:>9.3f} {r['probe_ratio']:>10.2f}x"
    )
    print(
        f"{f'withdraw it again, ms (median of {args.probes})':<46} "
        f"{r['unprobe_ms_one']:>9.3f} {r['unprobe_ms_n']:>9.3f} {r['unprobe_ratio']:>10.2f}x"
    )
    print(
        f"{f'new TCP connections/s (median of {args.windows})':<46} "
        f"{r['rate_one']:>9,.0f} {r['rate_n']:>9,.0f} {r['rate_ratio']:>10.2f}x"
    )
    print()
    print("# add ms, median per tenth of the fill:", " ".join(f"{x:.3f}" for x in r["add_ms_tenths"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
