"""Behaviours 1-3 of the foundation: traffic really flows, NAT really happens."""

from __future__ import annotations

import pytest

from tests.integration.traffic import Server, assert_unreachable, tcp_hello, udp_ping


@pytest.fixture
def web(host):
    net = host.create_network("web")
    a = host.create_sandbox("a")
    b = host.create_sandbox("b")
    net.connect(a, ports=["8080:80"])
    net.connect(b)
    return net, a, b


def test_two_sandboxes_reach_each_other_and_their_gateway(host, web):
    net, a, b = web
    with Server(b, 7000) as server:
        assert tcp_hello(a, b.address(net).ip, 7000) == b"hello"
    assert server.peers[0][0] == str(a.address(net).ip)  # same bridge: no NAT between them
    with Server(a, 7001) as server:
        assert tcp_hello(b, a.address(net).ip, 7001) == b"hello"
    with Server(host, 7002, address=str(net.gateway)) as server:
        assert tcp_hello(a, net.gateway, 7002) == b"hello"


def test_sandbox_reaches_outside_masqueraded(host, web):
    net, a, _ = web
    with Server(host.outside, 9000) as server:
        assert tcp_hello(a, host.outside_address.ip, 9000) == b"hello"
    assert server.peers == [(str(host.address.ip), server.peers[0][1])]


def test_published_port_from_outside(host, web):
    net, a, _ = web
    with Server(a, 80) as server:
        assert tcp_hello(host.outside, host.address.ip, 8080) == b"hello"
    # DNAT only: the sandbox sees the real client.
    assert server.peers[0][0] == str(host.outside_address.ip)


@pytest.mark.parametrize("target", ["127.0.0.1", "address"])
def test_published_port_from_the_host_itself(host, web, target):
    net, a, _ = web
    address = host.address.ip if target == "address" else target
    with Server(a, 80):
        assert tcp_hello(host, address, 8080) == b"hello"


def test_published_port_hairpin_from_a_sandbox_on_the_same_bridge(host, web):
    net, a, b = web
    with Server(a, 80):
        assert tcp_hello(b, host.address.ip, 8080) == b"hello"


def test_published_port_hairpin_to_itself(host, web):
    net, a, _ = web
    with Server(a, 80, count=1):
        assert tcp_hello(a, host.address.ip, 8080) == b"hello"


def test_unpublished_port_is_not_reachable_from_outside(host, web):
    net, a, _ = web
    assert_unreachable(host.outside, host.address.ip, 8081, a, server_port=81, error=OSError)


def test_udp_published_port_and_host_ip(host):
    net = host.create_network("udp")
    a = host.create_sandbox("a")
    net.connect(a, ports=["5353:53/udp", "127.0.0.1:9090:90"])
    with Server(a, 53, udp=True):
        assert udp_ping(host.outside, host.address.ip, 5353) == b"pong:ping"
    with Server(a, 90):
        assert tcp_hello(host, "127.0.0.1", 9090) == b"hello"
    # Bound to 127.0.0.1 only: not reachable through the uplink address.
    assert_unreachable(host.outside, host.address.ip, 9090, a, server_port=90, error=OSError)


def test_ephemeral_host_port_is_published(host):
    net = host.create_network("eph")
    a = host.create_sandbox("a")
    endpoint = net.connect(a, ports=["80"])
    (published,) = endpoint.published
    assert 49153 <= published.host_port <= 60999
    with Server(a, 80):
        assert tcp_hello(host.outside, host.address.ip, published.host_port) == b"hello"
    assert a.inspect()["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(published.host_port)}]}


def test_internal_network_has_no_way_out(host):
    net = host.create_network("private", internal=True)
    a = host.create_sandbox("a")
    b = host.create_sandbox("b")
    net.connect(a)
    net.connect(b)
    with Server(b, 7000):
        assert tcp_hello(a, b.address(net).ip, 7000) == b"hello"
    routes = a.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
    assert "default" not in routes  # an internal network gives no default route
    # Even a sandbox that routes through the gateway by itself gets nowhere: the host drops it.
    a.run(["ip", "route", "add", "default", "via", str(net.gateway)], check=True)
    assert_unreachable(a, host.outside_address.ip, 9000, host.outside)


def test_two_networks_sandbox_on_both(host):
    front = host.create_network("front")
    back = host.create_network("back")
    assert front.subnet != back.subnet and not front.subnet.overlaps(back.subnet)
    a = host.create_sandbox("a")
    db = host.create_sandbox("db")
    front.connect(a)
    back.connect(a)
    back.connect(db)
    assert [e.interface for e in a.endpoints] == ["eth0", "eth1"]
    with Server(db, 5432):
        assert tcp_hello(a, db.address(back).ip, 5432) == b"hello"
    with Server(host.outside, 9000) as server:
        assert tcp_hello(a, host.outside_address.ip, 9000) == b"hello"
    assert server.peers[0][0] == str(host.address.ip)  # out through the route-giving network, masqueraded
