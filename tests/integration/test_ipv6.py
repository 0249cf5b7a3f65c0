"""Dual-stack IPv6 on bridge networks, end to end with real traffic.

What Docker 28 and Podman offer with --ipv6: both addresses and both default
routes for each endpoint, outbound masquerade, published ports on [::] and on
a given IPv6 host address, hairpin, isolation between networks, internal
networks, and the direct-access and loopback protections, all for IPv6 as
for IPv4; IPv6-only networks; and networks without IPv6 left IPv6-free.
"""

from __future__ import annotations

import socket
from ipaddress import IPv6Address, IPv6Network

import pytest

import cnm
from tests.integration.test_all_or_nothing import _sweep
from tests.integration.traffic import REFUSED_TIMEOUT, Server, tcp_hello, udp_ping


def _run(owner, *argv: str) -> str:
    return owner.run(list(argv), capture_output=True, text=True, check=True).stdout


def _unreachable6(client, address, port: int, server, server_port: int | None = None) -> None:
    """*client* gets nothing from a server on [::]:*server_port* in *server*, over TCP or UDP."""
    with Server(server, server_port or port, address="::") as listening:
        with pytest.raises(OSError):
            tcp_hello(client, address, port, timeout=REFUSED_TIMEOUT)
    assert listening.peers == []
    with Server(server, server_port or port, address="::", udp=True) as listening:
        with pytest.raises(TimeoutError):
            udp_ping(client, address, port, timeout=REFUSED_TIMEOUT)
    assert listening.peers == []


@pytest.fixture
def dual(host):
    """Dual-stack network "web" (subnets chosen by IPAM) with sandboxes a and b,
    b publishing 8080:80 (both families) and [::]:8443:443 (IPv6 only)."""
    net = host.create_network("web", ipv6=True)
    a, b = host.create_sandbox("a"), host.create_sandbox("b")
    net.connect(a)
    net.connect(b, ports=["8080:80", "[::]:8443:443"])
    return net, a, b


def test_each_endpoint_gets_both_addresses_and_both_default_routes(host, dual):
    net, a, _ = dual
    assert net.subnet is not None and net.subnet6 is not None
    assert net.subnet6.prefixlen == 64 and net.subnet6.subnet_of(IPv6Network("fd00::/8")), "a ULA /64"
    v6 = a.address(net, 6)
    assert v6 in net.subnet6 and v6.ip == next(iter(net.subnet6.hosts())) + 1, "the first after the gateway"
    assert f"inet6 {v6}" in _run(a, "ip", "-6", "addr", "show", "dev", "eth0")
    assert "fe80" not in _run(a, "ip", "-6", "addr", "show", "dev", "eth0"), "no link-local address (nor its DAD)"
    assert f"default via {net.gateway6} dev eth0" in _run(a, "ip", "-6", "route")
    assert f"default via {net.gateway} dev eth0" in _run(a, "ip", "-4", "route")
    assert f"inet6 {net.gateway6}/64" in _run(host, "ip", "-6", "addr", "show", "dev", net.interface)


def test_the_ipv6_prefix_is_derived_from_the_host_and_networks_get_the_next_64(host):
    first = host.create_network("one", ipv6=True)
    second = host.create_network("two", ipv6=True)
    assert first.subnet6.supernet(new_prefix=48) == second.subnet6.supernet(new_prefix=48), "one /48 per host"
    assert int(second.subnet6.network_address) - int(first.subnet6.network_address) == 1 << 64
    with cnm.Host.isolated() as other:
        assert other.create_network("one", ipv6=True).subnet6 != first.subnet6, "another host, another /48"


def test_inspect_shows_both_families_as_docker_does(host, dual):
    net, a, _ = dual
    view = net.inspect()
    assert view["EnableIPv4"] is True and view["EnableIPv6"] is True
    assert [c["Subnet"] for c in view["IPAM"]["Config"]] == [str(net.subnet), str(net.subnet6)]
    assert [c["Gateway"] for c in view["IPAM"]["Config"]] == [str(net.gateway), str(net.gateway6)]
    (container,) = [c for c in view["Containers"].values() if c["Name"] == "a"]
    assert container["IPv6Address"] == str(a.address(net, 6))
    settings = a.inspect()["Networks"]["web"]
    assert settings["GlobalIPv6Address"] == str(a.address(net, 6).ip)
    assert settings["GlobalIPv6PrefixLen"] == 64 and settings["IPv6Gateway"] == str(net.gateway6)
    assert settings["IPAddress"] == str(a.address(net).ip)


def test_given_subnets_gateways_ranges_and_a_static_ipv6_address(host):
    net = host.create_network(
        "web",
        ipv6=True,
        subnet=["10.5.0.0/24", "fd00:5::/64"],
        gateway=["10.5.0.254", "fd00:5::fe"],
        ip_range=["10.5.0.128/25", "fd00:5::100/120"],
    )
    a, b = host.create_sandbox("a"), host.create_sandbox("b")
    fixed = net.connect(a, ip6="fd00:5::42")
    auto = net.connect(b)
    assert str(fixed.ip6) == "fd00:5::42" and str(fixed.ip) == "10.5.0.128"  # the IPv4 side from the range
    assert str(auto.ip6) == "fd00:5::100" and str(auto.ip) == "10.5.0.129"
    assert a.inspect()["Networks"]["web"]["IPAMConfig"] == {"IPv6Address": "fd00:5::42"}
    assert f"default via fd00:5::fe dev eth0" in _run(a, "ip", "-6", "route")
    assert tcp_hello_over(a, b, str(auto.ip6)) == b"hello"


def tcp_hello_over(client, server, address: str, port: int = 7100) -> bytes:
    with Server(server, port, address="::"):
        return tcp_hello(client, address, port)


def test_an_ipv6_only_network(host):
    net = host.create_network("six", ipv4=False, ipv6=True, subnet="fd00:6::/64")
    a, b = host.create_sandbox("a"), host.create_sandbox("b")
    ea, eb = net.connect(a), net.connect(b)
    assert ea.address is None and ea.addresses == (ea.address6,) and net.subnet is None
    assert "inet " not in _run(a, "ip", "-4", "addr", "show", "dev", "eth0")
    assert _run(a, "ip", "-4", "route") == ""
    view = net.inspect()
    assert view["EnableIPv4"] is False and [c["Subnet"] for c in view["IPAM"]["Config"]] == ["fd00:6::/64"]
    assert a.inspect()["Networks"]["six"]["IPAddress"] == ""
    assert tcp_hello_over(a, b, str(eb.ip6)) == b"hello"
    with pytest.raises(cnm.NotFoundError, match="has no IPv4"):
        a.address(net)


def test_a_sandbox_reaches_the_outside_over_ipv6_masqueraded(host, dual):
    _, a, _ = dual
    with Server(host.outside, 9000, address="::") as server:
        assert tcp_hello(a, host.outside_address6.ip, 9000) == b"hello"
    assert server.peers[0][0] == str(host.address6.ip), "the outside sees the host's address"
    with Server(host.outside, 9001, address="::", udp=True) as server:
        assert udp_ping(a, host.outside_address6.ip, 9001) == b"pong:ping"
    assert server.peers[0][0] == str(host.address6.ip)


def test_the_outside_reaches_published_ports_over_ipv6(host, dual):
    net, _, b = dual
    with Server(b, 80, address="::") as server:
        assert tcp_hello(host.outside, host.address6.ip, 8080) == b"hello"
    assert server.peers[0][0] == str(host.outside_address6.ip), "no source NAT on the way in"
    with Server(b, 443, address="::"):
        assert tcp_hello(host.outside, host.address6.ip, 8443) == b"hello"
    with Server(b, 80, address="0.0.0.0"):
        assert tcp_hello(host.outside, host.address.ip, 8080) == b"hello", "8080:80 is published on IPv4 too"
    with Server(b, 443, address="0.0.0.0") as server:
        with pytest.raises(OSError):
            tcp_hello(host.outside, host.address.ip, 8443, timeout=REFUSED_TIMEOUT)
    assert server.peers == [], "[::]:8443 is IPv6 only"
    ports = b.inspect()["Ports"]
    assert ports["80/tcp"] == [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "::", "HostPort": "8080"}]
    assert ports["443/tcp"] == [{"HostIp": "::", "HostPort": "8443"}]


def test_a_port_published_on_one_ipv6_host_address(host):
    net = host.create_network("web", ipv6=True)
    a = host.create_sandbox("a")
    net.connect(a, ports=[f"[{host.address6.ip}]:8081:81"])
    with Server(a, 81, address="::"):
        assert tcp_hello(host.outside, host.address6.ip, 8081) == b"hello"
    assert a.inspect()["Ports"]["81/tcp"] == [{"HostIp": str(host.address6.ip), "HostPort": "8081"}]


def test_hairpin_over_ipv6(host, dual):
    _, a, b = dual
    with Server(b, 80, address="::") as server:
        assert tcp_hello(a, host.address6.ip, 8080) == b"hello"
    assert len(server.peers) == 1


def test_networks_are_isolated_from_each_other_over_ipv6(host, dual):
    net, a, _ = dual
    other = host.create_network("other", ipv6=True)
    c = host.create_sandbox("c")
    ec = other.connect(c)
    _unreachable6(a, ec.ip6, 7000, c)
    _unreachable6(c, a.address(net, 6).ip, 7000, a)


def test_an_internal_network_keeps_its_ipv6_traffic_on_its_bridge(host):
    net = host.create_network("quiet", ipv6=True, internal=True)
    a, b = host.create_sandbox("a"), host.create_sandbox("b")
    net.connect(a)
    eb = net.connect(b)
    assert "default" not in _run(a, "ip", "-6", "route")
    assert tcp_hello_over(a, b, str(eb.ip6)) == b"hello"
    a.run(["ip", "-6", "route", "add", "default", "via", str(net.gateway6)], check=True)  # the attacker tries anyway
    _unreachable6(a, host.outside_address6.ip, 9000, host.outside)


def test_the_outside_does_not_reach_unpublished_ipv6_ports_directly(host, dual):
    net, a, b = dual
    host.outside.run(["ip", "-6", "route", "add", str(net.subnet6), "via", str(host.address6.ip)], check=True)
    _unreachable6(host.outside, a.address(net, 6).ip, 7000, a)
    _unreachable6(host.outside, b.address(net, 6).ip, 80, b), "the container port of a mapping, addressed directly"
    with Server(b, 80, address="::"):
        assert tcp_hello(host.outside, host.address6.ip, 8080) == b"hello", "the published port still works"
    with Server(host, 7001, address="::"):
        assert tcp_hello(a, host.address6.ip, 7001) == b"hello", "a sandbox still reaches the host"


def test_a_sandbox_gets_nothing_from_the_host_ipv6_loopback(host, dual):
    net, a, _ = dual
    # Root in the sandbox: ::1 is sent out of eth0 via the gateway.
    a.run(["ip", "-6", "route", "del", "table", "local", "local", "::1", "dev", "lo"], check=True)
    a.run(["ip", "-6", "route", "add", "::1/128", "via", str(net.gateway6), "dev", "eth0"], check=True)
    with Server(host, 7777, address="::1") as server:
        with pytest.raises(OSError):
            tcp_hello(a, "::1", 7777, timeout=REFUSED_TIMEOUT)
    assert server.peers == []


def test_a_network_without_ipv6_stays_ipv6_free(host):
    net = host.create_network("four")
    a = host.create_sandbox("a")
    net.connect(a)
    assert _run(a, "ip", "-6", "addr", "show", "dev", "eth0") == ""
    assert _run(host, "ip", "-6", "addr", "show", "dev", net.interface) == ""
    assert "ip6" not in _run(host, "nft", "list", "tables"), "no IPv6 table until a network has IPv6"
    six = host.create_network("six", ipv6=True)
    assert f"table ip6 cnm-{host.token}" in _run(host, "nft", "list", "tables")
    six.delete()
    assert "ip6" not in _run(host, "nft", "list", "tables"), "and none after the last one"


def test_bulk_sandboxes_on_a_dual_stack_network(host):
    net = host.create_network("web", ipv6=True, subnet=["10.7.0.0/24", "fd00:7::/64"])
    made = host.create_sandboxes(
        [cnm.SandboxRequest("a", ip6="fd00:7::a", ports=["8080:80"]), cnm.SandboxRequest("b")], network=net
    )
    a, b = made
    assert str(a.address(net, 6).ip) == "fd00:7::a" and str(b.address(net, 6).ip) == "fd00:7::2"
    with Server(a, 80, address="::"):
        assert tcp_hello(host.outside, host.address6.ip, 8080) == b"hello"
    assert tcp_hello_over(b, a, "fd00:7::a") == b"hello"
    host.delete_sandboxes(made)
    assert net.endpoints == []


@pytest.mark.parametrize("after", [False, True], ids=["refused", "failed-after"])
def test_a_dual_stack_network_is_all_or_nothing(host, monkeypatch, after):
    host.create_network("first")  # the IPv4 table exists; the IPv6 one comes with the network under test
    steps = _sweep(host, monkeypatch, lambda: host.create_network("web", ipv6=True), after)
    assert steps >= 5  # bridge, sysctl, two addresses, forwarding, firewall
    assert host.network("web").subnet6 is not None


@pytest.mark.parametrize("after", [False, True], ids=["refused", "failed-after"])
def test_a_dual_stack_connect_is_all_or_nothing(host, monkeypatch, after):
    net = host.create_network("web", ipv6=True, subnet=["10.8.0.0/24", "fd00:8::/64"])
    sandbox = host.create_sandbox("a")
    _sweep(host, monkeypatch, lambda: net.connect(sandbox, ports=["8080:80"]), after, [sandbox])
    (endpoint,) = net.endpoints
    assert str(endpoint.ip6) == "fd00:8::2", "every failed attempt gave its addresses back"
    assert [p.family for p in endpoint.published] == [4, 6]


def test_ipv6_socket_family_helper_is_what_the_tests_use():
    assert socket.has_ipv6 and IPv6Address("::1").is_loopback
