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
MOUNT_DIRS = "/run/cnm"  # cnm's per-host directories of sandbox namespaces


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def _netns_exec(netns: str | None, argv: list[str]) -> list[str]:
    """*argv* run inside *netns*: a name in /run/netns or the path of a namespace mount."""
    if netns is None:
        return argv
    path = netns if "/" in netns else os.path.join(NETNS_DIR, netns)
    return ["nsenter", f"--net={path}", *argv]


def namespaces() -> list[str]:
    """Every named namespace: /run/netns/NAME as NAME, cnm's sandboxes as
    cnm/TOKEN/FILE; and cnm's owner records, as cnm/TOKEN.owner."""
    names = sorted(os.listdir(NETNS_DIR)) if os.path.isdir(NETNS_DIR) else []
    if os.path.isdir(MOUNT_DIRS):
        for entry in sorted(os.listdir(MOUNT_DIRS)):
            path = os.path.join(MOUNT_DIRS, entry)
            if not os.path.isdir(path):
                names.append(f"cnm/{entry}")
                continue
            names.append(f"cnm/{entry}/")
            try:
                names += [f"cnm/{entry}/{f}" for f in sorted(os.listdir(path))]
            except FileNotFoundError:
                pass  # another run's host closed just then
    return names


def snapshot(netns: str | None = None) -> dict[str, object]:
    """Links, addresses, routes, rules, nftables ruleset and key sysctls of a namespace.

    ``netns=None`` is the namespace of this process (the machine's own, in tests).
    Volatile fields (counters, link state timers) are left out.
    """
    ip = _netns_exec(netns, ["ip"])
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
        "netns": namespaces(),
    }
    owner = re.search(r"cnm[-/]([0-9a-f]+)[-/]", netns or "")
    if owner:
        # A cnm host's namespaces all carry its owner token; those of anyone
        # else (a concurrent test run, say) are not part of its state.
        token = owner.group(1)
        state["netns"] = [
            n for n in namespaces() if n.startswith((f"cnm-{token}-", f"cnm/{token}/")) or n == f"cnm/{token}.owner"
        ]
    return state


def diff(before: dict[str, object], after: dict[str, object]) -> str:
    """A readable description of what differs ('' when nothing does)."""
    lines = []
    for key in before:
        if before[key] != after[key]:
            lines.append(f"--- {key} before:\n{before[key]}\n+++ {key} after:\n{after[key]}")
    return "\n".join(lines)
