"""A port a host socket holds is not published over it (issue 15, point 2).

A published port is a DNAT rule, which runs before the kernel looks for a
socket: published over a host service, it would send the outside's and the
host's own connections to a sandbox. cnm asks the kernel (sock_diag) which
ports the host's sockets hold and refuses those, before any change, as
Docker does (its bind fails) and Podman does (it holds the port).

Each case starts the host socket inside the host's namespace with
``host.call``; a refusal must leave the kernel and cnm's books as they were,
and the same request must pass once the socket is closed (so it was the
socket, and nothing else, that refused it).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import cnm
from cnm.netns import Namespace
from cnm.ports import DEFAULT_EPHEMERAL_PORTS
from tests.integration.traffic import Server, tcp_hello, udp_ping
from tests.kernelstate import diff, snapshot


@contextmanager
def host_socket(
    host: cnm.Host, address: str, port: int, *, udp: bool = False, v6only: bool | None = None
) -> Iterator[socket.socket]:
    """A socket in the host's namespace: a TCP listener, or a bound UDP socket."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET

    def make() -> socket.socket:
        s = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
        if v6only is not None:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        s.bind((address, port))
        if not udp:
            s.listen()
        return s

    s = host.call(make)
    try:
        yield s
    finally:
        s.close()


def books(host: cnm.Host) -> object:
    return [(n.name, [(e.name, [str(p) for p in e.published]) for e in n.endpoints]) for n in host.networks], [
        s.name for s in host.sandboxes
    ]


def refused_before_any_change(host: cnm.Host, call: Callable[[], Any], words: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """*call* raises a ConflictError naming *words*, having changed nothing and begun no namespace."""
    begun: list[str] = []
    create = Namespace.create

    def spy(cls: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        begun.append(name)
        return create(name, *args, **kwargs)

    kernel, before = snapshot(host.namespace.name), books(host)
    with monkeypatch.context() as patched:
        patched.setattr(Namespace, "create", classmethod(spy))
        with pytest.raises(cnm.ConflictError) as caught:
            call()
    assert isinstance(caught.value, ValueError)
    assert words in str(caught.value), f"{words!r} is not in {str(caught.value)!r}"
    assert "in use by a socket in the host's namespace" in str(caught.value)
    assert begun == []
    assert books(host) == before
    changed = diff(kernel, snapshot(host.namespace.name))
    assert not changed, changed


@pytest.fixture
def v4(host: cnm.Host) -> cnm.Network:
    return host.create_network("v4", subnet="10.91.0.0/24")


@pytest.fixture
def dual(host: cnm.Host) -> cnm.Network:
    return host.create_network("dual", ipv6=True, subnet=["10.92.0.0/24", "fd00:92::/64"])


# (host socket: address, port, udp, v6only), (network, ports), words of the message
REFUSED = [
    pytest.param(("0.0.0.0", 2222, False, None), ("v4", "2222:22"), "2222/tcp", id="tcp wildcard, published on every address"),
    pytest.param(("127.0.0.1", 2222, False, None), ("v4", "2222:22"), "(127.0.0.1:2222/tcp", id="tcp on 127.0.0.1, published on every address"),
    pytest.param(("0.0.0.0", 2222, False, None), ("v4", "127.0.0.1:2222:22"), "127.0.0.1:2222/tcp", id="tcp wildcard, published on 127.0.0.1"),
    pytest.param(("127.0.0.1", 2222, False, None), ("v4", "127.0.0.1:2222:22"), "127.0.0.1:2222/tcp", id="tcp on 127.0.0.1, published there"),
    pytest.param(("::", 2222, False, False), ("v4", "2222:22"), "([::]:2222/tcp", id="dual-stack tcp on ::, published on IPv4"),
    pytest.param(("::", 2222, False, True), ("dual", "[::]:2222:22"), "[::]:2222/tcp", id="IPv6-only tcp on ::, published on IPv6"),
    pytest.param(("::", 2222, False, True), ("dual", "2222:22"), "[::]:2222/tcp", id="IPv6-only tcp on ::, published dual-stack"),
    pytest.param(("0.0.0.0", 5300, True, None), ("v4", "5300:53/udp"), "5300/udp", id="udp wildcard"),
    pytest.param(("127.0.0.1", 5300, True, None), ("v4", "5300:53/udp"), "(127.0.0.1:5300/udp", id="udp on 127.0.0.1"),
    pytest.param(("::", 5300, True, True), ("dual", "5300:53/udp"), "[::]:5300/udp", id="IPv6-only udp, published dual-stack"),
    pytest.param(("::ffff:127.0.0.1", 5300, True, False), ("v4", "127.0.0.1:5300:53/udp"), "[::ffff:7f00:1]:5300/udp", id="udp on an IPv4-mapped address"),
    pytest.param(("0.0.0.0", 8005, False, None), ("v4", "8000-8010:8000-8010"), "8005/tcp", id="tcp inside a published range"),
    pytest.param(("0.0.0.0", 8010, True, None), ("v4", ["8000-8010:8000-8010/udp", "9000:90"]), "8010/udp", id="udp at the end of a range"),
]

# The same, but the host socket holds something the publication does not use.
ALLOWED = [
    pytest.param(("127.0.0.1", 2222, False, None), ("v4", "10.91.0.1:2222:22"), id="tcp on 127.0.0.1, published on another address"),
    pytest.param(("::", 2222, False, True), ("v4", "2222:22"), id="IPv6-only tcp, published on IPv4 only"),
    pytest.param(("0.0.0.0", 2222, False, None), ("dual", "[::]:2222:22"), id="IPv4 tcp, published on IPv6 only"),
    pytest.param(("0.0.0.0", 2222, True, None), ("v4", "2222:22"), id="udp socket, tcp published"),
    pytest.param(("0.0.0.0", 2222, False, None), ("v4", "2222:22/udp"), id="tcp listener, udp published"),
    pytest.param(("0.0.0.0", 8011, False, None), ("v4", "8000-8010:8000-8010"), id="tcp just past a published range"),
]


@pytest.mark.parametrize(("held", "wanted", "words"), REFUSED)
@pytest.mark.parametrize("path", ["connect", "bulk"])
def test_a_port_a_host_socket_holds_is_refused_before_any_change(host, v4, dual, monkeypatch, held, wanted, words, path):
    address, port, udp, v6only = held
    network = {"v4": v4, "dual": dual}[wanted[0]]
    sandbox = host.create_sandbox("s")
    calls = {
        "connect": lambda: network.connect(sandbox, ports=wanted[1]),
        "bulk": lambda: host.create_sandboxes([cnm.SandboxRequest("b", ports=wanted[1])], network=network),
    }
    with host_socket(host, address, port, udp=udp, v6only=v6only):
        refused_before_any_change(host, calls[path], words, monkeypatch)
    calls[path]()  # the socket, and nothing else, stood in the way


@pytest.mark.parametrize(("held", "wanted"), ALLOWED)
def test_a_host_socket_on_what_the_publication_does_not_use_is_no_clash(host, v4, dual, held, wanted):
    address, port, udp, v6only = held
    network = {"v4": v4, "dual": dual}[wanted[0]]
    with host_socket(host, address, port, udp=udp, v6only=v6only):
        endpoint = network.connect(host.create_sandbox("s"), ports=wanted[1])
    assert endpoint.published


def test_the_bulk_path_refuses_a_clash_in_a_later_batch_before_any_change(host, v4, monkeypatch):
    """Ports are added every PUBLISH_BATCH joins; the sockets are looked at once, before all of them."""
    from cnm.api.bulk import PUBLISH_BATCH

    count = PUBLISH_BATCH + 2
    requests = [cnm.SandboxRequest(f"b{i}", ports=f"{20000 + i}:80") for i in range(count)]
    with host_socket(host, "0.0.0.0", 20000 + count - 1):
        refused_before_any_change(
            host, lambda: host.create_sandboxes(requests, network=v4), f"{20000 + count - 1}/tcp", monkeypatch
        )


def test_an_ephemeral_port_is_never_one_a_host_socket_holds(host, v4):
    first, _ = DEFAULT_EPHEMERAL_PORTS
    with host_socket(host, "0.0.0.0", first), host_socket(host, "::", first + 1, udp=True, v6only=False):
        tcp = v4.connect(host.create_sandbox("a"), ports="80")
        udp = v4.connect(host.create_sandbox("b"), ports=["53/udp", "54/udp"])
    assert [p.host_port for p in tcp.published] == [first + 1]
    assert sorted(p.host_port for p in udp.published) == [first, first + 2]


def test_a_host_service_keeps_its_traffic(host, v4):
    """The attack: a sandbox publishes 2222 over the host's service on 2222.

    Refused, the outside and the host's own connections still reach the
    host's service, and the sandbox gets none of them."""
    sandbox = host.create_sandbox("attacker")
    with Server(host, 2222, count=3) as service, Server(sandbox, 22, count=3) as impostor:
        with pytest.raises(cnm.ConflictError):
            v4.connect(sandbox, ports="2222:22")
        v4.connect(sandbox)  # connected, but publishing nothing
        assert tcp_hello(host.outside, host.address.ip, 2222) == b"hello"
        assert tcp_hello(host, host.address.ip, 2222) == b"hello"
        assert tcp_hello(host, "127.0.0.1", 2222) == b"hello"
    assert [peer for peer, _ in service.peers] == [str(host.outside_address.ip), str(host.address.ip), "127.0.0.1"]
    assert impostor.peers == []
    other = host.create_sandbox("attacker2")
    with Server(host, 5300, udp=True) as service, Server(other, 53, udp=True) as impostor:
        with pytest.raises(cnm.ConflictError):
            v4.connect(other, ports="5300:53/udp")
        assert udp_ping(host.outside, host.address.ip, 5300) == b"pong:ping"
    assert [peer for peer, _ in service.peers] == [str(host.outside_address.ip)]
    assert impostor.peers == []


def test_a_host_process_that_binds_a_published_port_later_gets_none_of_its_traffic(host, v4):
    """What cnm chose (see the explanation page): it holds no socket per
    published port, so a host process may bind the port later; the DNAT
    runs first, so the outside's and the host's own connections to the
    published port still reach the sandbox, and the later binder gets none of
    them (as with Podman without its port-holding proxy)."""
    sandbox = host.create_sandbox("s")
    v4.connect(sandbox, ports=["2222:22", "5300:53/udp"])
    with Server(sandbox, 22, count=2) as published, Server(host, 2222, count=2) as late:
        assert tcp_hello(host.outside, host.address.ip, 2222) == b"hello"
        assert tcp_hello(host, host.address.ip, 2222) == b"hello"
    assert len(published.peers) == 2
    assert late.peers == []
    with Server(sandbox, 53, udp=True) as published, Server(host, 5300, udp=True) as late:
        assert udp_ping(host.outside, host.address.ip, 5300) == b"pong:ping"
    assert len(published.peers) == 1
    assert late.peers == []


def test_the_kernel_lists_only_the_ports_asked_for_in_the_namespace_asked_about(host):
    """sock_diag's port filter (sent with the request) and its namespace: a
    socket of the host outside the range, and one in another namespace, are not listed."""
    from cnm.sock_diag import SockDiag

    other = cnm.Host.isolated()
    try:
        with host_socket(host, "0.0.0.0", 20000), host_socket(host, "::", 20006), host_socket(other, "0.0.0.0", 20001):
            with SockDiag(host.namespace) as diag:
                listed = diag.holding(["tcp"], [4, 6], (20000, 20005))
                everything = diag.holding(["tcp"], [4, 6])
    finally:
        other.close()
    assert [(s.address.compressed, s.port) for s in listed] == [("0.0.0.0", 20000)]
    assert {(s.address.compressed, s.port) for s in everything} >= {("0.0.0.0", 20000), ("::", 20006)}
    assert 20001 not in {s.port for s in everything}
