"""A macvlan network on the isolated host's uplink: sandboxes straight on the outside's wire.

Run as root: .venv/bin/python examples/macvlan.py
Docker: docker network create -d macvlan --subnet 198.18.0.0/24 --gateway 198.18.0.1
        --ip-range 198.18.0.128/25 -o parent=eth0 lan
(and -d ipvlan -o ipvlan_mode=l2 the same way, where the kernel has ipvlan).
"""

from __future__ import annotations

import socket
import threading

import cnm

with cnm.Host.isolated("lan") as host:
    assert host.outside is not None and host.uplink is not None and host.outside_address is not None  # an isolated host has them
    lan = host.create_network(
        "lan",
        "macvlan",
        subnet="198.18.0.0/24",  # the uplink's own subnet: the host is .2, the outside .1
        gateway="198.18.0.1",
        ip_range="198.18.0.128/25",  # addresses nobody on the wire uses yet
        options={"parent": host.uplink, "macvlan_mode": "bridge"},
    )
    a = host.create_sandbox("a", network_mode=lan)
    print("a:", a.address(lan), "MAC", lan.endpoint("a").mac, "on", host.uplink)

    server = host.outside.call(lambda: socket.create_server(("0.0.0.0", 80)))

    def serve() -> None:
        conn, peer = server.accept()
        with conn:
            conn.sendall(f"the outside saw {peer[0]}".encode())

    threading.Thread(target=serve, daemon=True).start()
    outside = str(host.outside_address.ip)
    got = a.call(lambda: socket.create_connection((outside, 80), timeout=2).recv(100))
    print("a -> outside:", got.decode(), "(its own address: no NAT)")
    server.close()
print("torn down")
