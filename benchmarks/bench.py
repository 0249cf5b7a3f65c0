"""Time cnm building and tearing down N sandboxes, each with one published port.

The scenario of ../shared/bench-peers (and FACTS.md): one host namespace with a
bridge network; N sandboxes, each connected with an address, lo up, a default
route and one published TCP port (masquerade on). Everything runs inside a
``cnm.Host.isolated()`` created and removed by this script.

    .venv/bin/python benchmarks/bench.py            # N=200, 3 runs
    .venv/bin/python benchmarks/bench.py -n 50 100 500 -r 3

Prints setup and teardown milliseconds per sandbox (median of the runs).
Setup is timed from an empty host to all N connected; teardown from there
until every namespace and veth is gone (``host.close()``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import cnm


def one_run(n: int) -> tuple[float, float]:
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
    start = time.perf_counter()
    host.close()
    teardown = time.perf_counter() - start
    return setup * 1000 / n, teardown * 1000 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, nargs="+", default=[200], help="sandbox counts (default 200)")
    parser.add_argument("-r", "--runs", type=int, default=3, help="runs per count; the median is printed")
    args = parser.parse_args()
    print(f"{'tool':<8} {'N':>5} {'setup ms/sandbox':>17} {'teardown ms/sandbox':>20}")
    for n in args.n:
        runs = [one_run(n) for _ in range(args.runs)]
        setup = statistics.median(r[0] for r in runs)
        teardown = statistics.median(r[1] for r in runs)
        print(f"{'cnm':<8} {n:>5} {setup:>17.3f} {teardown:>20.3f}")


if __name__ == "__main__":
    main()
