"""Real traffic between namespaces, with sockets only (no external tools).

A server is a listening socket created inside a namespace (through
``owner.call``) and served from a thread here; a client connects from inside
another namespace. The server reports the peer address it saw, so tests can
check NAT.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

TIMEOUT = 5.0


class Server:
    """Accepts one TCP connection (or one UDP datagram), answers, records the peer."""

    def __init__(self, owner: Any, port: int, *, address: str = "0.0.0.0", udp: bool = False, count: int = 1) -> None:
        self.peers: list[tuple[str, int]] = []
        self.udp = udp
        family = _family(address)
        if udp:
            def make() -> socket.socket:
                s = socket.socket(family, socket.SOCK_DGRAM)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((address, port))
                return s
            self.sock = owner.call(make)
        else:
            self.sock = owner.call(lambda: socket.create_server((address, port), family=family))
        self.sock.settimeout(TIMEOUT)
        self.thread = threading.Thread(target=self._serve, args=(count,), daemon=True)
        self.thread.start()

    def _serve(self, count: int) -> None:
        try:
            for _ in range(count):
                # The peer is recorded before answering: once a client has its
                # answer, the record is there.
                if self.udp:
                    data, peer = self.sock.recvfrom(100)
                    self.peers.append(peer[0:2])
                    self.sock.sendto(b"pong:" + data, peer)
                else:
                    conn, peer = self.sock.accept()
                    self.peers.append(peer[0:2])
                    with conn:
                        conn.sendall(b"hello")
        except OSError:
            pass

    def close(self) -> None:
        self.thread.join(0.2)
        if self.thread.is_alive():  # nobody came (as some tests expect): wake the accept
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.thread.join(TIMEOUT)
        self.sock.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: for connections that must fail: a dropped SYN would otherwise wait the full TIMEOUT
REFUSED_TIMEOUT = 1.0


def tcp_hello(owner: Any, address: object, port: int, timeout: float = TIMEOUT) -> bytes:
    """Connect from inside *owner*'s namespace; return what the server sent."""

    def go() -> bytes:
        with socket.create_connection((str(address), port), timeout=timeout) as c:
            return c.recv(100)

    return owner.call(go)


def assert_unreachable(
    client: Any,
    address: object,
    port: int,
    server: Any,
    server_port: int | None = None,
    error: type[OSError] = TimeoutError,
) -> None:
    """*client* cannot connect to address:port (failing with *error*; a
    TimeoutError means the packets were dropped), and a server listening in
    *server*'s namespace on *server_port* (default: *port*) sees nobody."""
    import pytest

    with Server(server, server_port or port) as listening:
        with pytest.raises(error):
            tcp_hello(client, address, port, timeout=REFUSED_TIMEOUT)
    assert listening.peers == []


def _family(address: object) -> socket.AddressFamily:
    """IPv6 for an address written with colons (a server on "::" takes IPv6 only)."""
    return socket.AF_INET6 if ":" in str(address) else socket.AF_INET


def udp_ping(owner: Any, address: object, port: int, timeout: float = TIMEOUT) -> bytes:
    def go() -> bytes:
        with socket.socket(_family(address), socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(b"ping", (str(address), port))
            return s.recvfrom(100)[0]

    return owner.call(go)
