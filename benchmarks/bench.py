"""Time cnm building and tearing down N sandboxes, each with one published port,
side by side with peer tools run on the same scenario in the same run.

The scenario of ../shared/bench-peers (and FACTS.md): one host namespace with a
bridge network; N sandboxes, each connected with an address, lo up, a default
route and one published TCP port (masquerade on). cnm runs inside a
``cnm.Host.isolated()`` that this script creates and removes; each peer script
runs inside ``pb*`` namespaces of its own and removes them.

    .venv/bin/python benchmarks/bench.py                  # N=200, 3 runs, peers: ipbatch
    .venv/bin/python benchmarks/bench.py -n 10 200 -r 5 --peers ipbatch ipcli

Prints, per N, the median setup and teardown milliseconds per sandbox of each
tool and how many times slower than cnm each peer was. Setup is timed from an
empty host to all N connected; teardown from ``host.close()`` until the kernel
has taken every sandbox's veth apart (as the peer scripts wait for).

Peers (scripts in ../shared/bench-peers, or $CNM_BENCH_PEERS): ``ipbatch``
(``ip -batch`` plus one ``nft -f``: the best a shell can do), ``ipcli`` (one
``ip``/``nft`` command per step), ``cni`` (CNI bridge + host-local + portmap;
needs the containernetworking-plugins package), ``pyroute2`` (a naive
pyroute2 script). A peer whose script or tools are missing is skipped with a
note.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cnm
from cnm.kernel import Rtnl

PEERS_DIR = Path(os.environ.get("CNM_BENCH_PEERS", Path(__file__).resolve().parents[2] / "shared" / "bench-peers"))
PEERS = {
    # The shell scripts re-run themselves inside their namespace by their own
    # path, so they are started by absolute path (see peer_run).
    "ipbatch": ([], ["ip", "nft"]),
    "ipcli": ([], ["ip", "nft"]),
    "cni": ([], ["ip", "nft", "/usr/lib/cni/bridge"]),
    "pyroute2": ([sys.executable], []),
    # Not a tool but the kernel's own cost, by hand-packed netlink: namespace,
    # veth pair and address per sandbox (no bridge port, link-up, route or NAT).
    "floor": ([sys.executable], []),
}
SCRIPTS = {
    "ipbatch": "ipbatch.sh",
    "ipcli": "ipcli.sh",
    "cni": "cni.sh",
    "pyroute2": "pyroute2_naive.py",
    "floor": "floor_rawnl.py",
}


def cnm_run(n: int) -> tuple[float, float]:
    host = cnm.Host.isolated("bench")
    try:
        net = host.create_network("bench", subnet="10.88.0.0/16")
        start = time.perf_counter()
        for i in range(n):
            sandbox = host.create_sandbox(f"s{i}")
            net.connect(sandbox, ports=[f"{20000 + i}:80"])
        setup = time.perf_counter() - start
    except BaseException:
        host.close()
        raise
    # Like the peers' scripts, teardown lasts until the kernel has really taken
    # the sandboxes apart: until no veth is left in the host namespace. A
    # socket opened inside that namespace keeps it readable after close().
    try:
        watcher = Rtnl(host.namespace)
    except BaseException:
        host.close()
        raise
    try:
        start = time.perf_counter()
        host.close()
        deadline = start + 120  # as long as the peer scripts wait
        while any(link.kind == "veth" and link.master for link in watcher.links()):
            if time.perf_counter() > deadline:
                raise RuntimeError("the kernel did not take the sandboxes' veths apart within 120 s")
            time.sleep(0.0005)
        teardown = time.perf_counter() - start
    finally:
        watcher.close()
    return setup * 1000 / n, teardown * 1000 / n


def peer_missing(name: str) -> str | None:
    _, tools = PEERS[name]
    if not (PEERS_DIR / SCRIPTS[name]).exists():
        return f"{PEERS_DIR / SCRIPTS[name]} not found"
    for tool in tools:
        if shutil.which(tool) is None and not Path(tool).exists():
            return f"{tool} not installed"
    return None


def peer_run(name: str, n: int) -> tuple[float, float]:
    interpreter, _ = PEERS[name]
    argv = [*interpreter, str(PEERS_DIR / SCRIPTS[name]), str(n), "nat"]
    done = subprocess.run(argv, cwd=PEERS_DIR, capture_output=True, text=True, check=True)
    # The scripts print their timing line even when a step failed; a run with
    # complaints on stderr measured something else and must not be reported.
    if any(word in done.stderr for word in ("WARN", "FATAL", "failed", "Error")):
        raise RuntimeError(f"peer {name} reported errors:\n{done.stderr.strip()}")
    if name == "floor":  # lines "rawnl-WHAT N create_ms delete_ms"; the floor is their sum
        rows = {f[0]: (float(f[2]), float(f[3])) for f in (line.split() for line in done.stdout.splitlines())}
        parts = [rows["rawnl-netns"], rows["rawnl-veth-group"], rows["rawnl-addr"]]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)
    fields = done.stdout.split()  # TOOL N setup_ms teardown_ms
    return float(fields[-2]), float(fields[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, nargs="+", default=[200], help="sandbox counts (default 200)")
    parser.add_argument("-r", "--runs", type=int, default=3, help="runs per tool and count; medians are printed")
    parser.add_argument("--peers", nargs="*", default=["ipbatch"], choices=sorted(PEERS), help="peer tools to run too")
    parser.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="seconds to pause before each run: the kernel frees deleted namespaces in the background, "
        "and that work would otherwise be charged to the next run (default 2)",
    )
    args = parser.parse_args()
    peers = []
    for name in args.peers:
        why = peer_missing(name)
        if why:
            print(f"# skipping peer {name}: {why}")
        else:
            peers.append(name)
    print(f"{'tool':<10} {'N':>5} {'setup ms':>9} {'teardown ms':>12} {'setup vs cnm':>13} {'teardown vs cnm':>16}")
    for n in args.n:
        results: dict[str, tuple[float, float]] = {}
        for tool in ["cnm", *peers]:
            runs = []
            for _ in range(args.runs):
                time.sleep(args.settle)
                runs.append(cnm_run(n) if tool == "cnm" else peer_run(tool, n))
            results[tool] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        base_setup, base_teardown = results["cnm"]
        for tool, (setup, teardown) in results.items():
            ratio = "" if tool == "cnm" else f"{setup / base_setup:12.1f}x {teardown / base_teardown:15.1f}x"
            print(f"{tool:<10} {n:>5} {setup:>9.3f} {teardown:>12.3f} {ratio}")
    print("# ms per sandbox, median of", args.runs, "runs; 'vs cnm' = how many times cnm's time")


if __name__ == "__main__":
    main()
