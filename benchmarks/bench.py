"""Time cnm building and tearing down N sandboxes, each with one published port,
side by side with peer tools run on the same scenario in the same run.

The scenario of the peer scripts ($CNM_BENCH_PEERS): one host namespace with a bridge
network; N sandboxes, each connected with an address, lo up, a default route
and one published TCP port (masquerade on). cnm runs inside a
``cnm.Host.isolated()`` that this script creates and removes; each peer script
runs inside ``pb*`` namespaces of its own and removes them.

    .venv/bin/python benchmarks/bench.py                      # N=10 100 1000, 3 runs, default tools
    .venv/bin/python benchmarks/bench.py -n 10 20 -r 1 --peers ipbatch
    .venv/bin/python benchmarks/bench.py --json docs/_static/bench.json --plot

Prints, per N, the median setup and teardown milliseconds per sandbox of each
tool and each one's time as a multiple of cnm's. Setup is timed from a host
with the network already made to all N connected; teardown until the kernel
has taken every sandbox's veth apart (as the peer scripts wait for): for
``cnm`` from ``host.close()``, for ``cnm-loop`` from a loop of
``sandbox.delete()`` (a runtime deleting its containers one at a time),
whose own time until the calls have returned is printed beside it ("delete
calls"). ``--json FILE`` also writes every run's figures and
the conditions (date, kernel, CPUs, command line); ``--plot`` then runs
``benchmarks/plot.py`` on that file (SVG charts and an RST table in
``docs/_static``).

Tools: ``cnm`` (always; the bulk API ``Host.create_sandboxes``), ``cnm-loop``
(``create_sandbox`` + ``connect`` per sandbox) and the peers (scripts in the
directory $CNM_BENCH_PEERS names, by default ``bench-peers`` of the checkout's sibling ``shared``): ``ipbatch`` (``ip -batch`` plus
one ``nft -f``: the best a shell can do), ``cni`` (CNI bridge + host-local +
portmap; needs the containernetworking-plugins package), ``ipcli`` (one
``ip``/``nft`` command per step), ``pyroute2`` (a naive pyroute2 script),
``floor`` (the kernel's own cost by hand-packed netlink: namespace, veth and
address only). By default: cnm-loop, ipbatch and cni; a default peer whose
script or tools are missing is skipped with a note.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import ipaddress
import importlib.util
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cnm
from cnm.drivers.overlay import LocalPeers, OverlayDriver
from cnm.kernel import Rtnl

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS_DIR = Path(os.environ.get("CNM_BENCH_PEERS", REPO.parent / "shared" / "bench-peers"))
PEERS = {
    # The shell scripts re-run themselves inside their namespace by their own
    # path, so they are started by absolute path (see peer_run).
    "ipbatch": ([], ["ip", "nft"]),
    "ipcli": ([], ["ip", "nft"]),
    "cni": ([], ["ip", "nft", "/usr/lib/cni/bridge", "/usr/lib/cni/portmap", "/usr/lib/cni/host-local"]),
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
DEFAULT_PEERS = ["ipbatch", "cni"]
# One bridge takes at most 1024 ports (the kernel's BR_MAX_PORTS); every
# sandbox of the scenario is a port of the same bridge.
MAX_N = 1000


def cnm_run(
    n: int, *, bulk: bool = True, ipv6: bool = False, driver: str = "bridge", mode: str | None = None
) -> tuple[float, float, float | None]:
    """One cnm run: (setup, teardown, delete calls) in ms per sandbox.

    *bulk*: one ``host.create_sandboxes`` call, and ``host.close()``;
    otherwise ``create_sandbox`` and ``connect`` per sandbox, as a program
    not knowing N in advance does, and ``sandbox.delete()`` per sandbox,
    whose loop is timed by itself too (the third figure; None for *bulk*).
    *ipv6*: the network is dual-stack, so every sandbox gets an IPv6 address
    and route too, and its port is published on both families.
    *driver*: the network's (``macvlan`` on the host's uplink, ``ipvlan``
    likewise, ``p2p`` the example driver of ``examples/p2p_driver.py``):
    their sandboxes publish no port (only bridge and overlay networks can); ``overlay`` on one host.
    *mode*: instead of a network, each sandbox made by
    ``create_sandbox(name, network_mode=mode)`` (``host``, ``none``, or
    ``container``: sharing the first sandbox's namespace).
    """
    # Setup includes making the host and its network, as the peer scripts'
    # setup includes their host namespace, bridge and NAT table (cnm's host
    # does more: an outside namespace and an uplink too).
    start = time.perf_counter()
    host = cnm.Host.isolated("bench", drivers=_own_drivers().get(driver))
    try:
        ports = driver in ("bridge", "overlay")
        if mode is not None:
            net = None
        elif driver in ("macvlan", "ipvlan"):
            net = host.create_network("bench", driver, subnet="198.18.0.0/24", gateway="198.18.0.1",
                                      ip_range="198.18.0.128/25", options={"parent": host.uplink or ""})  # fmt: skip
        elif ipv6:
            net = host.create_network("bench", driver, ipv6=True, subnet=["10.88.0.0/16", "fd00:88::/64"])
        else:
            net = host.create_network("bench", driver, subnet="10.88.0.0/16")
        if mode is not None:
            first = host.create_sandbox("s0")
            shared = first if mode == "container" else mode
            sandboxes = [first, *(host.create_sandbox(f"s{i}", network_mode=shared) for i in range(1, n))]
        elif bulk:  # building the requests is part of what a user pays
            requests = [cnm.SandboxRequest(f"s{i}", ports=[f"{20000 + i}:80"] if ports else ()) for i in range(n)]
            sandboxes = host.create_sandboxes(requests, network=net)
        else:
            assert net is not None
            sandboxes = []
            for i in range(n):
                sandbox = host.create_sandbox(f"s{i}")
                net.connect(sandbox, ports=[f"{20000 + i}:80"] if ports else ())
                sandboxes.append(sandbox)
        setup = time.perf_counter() - start
    except BaseException:
        host.close()
        raise
    # Like the peers' scripts, teardown lasts until the kernel has really taken
    # the sandboxes apart: until no veth of theirs is left in the host. A
    # socket opened inside the host namespace keeps it readable after close().
    try:
        watcher = Rtnl(host.namespace)
    except BaseException:
        host.close()
        raise
    calls = None
    try:
        start = time.perf_counter()
        if not bulk:
            for sandbox in reversed(sandboxes):  # sharers before the namespace they share
                sandbox.delete()
            calls = (time.perf_counter() - start) * 1000 / n
        host.close()
        deadline = start + 120  # as long as the peer scripts wait
        # A macvlan parent is promiscuous until the last macvlan on it is gone
        # (they go with the sandboxes' namespaces, which no veth shows).
        while any(
            (link.kind == "veth" and link.name != host.uplink) or (link.name == host.uplink and link.promiscuity)
            for link in watcher.links()
        ):
            if time.perf_counter() > deadline:
                raise RuntimeError("the kernel did not take the sandboxes' veths apart within 120 s")
            # Every 5 ms, as the peer scripts poll: each look is a dump of
            # every link, which competes with the kernel work being timed.
            time.sleep(0.005)
        teardown = time.perf_counter() - start
    finally:
        watcher.close()
    return setup * 1000 / n, teardown * 1000 / n, calls


def _own_drivers() -> dict[str, dict[str, Any]]:
    """Drivers a benchmark host is handed, by the driver they are for: the
    example driver of examples/p2p_driver.py, and the overlay driver (one
    host, so its VXLAN port has no peers: the cost per sandbox on an overlay)."""
    spec = importlib.util.spec_from_file_location("p2p_driver", REPO / "examples" / "p2p_driver.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    overlay = functools.partial(OverlayDriver, LocalPeers(), ipaddress.ip_address("198.18.0.2"))
    return {"p2p": {"p2p": module.PointToPointDriver}, "overlay": {"overlay": overlay}}


def cnm_missing(tool: str) -> str | None:
    """Why *tool* cannot run on this kernel, or None."""
    if tool == "cnm-ipvlan" and not (os.path.exists("/sys/module/ipvlan") or os.path.isdir(f"/lib/modules/{os.uname().release}")):
        return "this kernel has no ipvlan module"
    return None


def _busy_ticks() -> tuple[int, int]:
    """(busy, total) CPU time of the machine so far, from /proc/stat, in clock ticks."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def settle(quiet: float, limit: float = 60.0) -> None:
    """Wait until the machine has been quiet (under 5% busy) for *quiet* seconds, or *limit* passed."""
    deadline = time.monotonic() + limit
    quiet_since = time.monotonic()
    busy, total = _busy_ticks()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        busy2, total2 = _busy_ticks()
        if total2 > total and (busy2 - busy) / (total2 - total) > 0.05:
            quiet_since = time.monotonic()
        busy, total = busy2, total2
        if time.monotonic() - quiet_since >= quiet:
            return


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
    done = subprocess.run(argv, cwd=PEERS_DIR, capture_output=True, text=True)
    if done.returncode != 0:
        # e.g. "leftover pb namespaces": someone else runs a peer script right now
        raise RuntimeError(f"peer {name} failed (exit {done.returncode}):\n{done.stderr.strip()}")
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


#: cnm's own variants: the bulk API and the loop, on an IPv4 network and a dual-stack one
CNM_TOOLS: dict[str, dict[str, Any]] = {
    "cnm": {},
    "cnm-loop": {"bulk": False},
    "cnm-dual": {"ipv6": True},
    "cnm-loop-dual": {"bulk": False, "ipv6": True},
    # One line per driver and mode (at N <= 126 for macvlan and ipvlan: they
    # take the addresses of the uplink's /24).
    "cnm-macvlan": {"driver": "macvlan"},
    "cnm-ipvlan": {"driver": "ipvlan"},
    "cnm-p2p": {"driver": "p2p"},
    "cnm-overlay": {"driver": "overlay"},
    "cnm-host": {"bulk": False, "mode": "host"},
    "cnm-none": {"bulk": False, "mode": "none"},
    "cnm-container": {"bulk": False, "mode": "container"},
}
#: the suffix of a tool run from the --baseline checkout, and of the same
#: tool of this checkout run the same way (in a fresh process: a run in this
#: long-lived process measured ~6% slower than the same code run so, so the
#: two are compared like with like)
BASE, HEAD = "@base", "@head"


def baseline_run(tree: Path, tool: str, n: int) -> tuple[float, float, float | None]:
    """One run of *tool* (cnm or cnm-loop) by the bench.py of another checkout, on its own cnm."""
    out = Path(f"/tmp/cnm-bench-base-{os.getpid()}.json")
    peers = ["cnm-loop"] if tool == "cnm-loop" else []
    argv = [sys.executable, str(tree / "benchmarks" / "bench.py"), "-n", str(n), "-r", "1", "--settle", "0"]
    env = dict(os.environ, PYTHONPATH=str(tree))
    try:
        done = subprocess.run([*argv, "--peers", *peers, "--json", str(out)], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"baseline {tool} failed (exit {done.returncode}):\n{done.stderr.strip()}")
        (row,) = [r for r in json.loads(out.read_text())["results"] if r["tool"] == tool]
    finally:
        out.unlink(missing_ok=True)
    return row["setup_ms"], row["teardown_ms"], row.get("delete_calls_ms")


def run_tool(tool: str, n: int, baseline: Path | None = None) -> tuple[float, float, float | None]:
    """(setup, teardown, delete calls or None) in ms per sandbox."""
    if tool in CNM_TOOLS:
        return cnm_run(n, **CNM_TOOLS[tool])
    if tool.endswith(BASE):
        assert baseline is not None
        return baseline_run(baseline, tool.removesuffix(BASE), n)
    if tool.endswith(HEAD):
        return baseline_run(REPO, tool.removesuffix(HEAD), n)
    return (*peer_run(tool, n), None)


def ratio(value: float, base: float) -> str:
    """*value* as a multiple of *base*: 2 significant figures, at least."""
    x = value / base
    return f"{x:.0f}x" if x >= 100 else f"{x:.1f}x" if x >= 1 else f"{x:.2f}x"


def conditions(args: argparse.Namespace, tools: list[str], skipped: dict[str, str]) -> dict[str, Any]:
    """What the JSON records besides the figures: enough to redo the run."""
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # The commit measured; "-dirty" if the library itself (cnm/) has changes.
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    changed = subprocess.run([*git, "status", "--porcelain", "--", "cnm"], capture_output=True, text=True)
    commit = head.stdout.strip() + ("-dirty" if changed.stdout.strip() else "") if head.returncode == 0 else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(sys.orig_argv),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "cnm_commit": commit,
        "unit": "ms per sandbox",
        "counts": args.n,
        "runs": args.runs,
        "peer_runs": args.peer_runs,
        "settle_s": args.settle,
        "tools": tools,
        "skipped": skipped,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Written whole to a side file and renamed: a reader never sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(data, indent=2) + "\n")
    part.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Time cnm building and tearing down N sandboxes, each with one published port, "
        "side by side with peer tools.",
        epilog="See docs/performance.rst.", allow_abbrev=False
    )
    parser.add_argument("-n", type=int, nargs="+", default=[10, 100, 1000], help="sandbox counts (default 10 100 1000)")
    parser.add_argument(
        "-r", "--runs", type=int, default=3, help="runs per tool and count; medians are printed (default 3)"
    )
    parser.add_argument(
        "--peer-runs",
        type=int,
        metavar="K",
        help="runs per count for the peer scripts (default: --runs); CNI at N=1000 takes ~7 min per run",
    )
    parser.add_argument(
        "--peers",
        nargs="*",
        choices=[*(t for t in CNM_TOOLS if t != "cnm"), *sorted(PEERS)],
        help="tools to run beside cnm (default: cnm-loop and those of ipbatch, cni that are installed; "
        "'--peers' alone: cnm only)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="before each run, wait until the CPUs have been idle for this many seconds (at most 60 s "
        "in all): the kernel frees deleted namespaces in the background, for seconds after a run with "
        "N=1000, and that work would otherwise be charged to the next run (default 2)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also run cnm and cnm-loop as another checkout (DIR, e.g. a git worktree of an older commit) "
        "has them, with its own bench.py, interleaved with this one's runs (tools cnm@base, cnm-loop@base), "
        "and this checkout's the same way, each run in a fresh process (cnm@head, cnm-loop@head): compare those two",
    )
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="write every run's figures and the conditions to FILE"
    )
    parser.add_argument(
        "--plot",
        action="store_true",
        help="then run benchmarks/plot.py on the --json FILE (charts and table in docs/_static)",
    )
    args = parser.parse_args()
    if args.peer_runs is None:
        args.peer_runs = args.runs
    if args.runs < 1 or args.peer_runs < 1:
        parser.error("--runs and --peer-runs must be at least 1")
    if args.plot and args.json is None:
        parser.error("--plot needs --json FILE")
    for n in args.n:
        if n < 1:
            parser.error(f"N={n}: the sandbox count must be at least 1")
        if n > MAX_N:
            parser.error(
                f"N={n}: at most {MAX_N}; every sandbox is a port of one bridge, "
                "and a Linux bridge takes at most 1024 ports"
            )
    if os.geteuid() != 0:
        parser.error("needs root (it creates network namespaces)")

    others: list[str] = []
    skipped: dict[str, str] = {}
    for name in ["cnm-loop", *DEFAULT_PEERS] if args.peers is None else args.peers:
        if name in others:
            continue
        why = cnm_missing(name) if name in CNM_TOOLS else peer_missing(name)
        if why:
            print(f"# skipping {name}: {why}", flush=True)
            skipped[name] = why
        else:
            others.append(name)
    if args.baseline is not None:
        for suffix in (HEAD, BASE):
            others += ["cnm" + suffix] + ["cnm-loop" + suffix] * ("cnm-loop" in others)
    tools = ["cnm", *sorted(others, key=lambda tool: not tool.startswith("cnm"))]

    def runs_of(tool: str) -> int:
        return int(args.runs if tool.startswith("cnm") else args.peer_runs)

    data = conditions(args, tools, skipped)
    data["complete"] = False
    data["results"] = []
    print(
        f"{'tool':<14} {'N':>5} {'setup ms':>9} {'teardown ms':>12} {'setup vs cnm':>13} {'teardown vs cnm':>16}"
        f" {'delete calls ms':>16}"
    )
    for n in args.n:
        measured: dict[str, list[tuple[float, float, float | None]]] = {tool: [] for tool in tools}
        # Round robin over the tools, so a slow drift of the machine (other
        # work, a warming cache) is shared out instead of charged to one tool,
        # and rotated each run, so no tool always follows the same one: with
        # a fixed order, the same code measured 8% slower in the third place
        # than in the second (--baseline naming a copy of this checkout).
        for run in range(max(map(runs_of, tools))):
            for tool in tools[run % len(tools) :] + tools[: run % len(tools)]:
                if run < runs_of(tool):
                    settle(args.settle)
                    setup, teardown, calls = run_tool(tool, n, args.baseline)
                    measured[tool].append((setup, teardown, calls))
                    also = "" if calls is None else f" (delete calls {calls:.3f})"
                    print(
                        f"# N={n} {tool} run {run + 1}/{runs_of(tool)}: setup {setup:.3f} teardown {teardown:.3f}{also}",
                        file=sys.stderr,
                        flush=True,
                    )
        medians = {
            tool: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
            for tool, runs in measured.items()
        }
        base_setup, base_teardown = medians["cnm"]
        for tool, (setup, teardown) in medians.items():
            vs = "" if tool == "cnm" else f"{ratio(setup, base_setup):>13} {ratio(teardown, base_teardown):>16}"
            call_runs = [r[2] for r in measured[tool] if r[2] is not None]
            calls = statistics.median(call_runs) if call_runs else None
            shown = f" {calls:>16.3f}" if calls is not None else ""
            print(f"{tool:<14} {n:>5} {setup:>9.3f} {teardown:>12.3f} {vs:>30}{shown}".rstrip(), flush=True)
            result: dict[str, Any] = {
                "tool": tool,
                "n": n,
                "runs": len(measured[tool]),
                "setup_ms": round(setup, 4),
                "teardown_ms": round(teardown, 4),
                "setup_runs_ms": [round(r[0], 4) for r in measured[tool]],
                "teardown_runs_ms": [round(r[1], 4) for r in measured[tool]],
            }
            if calls is not None:
                result["delete_calls_ms"] = round(calls, 4)
                result["delete_calls_runs_ms"] = [round(c, 4) for c in call_runs]
            data["results"].append(result)
        if args.json is not None:  # after each N: a long run cut short keeps what it measured
            write_json(args.json, data)
    same = args.peer_runs == args.runs or all(tool.startswith("cnm") for tool in tools)
    runs = f"{args.runs} run{'s' * (args.runs != 1)}" + ("" if same else f" (peers: {args.peer_runs})")
    print(f"# ms per sandbox, median of {runs}; 'vs cnm' = how many times cnm's time")
    if args.json is not None:
        data["complete"] = True
        write_json(args.json, data)
        print(f"# wrote {args.json}")
        if args.plot:
            spec = importlib.util.spec_from_file_location("cnm_bench_plot", HERE / "plot.py")
            assert spec is not None and spec.loader is not None
            plot = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(plot)
            for path in plot.render(args.json):
                print(f"# wrote {path}")


if __name__ == "__main__":
    main()
