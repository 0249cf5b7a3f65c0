"""What must not get through where IPv6 is concerned: IPv4 out of an IPv6-only
network, and a sandbox's router advertisements to its neighbours.

Each test plays an attacker who is root inside a sandbox and checks with
real traffic that the attack gets nothing, while what should work still
does. The attacks are the ones the backend's ``ip`` table (``unaddressed``)
and ``bridge`` table exist for (see :mod:`cnm.firewall.nftables.ruleset`).
"""

from __future__ import annotations

import ipaddress
import json
import select
import socket
import struct
import time

import pytest

from cnm.firewall import SANDBOX_PORT_GROUP
from tests.integration.traffic import REFUSED_TIMEOUT, Server, tcp_hello, udp_ping

# ---- IPv4 out of an IPv6-only network ---------------------------------------------

ATTACKER4 = "10.99.0.5"


def mac_of(owner, interface: str) -> str:
    (link,) = json.loads(owner.run(["ip", "-j", "link", "show", interface], check=True, capture_output=True, text=True).stdout)
    return str(link["address"])


def give_itself_ipv4(host, attacker, net) -> None:
    """As root inside *attacker* (on IPv6-only *net*): an IPv4 address, the
    bridge's MAC as the neighbour of a made-up gateway, and a default route via it."""
    for argv in (
        ["ip", "addr", "add", f"{ATTACKER4}/24", "dev", "eth0"],
        ["ip", "neigh", "add", "10.99.0.1", "lladdr", mac_of(host, net.interface), "dev", "eth0"],
        ["ip", "route", "add", "default", "via", "10.99.0.1"],
    ):
        attacker.run(argv, check=True)


class Sniffer:
    """A raw socket in *owner*'s namespace: every IPv4 packet of *protocol*
    arriving there, whatever the ports or the handshake's fate (a TCP SYN
    whose answer cannot return is seen too)."""

    def __init__(self, owner, protocol: int) -> None:
        self.sock = owner.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, protocol))
        self.sock.setblocking(False)

    def sources(self, port: int) -> set[str]:
        """The sources of the packets seen so far to destination *port*."""
        seen = set()
        while select.select([self.sock], [], [], 0.3)[0]:
            packet = self.sock.recv(65535)
            header = (packet[0] & 0x0F) * 4
            (dport,) = struct.unpack_from(">H", packet, header + 2)
            if dport == port:
                seen.add(socket.inet_ntoa(packet[12:16]))
        return seen

    def close(self) -> None:
        self.sock.close()


def assert_ipv4_gets_nowhere(attacker, target, address: str, port: int, server_port: int | None = None) -> None:
    """Neither a TCP SYN nor a UDP datagram from *attacker* to address:port
    arrives in *target*'s namespace (at *server_port*, default *port*); a UDP
    server there sees nobody."""
    arriving = server_port or port
    tcp, udp = Sniffer(target, socket.IPPROTO_TCP), Sniffer(target, socket.IPPROTO_UDP)
    try:
        with Server(target, arriving, udp=True) as listening:
            with pytest.raises(OSError):  # a timeout: nothing comes back
                udp_ping(attacker, address, port, timeout=REFUSED_TIMEOUT)
            with pytest.raises(OSError):
                tcp_hello(attacker, address, port, timeout=REFUSED_TIMEOUT)
        assert ATTACKER4 not in tcp.sources(arriving)
        assert ATTACKER4 not in udp.sources(arriving)
        assert listening.peers == []
    finally:
        tcp.close()
        udp.close()


@pytest.fixture(params=[True, False], ids=["internal", "not-internal"])
def v6only(host, request):
    """An IPv6-only network with attacker sandbox a, an IPv4 network with
    sandbox t publishing 8081->81 (TCP and UDP); the outside accepts
    packets from any source and routes the attacker's made-up subnet back
    via the host (the most an attacker could hope for)."""
    net = host.create_network("v6", ipv4=False, ipv6=True, internal=request.param)
    other = host.create_network("other")
    a, t = host.create_sandbox("a"), host.create_sandbox("t")
    net.connect(a)
    other.connect(t, ports=["8081:81", "8081:81/udp"])
    host.outside.run(["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.eth0.rp_filter=0"], check=True)
    host.outside.run(["ip", "route", "add", "10.99.0.0/24", "via", str(host.address.ip)], check=True)
    give_itself_ipv4(host, a, net)
    return net, other, a, t


def test_an_ipv6_only_network_sends_no_ipv4_to_the_outside(host, v6only):
    net, other, a, t = v6only
    assert_ipv4_gets_nowhere(a, host.outside, str(host.outside.address.ip), 9999)


def test_an_ipv6_only_network_sends_no_ipv4_to_other_networks(host, v6only):
    net, other, a, t = v6only
    # Through a port published on the host's address (DNAT), and to the sandbox's own address.
    assert_ipv4_gets_nowhere(a, t, str(host.address.ip), 8081, 81)
    assert_ipv4_gets_nowhere(a, t, str(t.address(other).ip), 7000)


def test_the_ipv6_only_network_still_works_over_ipv6(host, v6only):
    net, other, a, t = v6only
    b = host.create_sandbox("b")
    net.connect(b)
    with Server(b, 80, address="::"):
        assert tcp_hello(a, b.address(net, 6).ip, 80) == b"hello"
    if not net.internal:
        with Server(host.outside, 80, address="::") as server:
            assert tcp_hello(a, host.outside.address6.ip, 80) == b"hello"
        assert server.peers and server.peers[0][0] != str(a.address(net, 6).ip)  # masqueraded
    # The IPv4 network next to it is as before.
    with Server(host.outside, 80) as server:
        assert tcp_hello(t, host.outside.address.ip, 80) == b"hello"


# ---- router advertisements from a sandbox -------------------------------------------

ROGUE_PREFIX = ipaddress.IPv6Network("2001:db8:66::/64")
ROGUE_ROUTER = "fe80::bad"


def rogue_router(attacker, interface: str = "eth0") -> None:
    """As root inside *attacker*: a link-local address, then router
    advertisements to all nodes (a default route via itself, high
    preference, and a prefix to autoconfigure addresses from)."""
    attacker.run(["ip", "addr", "add", f"{ROGUE_ROUTER}/64", "dev", interface, "nodad"], check=True)
    time.sleep(0.2)  # the address must be usable before the socket sends from it

    def send() -> None:
        index = socket.if_nametoindex(interface)
        with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)  # what a receiver demands
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            # type 134, hop limit 64, preference high, router lifetime 1800 s
            advert = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0x08, 1800, 0, 0)
            # prefix information: on-link and autonomous, valid 1 day
            advert += struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 86400, 14400, 0) + ROGUE_PREFIX.network_address.packed
            for _ in range(3):
                s.sendto(advert, ("ff02::1", 0, 0, index))
                time.sleep(0.1)

    attacker.call(send)
    time.sleep(0.5)  # what the victim makes of them


def hijacked(victim) -> list[str]:
    """What of the rogue router the victim took: routes via it, addresses from its prefix."""
    routes = victim.run(["ip", "-6", "route", "show", "table", "all"], check=True, capture_output=True, text=True).stdout
    addresses = victim.run(["ip", "-6", "addr"], check=True, capture_output=True, text=True).stdout
    took = [line for line in routes.splitlines() if ROGUE_ROUTER in line or str(ROGUE_PREFIX) in line]
    return took + [line.strip() for line in addresses.splitlines() if "2001:db8:66:" in line]


def test_router_advertisements_on_an_ipv4_only_network_reach_no_neighbour(host):
    v4 = host.create_network("v4only")
    attacker, victim = host.create_sandbox("attacker"), host.create_sandbox("victim")
    v4.connect(attacker)
    v4.connect(victim)
    rogue_router(attacker)
    assert hijacked(victim) == []
    # The victim's join to a dual-stack network afterwards works, with its gateway as the IPv6 route out.
    dual = host.create_network("dual", ipv6=True)
    dual.connect(victim)
    route = victim.run(["ip", "-6", "route", "get", str(host.outside.address6.ip)], check=True, capture_output=True, text=True)
    assert f"via {dual.gateway6} dev eth1" in route.stdout
    with Server(host.outside, 80, address="::"):
        assert tcp_hello(victim, host.outside.address6.ip, 80) == b"hello"


def test_router_advertisements_on_a_dual_stack_network_reach_no_neighbour(host):
    dual = host.create_network("dual", ipv6=True)
    attacker, victim = host.create_sandbox("attacker"), host.create_sandbox("victim")
    dual.connect(attacker)
    dual.connect(victim)
    rogue_router(attacker)
    assert hijacked(victim) == []
    route = victim.run(["ip", "-6", "route", "get", str(host.outside.address6.ip)], check=True, capture_output=True, text=True)
    assert f"via {dual.gateway6} dev eth0" in route.stdout
    # Neighbours still talk IPv6 (neighbour discovery is multicast ICMPv6 too).
    with Server(victim, 80, address="::"):
        assert tcp_hello(attacker, victim.address(dual, 6).ip, 80) == b"hello"


def test_dhcpv6_server_messages_reach_no_neighbour(host):
    dual = host.create_network("dual", ipv6=True)
    attacker, victim = host.create_sandbox("attacker"), host.create_sandbox("victim")
    dual.connect(attacker)
    dual.connect(victim)
    target = str(victim.address(dual, 6).ip)

    def send_from(port: int) -> None:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::", port))
            s.sendto(b"advertise", (target, 546))

    with Server(victim, 546, address="::", udp=True) as listening:
        attacker.call(send_from, 547)  # a DHCPv6 server's reply
        time.sleep(0.3)
    assert listening.peers == []
    with Server(victim, 546, address="::", udp=True) as listening:
        attacker.call(send_from, 5470)  # the same from any other port passes
        time.sleep(0.3)
    assert [peer[0] for peer in listening.peers] == [str(attacker.address(dual, 6).ip)]


def test_the_bridge_table_is_installed_and_a_hosts_own_bridge_is_left_alone(host):
    v4 = host.create_network("v4only")
    attacker, victim = host.create_sandbox("attacker"), host.create_sandbox("victim")
    v4.connect(attacker)
    listing = host.run(["nft", "list", "table", "bridge", f"cnm-{host.token}"], check=True, capture_output=True, text=True)
    assert f"meta protocol ip6 iifgroup {SANDBOX_PORT_GROUP} jump from_sandbox" in listing.stdout
    assert "icmpv6 type nd-router-advert drop" in listing.stdout
    (port,) = json.loads(host.run(["ip", "-j", "-d", "link", "show", "master", v4.interface], capture_output=True, text=True, check=True).stdout)
    assert port["group"] == str(SANDBOX_PORT_GROUP)  # ip prints a group without a name as its number
    # The host's own bridge, with a port into each sandbox: an advertisement crosses it.
    host.run(["ip", "link", "add", "br-own", "type", "bridge"], check=True)
    try:
        host.run(["ip", "link", "set", "br-own", "up"], check=True)
        for sandbox, end in ((attacker, "own-a"), (victim, "own-v")):
            sandbox.run(["ip", "link", "add", "own", "type", "veth", "peer", "name", end, "netns", host.namespace.name], check=True)
            sandbox.run(["sysctl", "-qw", "net.ipv6.conf.own.disable_ipv6=0", "net.ipv6.conf.own.accept_ra=1"], check=True)
            sandbox.run(["ip", "link", "set", "own", "up"], check=True)
            host.run(["ip", "link", "set", end, "master", "br-own", "up"], check=True)
        rogue_router(attacker, "own")
        assert hijacked(victim) != []  # what the bridge table stops on cnm's bridges, here untouched
    finally:
        host.run(["ip", "link", "del", "own-a"])
        host.run(["ip", "link", "del", "own-v"])
        host.run(["ip", "link", "del", "br-own"])
