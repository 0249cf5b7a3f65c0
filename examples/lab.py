"""A lab of three hosts on one underlay, with one outside: a cluster in one process,
with a published port, a macvlan wire across two hosts and an overlay network across three.

Run as root: .venv/bin/python examples/lab.py
"""

from __future__ import annotations

import socket
import threading

import cnm


def answer_once(owner: object, port: int) -> None:
    """A server in *owner* telling its first client where it came from."""
    server = owner.call(lambda: socket.create_server(("0.0.0.0", port)))  # type: ignore[attr-defined]

    def serve() -> None:
        conn, peer = server.accept()
        with conn:
            conn.sendall(f"seen from {peer[0]}".encode())
        server.close()

    threading.Thread(target=serve, daemon=True).start()


def ask(owner: object, address: object, port: int) -> str:
    go = lambda: socket.create_connection((str(address), port), timeout=2).recv(100).decode()  # noqa: E731
    return owner.call(go)  # type: ignore[attr-defined, no-any-return]


with cnm.Lab(["h1", "h2", "h3"]) as lab:
    for host in lab.hosts:
        print(host.name, "on the underlay at", host.address, "and", host.address6, "- tunnels from", host.tunnel_address)
    h1, h2, h3 = lab.hosts
    assert h3.address is not None  # a lab's hosts are isolated hosts: each has one
    # A web sandbox on h3, published on its host: reached from another host and from the outside.
    web = h3.create_network("web", subnet="10.40.0.0/24")
    box = h3.create_sandbox("web", network_mode=web, ports=["8080:80"])
    answer_once(box, 80)
    print("h1 -> h3:8080:", ask(h1, h3.address.ip, 8080))
    answer_once(box, 80)
    print("outside -> h3:8080:", ask(lab.outside, h3.address.ip, 8080))
    # Sandboxes of h1 and h2 on one wire, by macvlan on each host's uplink.
    a, b = (
        h.create_sandbox(n, network_mode=h.create_network("lan", "macvlan", subnet="198.18.0.0/24",
                         gateway="198.18.0.1", ip_range=r, options={"parent": h.uplink or ""}))
        for h, n, r in ((h1, "a", "198.18.0.128/26"), (h2, "b", "198.18.0.192/26"))
    )  # fmt: skip
    answer_once(b, 7000)
    print("a on h1 -> b on h2:", ask(a, "198.18.0.192", 7000))
    # One overlay network across all three hosts (VXLAN on the lab's data plane).
    ov = lab.create_network("ov", "overlay", subnet="10.200.0.0/24")
    x = h1.create_sandbox("x", network_mode=ov[0])
    y = h3.create_sandbox("y", network_mode=ov[2])
    answer_once(y, 7000)
    print(f"x ({x.address(ov[0]).ip}) on h1 -> y ({y.address(ov[2]).ip}) on h3:", ask(x, y.address(ov[2]).ip, 7000))
print("torn down")
