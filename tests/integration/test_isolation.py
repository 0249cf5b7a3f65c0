"""Networks are isolated from each other, as Docker's DOCKER-ISOLATION chains do.

The host routes between its bridges, so without isolation a sandbox on one
network reaches a sandbox on another through the host (masqueraded as the
other bridge's gateway). These tests send real traffic: what must fail is
expected to time out (the host drops it silently), and the server must not
have seen a connection.
"""

from __future__ import annotations

import pytest

from tests.integration.traffic import Server, assert_unreachable, tcp_hello


@pytest.fixture
def two(host):
    """Networks front and back, sandbox a on front (publishing 8080:80), b on back."""
    front = host.create_network("front")
    back = host.create_network("back")
    a = host.create_sandbox("a")
    b = host.create_sandbox("b")
    front.connect(a, ports=["8080:80"])
    back.connect(b)
    return front, back, a, b


def test_a_sandbox_does_not_reach_another_network(host, two):
    front, back, a, b = two
    assert_unreachable(a, b.address(back).ip, 7000, b)
    assert_unreachable(b, a.address(front).ip, 7001, a)


def test_the_host_stays_reachable_on_every_bridge(host, two):
    # A gateway address is the host's own: traffic to it is delivered, not forwarded, so
    # isolation does not apply (nor does it in Docker). Only the other bridge's sandboxes are cut off.
    front, back, a, b = two
    with Server(host, 7002, address=str(back.gateway)):
        assert tcp_hello(a, back.gateway, 7002) == b"hello"


def test_each_network_still_reaches_the_outside(host, two):
    front, back, a, b = two
    for sandbox in (a, b):
        with Server(host.outside, 9000) as server:
            assert tcp_hello(sandbox, host.outside_address.ip, 9000) == b"hello"
        assert server.peers[0][0] == str(host.address.ip)


def test_a_published_port_is_reachable_from_another_network(host, two):
    """Through the host's address, as Docker allows: DNAT makes it a published-port connection."""
    front, back, a, b = two
    with Server(a, 80) as server:
        assert tcp_hello(b, host.address.ip, 8080) == b"hello"
    assert len(server.peers) == 1
    # ...and only the published port: the same sandbox's other ports stay out of reach.
    assert_unreachable(b, a.address(front).ip, 81, a)


def test_a_published_port_still_works_from_outside_and_its_own_network(host, two):
    front, back, a, _ = two
    c = host.create_sandbox("c")
    front.connect(c)
    with Server(a, 80, count=2) as server:
        assert tcp_hello(host.outside, host.address.ip, 8080) == b"hello"
        assert tcp_hello(c, host.address.ip, 8080) == b"hello"
    assert len(server.peers) == 2


def test_traffic_routed_back_into_its_own_bridge_passes(host, two):
    """Only traffic between two bridges is isolated: the host forwarding a packet back into
    the bridge it came from (here forced by a route via the gateway; with br_netfilter, every
    packet between two sandboxes of a network) is not."""
    front, _, a, _ = two
    c = host.create_sandbox("c")
    front.connect(c)
    c.run(["ip", "route", "add", f"{a.address(front).ip}/32", "via", str(front.gateway)], check=True)
    with Server(a, 7000) as server:
        assert tcp_hello(c, a.address(front).ip, 7000) == b"hello"
    assert server.peers[0][0] == str(c.address(front).ip)  # routed, not NATed


def test_a_sandbox_on_both_networks_reaches_both(host, two):
    front, back, a, b = two
    m = host.create_sandbox("m")
    front.connect(m)
    back.connect(m)
    with Server(a, 7000):
        assert tcp_hello(m, a.address(front).ip, 7000) == b"hello"
    with Server(b, 7001):
        assert tcp_hello(m, b.address(back).ip, 7001) == b"hello"
    # ...and each network reaches it on its own address there.
    with Server(m, 7002, count=2) as server:
        assert tcp_hello(a, m.address(front).ip, 7002) == b"hello"
        assert tcp_hello(b, m.address(back).ip, 7002) == b"hello"
    assert sorted(server.peers[i][0] for i in range(2)) == sorted([str(a.address(front).ip), str(b.address(back).ip)])


def test_the_other_networks_stay_isolated_when_one_goes(host, two):
    """Deleting a network removes its own part of the isolation, not the shared rule."""
    front, back, a, b = two
    third = host.create_network("third")
    c = host.create_sandbox("c")
    third.connect(c)
    back.delete(force=True)
    assert_unreachable(a, c.address(third).ip, 7000, c)
    with Server(a, 80):
        assert tcp_hello(c, host.address.ip, 8080) == b"hello"


def test_an_internal_network_stays_closed_to_other_networks(host, two):
    front, _, a, _ = two
    private = host.create_network("private", internal=True)
    p = host.create_sandbox("p")
    private.connect(p)
    p.run(["ip", "route", "add", "default", "via", str(private.gateway)], check=True)
    assert_unreachable(a, p.address(private).ip, 7000, p)
    assert_unreachable(p, a.address(front).ip, 7001, a)
