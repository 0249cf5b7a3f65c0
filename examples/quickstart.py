"""cnm quickstart: a bridge network with two sandboxes and a published port.

Everything happens inside an isolated host (fresh network namespaces that this
script creates and removes); the machine's own network is never touched.
Run as root:  ./scripts/demo
"""

from __future__ import annotations

import json
import os
import socket
import threading

import cnm


Owner = cnm.Host | cnm.Sandbox | cnm.Outside  # anything with a namespace to run code in


def serve_once(owner: Owner, port: int) -> tuple[socket.socket, threading.Thread, list[str]]:
    """A one-shot TCP server inside *owner*'s namespace that says hello and records the peer."""
    listener = owner.call(socket.create_server, ("0.0.0.0", port))
    listener.settimeout(5)
    peers: list[str] = []

    def serve() -> None:
        conn, peer = listener.accept()
        with conn:
            conn.sendall(b"hello from " + owner.name.encode())
        peers.append(peer[0])

    thread = threading.Thread(target=serve)
    thread.start()
    return listener, thread, peers


def fetch(owner: Owner, address: object, port: int) -> str:
    """Connect from inside *owner*'s namespace and return the greeting."""

    def go() -> bytes:
        with socket.create_connection((str(address), port), timeout=5) as conn:
            return conn.recv(100)

    answer: bytes = owner.call(go)
    return answer.decode()


def check(label: str, client: Owner, address: object, port: int, server: Owner, server_port: int) -> None:
    """*client* connects to address:port; *server* listens on server_port."""
    listener, thread, peers = serve_once(server, server_port)
    try:
        answer = fetch(client, address, port)
    finally:
        thread.join(5)
        listener.close()
    print(f"  {label:<22} {client.name:>7} -> {address}:{port}: {answer!r} (server saw {peers[0] if peers else '?'})")


def main() -> None:
    with cnm.Host.isolated("demo") as host:
        outside = host.outside  # the namespace playing the internet (an isolated host has one)
        assert outside is not None and host.address is not None and host.outside_address is not None
        net = host.create_network("web")
        a = host.create_sandbox("a")
        b = host.create_sandbox("b")
        net.connect(a, ports=["8080:80"])
        net.connect(b)

        print(f"host namespace {host.namespace.name}: uplink {host.address}, outside {host.outside_address}")
        print(f"network {net.name!r}: {net.driver} {net.interface}, subnet {net.subnet}, gateway {net.gateway}")
        for sandbox in (a, b):
            endpoint = sandbox.endpoints[0]
            ports = ", ".join(f"{p.host_port}->{p.container_port}/{p.protocol}" for p in endpoint.published) or "-"
            print(f"sandbox {sandbox.name!r}: {endpoint.interface} {sandbox.address(net)} mac {endpoint.mac} ports {ports}")

        print("traffic:")
        check("same bridge", a, b.address(net).ip, 7000, b, 7000)
        check("outbound, masqueraded", a, host.outside_address.ip, 9000, outside, 9000)
        check("published port", outside, host.address.ip, 8080, a, 80)
        check("published, hairpin", b, host.address.ip, 8080, a, 80)
        check("published, localhost", host, "127.0.0.1", 8080, a, 80)

        print("links in the host namespace (ip -br link, run inside it):")
        print("  " + host.run(["ip", "-br", "link"], capture_output=True, text=True).stdout.strip().replace("\n", "\n  "))
        print("addresses in sandbox 'a' (ip -br addr, run inside it):")
        print("  " + a.run(["ip", "-br", "addr"], capture_output=True, text=True).stdout.strip().replace("\n", "\n  "))
        print("network inspect:")
        print(json.dumps(net.inspect(), indent=2))
        print("sandbox 'a' inspect:")
        print(json.dumps(a.inspect(), indent=2))
        paths = host.namespace.path, outside.namespace.path, a.namespace.path, b.namespace.path

    left = [p for p in paths if os.path.exists(p)]
    print(f"torn down: {len(paths)} namespaces removed, {len(left)} left")


if __name__ == "__main__":
    main()
