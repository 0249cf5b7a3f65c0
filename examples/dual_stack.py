"""Dual-stack IPv6: a network with both families, as ``docker network create --ipv6``.

Two sandboxes get an IPv4 and an IPv6 address each, with a default route
per family; one publishes a port, which the outside reaches over IPv6; the
other reaches the outside over IPv6, masqueraded behind the host's address.
"""

from __future__ import annotations

import socket

import cnm


def serve_once(owner: cnm.Sandbox | cnm.Outside, port: int) -> socket.socket:
    """A listening IPv6 socket inside *owner*'s namespace."""
    return owner.call(lambda: socket.create_server(("::", port), family=socket.AF_INET6))


def hello(owner: cnm.Sandbox | cnm.Outside, address: object, port: int, server: socket.socket) -> str:
    """Connect from *owner* to address:port; return the address the server saw."""
    with owner.call(lambda: socket.create_connection((str(address), port), timeout=5)):
        peer, seen = server.accept()
        peer.close()
    return str(seen[0])


def main() -> None:
    with cnm.Host.isolated("dual") as host:
        assert host.outside is not None and host.address6 is not None and host.outside_address6 is not None
        net = host.create_network("web", ipv6=True)
        print("subnets:", *net.subnets)
        a, b = host.create_sandbox("a"), host.create_sandbox("b")
        net.connect(a, ports=["8080:80"])
        net.connect(b)
        print("a:", *a.endpoints[0].addresses)
        print("b:", *b.endpoints[0].addresses)
        with serve_once(a, 80) as server:
            seen = hello(host.outside, host.address6.ip, 8080, server)
        print(f"outside -> [{host.address6.ip}]:8080 reached a (server saw {seen})")
        with serve_once(host.outside, 9000) as server:
            seen = hello(b, host.outside_address6.ip, 9000, server)
        print(f"b -> outside over IPv6 (server saw {seen}, the host's address)")
        settings = a.inspect()["Networks"]["web"]
        print("inspect:", settings["GlobalIPv6Address"], "gateway", settings["IPv6Gateway"])
        print("ports:", a.inspect()["Ports"]["80/tcp"])
    print("torn down")


if __name__ == "__main__":
    main()
