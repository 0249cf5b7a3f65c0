"""Docker's network modes with cnm: a network, host, none, and container:NAME (a pod).

Run as root: .venv/bin/python examples/network_modes.py
Everything happens inside an isolated host, removed at the end.
"""

from __future__ import annotations

import socket
import threading

import cnm


def hello_server(owner: cnm.Sandbox, port: int, address: str = "0.0.0.0") -> socket.socket:
    """A listening socket made inside *owner*'s namespace."""
    return owner.call(lambda: socket.create_server((address, port)))


def ask(owner: object, address: object, port: int) -> str:
    """Connect from inside *owner* (a sandbox or the outside) and say where it got to."""

    def go() -> str:
        try:
            with socket.create_connection((str(address), port), timeout=2) as conn:
                return conn.recv(100).decode()
        except OSError as exc:
            return f"failed: {exc.strerror}"

    return owner.call(go)  # type: ignore[attr-defined, no-any-return]


def answer_once(server: socket.socket, text: str) -> None:
    """Answer the first client with *text*, then close (on a thread of its own)."""

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(text.encode())
        server.close()

    threading.Thread(target=serve, daemon=True).start()


with cnm.Host.isolated("modes") as host:
    assert host.address is not None and host.outside_address is not None  # an isolated host has both
    print("networks:", [(n.name, n.inspect()["Driver"]) for n in host.networks])
    web = host.create_network("web", subnet="10.90.0.0/24")

    # docker run --network web -p 8080:80
    pod = host.create_sandbox("pod", network_mode=web, ports=["8080:80"])
    print("pod:", pod.network_mode, pod.inspect()["Networks"]["web"]["IPAddress"])

    # docker run --network container:pod  (shares pod's namespace)
    app = host.create_sandbox("app", network_mode="container:pod")
    answer_once(hello_server(app, 9000, "127.0.0.1"), "hello over the pod's loopback")
    print("pod -> 127.0.0.1:9000:", ask(pod, "127.0.0.1", 9000))
    answer_once(hello_server(app, 80), "hello from app, through the pod's port")
    print("outside -> host:8080:", ask(host.outside, host.address.ip, 8080))
    print("app inspect:", app.inspect())

    # docker run --network host  (the host's own namespace: no publishing needed)
    h = host.create_sandbox("h", network_mode="host")
    answer_once(hello_server(h, 7000), "hello from the host network")
    print("outside -> host:7000:", ask(host.outside, host.address.ip, 7000))
    print("h key is the host's:", h.key == host.namespace.path)

    # docker run --network none  (loopback only)
    n = host.create_sandbox("n", network_mode="none")
    print("none -> outside:", ask(n, host.outside_address.ip, 80))
    try:
        web.connect(n)
    except cnm.ConflictError as exc:
        print("Error:", exc)
    try:
        pod.delete()
    except cnm.StateError as exc:
        print("Error:", exc)
    pod.delete(sharers=True)
    print("sandboxes left:", [s.name for s in host.sandboxes])
print("torn down")
