"""An ipvlan network (l2 mode) on the isolated host's uplink; needs the kernel's ipvlan module.

Run as root: .venv/bin/python examples/ipvlan.py
Docker: docker network create -d ipvlan --subnet 198.18.0.0/24 --gateway 198.18.0.1
        --ip-range 198.18.0.128/25 -o parent=eth0 -o ipvlan_mode=l2 lan
Where the kernel has no ipvlan module, the first sandbox's join says so.
"""

from __future__ import annotations

import cnm

with cnm.Host.isolated("lan") as host:
    assert host.uplink is not None  # an isolated host has one
    lan = host.create_network(
        "lan", "ipvlan", subnet="198.18.0.0/24", gateway="198.18.0.1", ip_range="198.18.0.128/25",
        options={"parent": host.uplink, "ipvlan_mode": "l2"},
    )  # fmt: skip
    try:
        a = host.create_sandbox("a", network_mode=lan)
    except cnm.MissingKernelFeatureError as exc:
        print("no ipvlan here:", exc)
    else:
        print("a:", a.address(lan), "sharing the MAC of", host.uplink)
print("torn down")
