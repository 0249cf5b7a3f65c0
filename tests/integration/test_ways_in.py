"""What must not get through: the host's loopback, and unpublished ports from outside.

Each test plays an attacker who is root in its own namespace (a sandbox, or
a neighbour on the uplink) and rewrites its routing, then checks with real
traffic that nothing arrives, while the traffic that should pass still does.
"""

from __future__ import annotations

import pytest

from tests.integration.traffic import REFUSED_TIMEOUT, Server, assert_unreachable, tcp_hello, udp_ping

HOST_SERVICE = 7777


def route_loopback_via(attacker, interface: str, gateway: object) -> None:
    """As root inside *attacker*'s namespace: send 127.0.0.0/8 out of
    *interface* via *gateway*, and accept answers coming from 127.0.0.1
    there (what it takes for a TCP handshake with the host's loopback)."""
    for argv in (
        ["sysctl", "-qw", f"net.ipv4.conf.{interface}.route_localnet=1"],
        ["sysctl", "-qw", f"net.ipv4.conf.{interface}.accept_local=1"],
        ["ip", "route", "del", "table", "local", "local", "127.0.0.0/8", "dev", "lo"],
        ["ip", "route", "del", "table", "local", "local", "127.0.0.1", "dev", "lo"],
        ["ip", "route", "add", "127.0.0.0/8", "via", str(gateway), "dev", interface],
    ):
        attacker.run(argv, check=True)
    route = attacker.run(["ip", "route", "get", "127.0.0.1"], check=True, capture_output=True, text=True).stdout
    assert f"via {gateway} dev {interface}" in route  # the attack is really set up


def assert_nothing_arrives(attacker, server_owner, address: str, port: int, server_port: int | None = None) -> None:
    """Neither a TCP connection nor a UDP datagram from *attacker* to address:port
    reaches a server of *server_owner* (on *server_port*, default *port*)."""
    assert_unreachable(attacker, address, port, server_owner, server_port)
    with Server(server_owner, server_port or port, udp=True) as listening:
        with pytest.raises(TimeoutError):
            udp_ping(attacker, address, port, timeout=REFUSED_TIMEOUT)
    assert listening.peers == []


@pytest.fixture
def web(host):
    """Network web with sandbox a (the attacker) and sandbox b publishing
    127.0.0.1:8080->80 and 8081->81 (every address)."""
    net = host.create_network("web")
    a = host.create_sandbox("a")
    b = host.create_sandbox("b")
    net.connect(a)
    net.connect(b, ports=["127.0.0.1:8080:80", "8081:81", "127.0.0.1:8080:80/udp"])
    return net, a, b


def test_a_sandbox_routing_loopback_via_its_gateway_gets_nothing_from_the_host(host, web):
    net, a, b = web
    route_loopback_via(a, "eth0", net.gateway)
    # A host service bound to 127.0.0.1 only...
    with Server(host, HOST_SERVICE, address="127.0.0.1") as listening:
        with pytest.raises(TimeoutError):
            tcp_hello(a, "127.0.0.1", HOST_SERVICE, timeout=REFUSED_TIMEOUT)
    assert listening.peers == []
    with Server(host, HOST_SERVICE, address="127.0.0.1", udp=True) as listening:
        with pytest.raises(TimeoutError):
            udp_ping(a, "127.0.0.1", HOST_SERVICE, timeout=REFUSED_TIMEOUT)
    assert listening.peers == []
    # ...and a port published on 127.0.0.1 only (TCP and UDP).
    assert_nothing_arrives(a, b, "127.0.0.1", 8080, 80)
    # The same sandbox still reaches what it may: the host on its gateway address.
    with Server(host, HOST_SERVICE, address=str(net.gateway)):
        assert tcp_hello(a, net.gateway, HOST_SERVICE) == b"hello"


def test_the_host_itself_still_reaches_loopback_services_and_ports(host, web):
    net, a, b = web
    route_loopback_via(a, "eth0", net.gateway)  # an attacker next door changes nothing for the host
    with Server(host, HOST_SERVICE, address="127.0.0.1"):
        assert tcp_hello(host, "127.0.0.1", HOST_SERVICE) == b"hello"
    with Server(b, 80, count=1) as server:
        assert tcp_hello(host, "127.0.0.1", 8080) == b"hello"  # published on 127.0.0.1
    assert len(server.peers) == 1
    with Server(b, 81):
        assert tcp_hello(host, "127.0.0.1", 8081) == b"hello"  # published on every address
    with Server(b, 80, udp=True):
        assert udp_ping(host, "127.0.0.1", 8080) == b"pong:ping"


def test_a_neighbour_on_the_uplink_gets_nothing_from_the_host_loopback(host, web):
    outside = host.outside
    route_loopback_via(outside, "eth0", host.address.ip)
    with Server(host, HOST_SERVICE, address="127.0.0.1") as listening:
        with pytest.raises(TimeoutError):
            tcp_hello(outside, "127.0.0.1", HOST_SERVICE, timeout=REFUSED_TIMEOUT)
    assert listening.peers == []
    net, a, b = web
    assert_nothing_arrives(outside, b, "127.0.0.1", 8080, 80)


# ---- direct access from outside -----------------------------------------------------


@pytest.fixture
def routed(host, web):
    """The outside routes web's subnet via the host, as a neighbour on the uplink could."""
    net, a, b = web
    host.outside.run(["ip", "route", "add", str(net.subnet), "via", str(host.address.ip)], check=True)
    return web


def test_the_outside_does_not_reach_unpublished_ports_directly(host, routed):
    net, a, b = routed
    # Unpublished ports of either sandbox, TCP and UDP...
    assert_nothing_arrives(host.outside, a, str(a.address(net).ip), 7000)
    assert_nothing_arrives(host.outside, b, str(b.address(net).ip), 7001)
    # ...and a published container port addressed directly (only the host port is published).
    assert_unreachable(host.outside, b.address(net).ip, 81, b)


def test_the_published_port_and_outbound_traffic_still_work_when_routed(host, routed):
    net, a, b = routed
    with Server(b, 81) as server:
        assert tcp_hello(host.outside, host.address.ip, 8081) == b"hello"
    assert server.peers[0][0] == str(host.outside_address.ip)  # DNAT only: the client's own address
    # Connections the sandboxes open go out masqueraded, and their replies come back.
    for sandbox in (a, b):
        with Server(host.outside, 9000) as outside_server:
            assert tcp_hello(sandbox, host.outside_address.ip, 9000) == b"hello"
        assert outside_server.peers[0][0] == str(host.address.ip)
    with Server(host.outside, 9053, udp=True):
        assert udp_ping(a, host.outside_address.ip, 9053) == b"pong:ping"


def test_the_host_still_reaches_its_sandboxes_directly(host, routed):
    """The guard is about forwarded traffic: the host's own connections pass, as in Docker."""
    net, a, b = routed
    with Server(a, 7000):
        assert tcp_hello(host, a.address(net).ip, 7000) == b"hello"


def test_without_cnm_firewall_rules_the_bridge_does_not_route_loopback():
    """The "none" backend installs no loopback guard, so the bridge must not
    have ``route_localnet`` on either (the kernel then drops the packets as martians)."""
    import cnm

    with cnm.Host.isolated(firewall="none") as bare:
        net = bare.create_network("web")
        a = bare.create_sandbox("a")
        net.connect(a)
        assert bare.namespace.read_sysctl(f"net/ipv4/conf/{net.interface}/route_localnet") == "0"
        route_loopback_via(a, "eth0", net.gateway)
        with Server(bare, HOST_SERVICE, address="127.0.0.1") as listening:
            with pytest.raises(TimeoutError):
                tcp_hello(a, "127.0.0.1", HOST_SERVICE, timeout=REFUSED_TIMEOUT)
        assert listening.peers == []


def test_a_bridge_under_the_loopback_guard_routes_loopback(host):
    """(That it goes off before the guard does: test_firewall_nftables.)"""
    net = host.create_network("web")
    key = f"net/ipv4/conf/{net.interface}/route_localnet"
    assert host.namespace.read_sysctl(key) == "1"  # what the host's own 127.0.0.1 ports need
