"""Many sandboxes at once, as a test harness builds them: the bulk API.

``host.create_sandboxes`` makes every sandbox of the list in one call (each
connected to the network, with its own published port), all or nothing;
``host.delete_sandboxes`` takes them apart in one go. Runs inside an isolated
host; run as root:  .venv/bin/python examples/many.py [N]
"""

from __future__ import annotations

import socket
import sys
import threading
import time

import cnm

count = int(sys.argv[1]) if len(sys.argv) > 1 else 200

with cnm.Host.isolated() as host:
    net = host.create_network("lab", subnet="10.77.0.0/16")
    requests = [cnm.SandboxRequest(f"node{i}", ports=[f"{30000 + i}:8000"]) for i in range(count)]
    start = time.perf_counter()
    nodes = host.create_sandboxes(requests, network=net)
    took = time.perf_counter() - start
    print(f"built {len(nodes)} sandboxes in {took * 1000:.0f} ms ({took * 1000 / count:.2f} ms each)")
    print("first:", nodes[0].name, nodes[0].address(net), "last:", nodes[-1].name, nodes[-1].address(net))

    # A server in the last sandbox, reached from outside through its published port.
    server = nodes[-1].call(socket.create_server, ("0.0.0.0", 8000))

    def answer() -> None:
        conn, peer = server.accept()
        with conn:
            conn.sendall(f"hello from {nodes[-1].name}, you are {peer[0]}".encode())

    thread = threading.Thread(target=answer)
    thread.start()

    def ask() -> bytes:
        assert host.address is not None
        with socket.create_connection((str(host.address.ip), 30000 + count - 1), timeout=5) as c:
            return c.recv(100)

    assert host.outside is not None and host.address is not None  # an isolated host has both
    print("outside ->", f"{host.address.ip}:{30000 + count - 1}:", host.outside.call(ask).decode())
    thread.join()
    server.close()

    start = time.perf_counter()
    host.delete_sandboxes(nodes)
    print(f"deleted them in {(time.perf_counter() - start) * 1000:.0f} ms; sandboxes left: {len(host.sandboxes)}")
