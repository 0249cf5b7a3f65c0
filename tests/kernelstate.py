"""Snapshots of a namespace's kernel state, for "nothing changed" checks.

Tests may use the iproute2 and nft command-line tools to *inspect* what cnm
built (never to change anything); reading through independent tools keeps the
checks honest about cnm's own netlink code.
"""

from __future__ import annotations

import os
import re
import subprocess

NETNS_DIR = "/run/netns"


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def _netns_exec(netns: str | None, argv: list[str]) -> list[str]:
    return argv if netns is None else ["ip", "netns", "exec", netns, *argv]


def snapshot(netns: str | None = None) -> dict[str, object]:
    """Links, addresses, routes, rules, nftables ruleset and key sysctls of a namespace.

    ``netns=None`` is the namespace of this process (the machine's own, in tests).
    Volatile fields (counters, link state timers) are left out.
    """
    ip = ["ip"] if netns is None else ["ip", "-n", netns]
    links = _run([*ip, "-d", "-o", "link", "show"])
    # Drop the kernel's per-boot alternative/ifindex-derived noise that can differ between reads.
    links = re.sub(r"\s+\w+_timer\s+[\d.]+", "", links)  # bridge timers tick
    # Carrier is derived, not configured: a bridge has it while a port is up
    # (and right after creation), so it differs before and after a port came and went.
    links = re.sub(r",LOWER_UP>", ">", links).replace("<NO-CARRIER,", "<")
    links = re.sub(r" state (UP|DOWN|UNKNOWN|LOWERLAYERDOWN) ", " ", links)
    links = re.sub(r"\s+(numtxqueues|numrxqueues|gso_max_size|gso_max_segs|tso_max_size|tso_max_segs|gro_max_size|gso_ipv4_max_size|gro_ipv4_max_size)\s+\d+", "", links)
    state: dict[str, object] = {
        "links": sorted(links.splitlines()),
        "addresses": sorted(_run([*ip, "-o", "addr", "show"]).splitlines()),
        "routes": sorted(r.replace(" linkdown", "") for r in _run([*ip, "route", "show", "table", "all"]).splitlines()),
        "rules": _run([*ip, "rule", "show"]),
        "nftables": _run(_netns_exec(netns, ["nft", "list", "ruleset"])),
        "ip_forward": _run(_netns_exec(netns, ["cat", "/proc/sys/net/ipv4/ip_forward"])),
        "netns": sorted(os.listdir(NETNS_DIR)) if os.path.isdir(NETNS_DIR) else [],
    }
    owner = re.match(r"cnm-[0-9a-f]+-", netns or "")
    if owner:
        # A cnm host's namespaces all carry its owner token; those of anyone
        # else (a concurrent test run, say) are not part of its state.
        state["netns"] = [name for name in state["netns"] if name.startswith(owner.group())]  # type: ignore[union-attr]
    return state


def diff(before: dict[str, object], after: dict[str, object]) -> str:
    """A readable description of what differs ('' when nothing does)."""
    lines = []
    for key in before:
        if before[key] != after[key]:
            lines.append(f"--- {key} before:\n{before[key]}\n+++ {key} after:\n{after[key]}")
    return "\n".join(lines)
