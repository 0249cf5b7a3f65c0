"""cnm.rtmsg packs by hand what pyroute2 would encode: check it byte for byte."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from cnm import rtmsg as pack
from cnm.errors import InvalidArgumentError
from cnm.kernel import Route, Rtnl
from tests.unit.encoding import pyroute2_bytes


def packed(mtype: int, flags: int, body: bytes, seq: int) -> bytes:
    return pack.message(mtype, flags, body, seq=seq)[1]


def ifinfo(index=0, up=False, attrs=()):
    m = ifinfmsg()
    m["index"] = index
    m["flags"] = m["change"] = 1 if up else 0
    m["attrs"] = list(attrs)
    return m


def test_getlink_dellink_set_up():
    by_name = ifinfo(attrs=[("IFLA_IFNAME", "eth0"), ("IFLA_EXT_MASK", 8)])
    assert packed(18, 0, pack.getlink("eth0"), 7) == pyroute2_bytes(by_name, 18, 0, 7)
    by_index = ifinfo(12, attrs=[("IFLA_EXT_MASK", 8)])
    assert packed(18, 0, pack.getlink(index=12), 6) == pyroute2_bytes(by_index, 18, 0, 6)
    assert packed(17, 4, pack.dellink(42), 8) == pyroute2_bytes(ifinfo(42), 17, 4, 8)
    assert packed(16, 4, pack.set_up(3), 9) == pyroute2_bytes(ifinfo(3, up=True), 16, 4, 9)


@pytest.mark.parametrize("mtu", [None, 1400])
@pytest.mark.parametrize("snooping", [True, False])
def test_bridge(mtu, snooping):
    attrs = [("IFLA_IFNAME", "br-0123456789a"), ("IFLA_ADDRESS", "02:aa:bb:cc:dd:ee")]
    if mtu:
        attrs.append(("IFLA_MTU", mtu))
    info = [("IFLA_INFO_KIND", "bridge")]
    if not snooping:
        info.append(("IFLA_INFO_DATA", {"attrs": [("IFLA_BR_MCAST_SNOOPING", 0)]}))
    attrs.append(("IFLA_LINKINFO", {"attrs": info}))
    expected = pyroute2_bytes(ifinfo(up=True, attrs=attrs), 16, 0x605, 11)
    assert packed(16, 0x605, pack.bridge("br-0123456789a", "02:aa:bb:cc:dd:ee", mtu, snooping), 11) == expected


@pytest.mark.parametrize("mtu, master, mac", [(None, 5, "02:42:ac:11:00:02"), (9000, None, None)])
@pytest.mark.parametrize("own_mac", [None, "02:11:22:33:44:55"])
def test_veth(mtu, master, mac, own_mac):
    peer = [["IFLA_IFNAME", "eth0"]]
    if mac:
        peer.append(["IFLA_ADDRESS", mac])
    if mtu:
        peer.append(["IFLA_MTU", mtu])
    peer.append(["IFLA_NET_NS_FD", 17])
    queues = [("IFLA_NUM_TX_QUEUES", 1), ("IFLA_NUM_RX_QUEUES", 1)]
    peer += queues
    attrs = [("IFLA_IFNAME", "vethabcdef0")]
    if own_mac:
        attrs.append(("IFLA_ADDRESS", own_mac))
    if mtu:
        attrs.append(("IFLA_MTU", mtu))
    attrs += queues
    attrs.append(
        (
            "IFLA_LINKINFO",
            {"attrs": [("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"attrs": peer})]})]},
        )
    )
    if master:
        attrs.append(("IFLA_MASTER", master))
    expected = pyroute2_bytes(ifinfo(up=True, attrs=attrs), 16, 0x605, 12)
    assert packed(16, 0x605, pack.veth("vethabcdef0", own_mac, master, mtu, "eth0", 17, mac), 12) == expected


@pytest.mark.parametrize(
    "alias, port",
    [("cnm:x:network/web", ("hairpin",)), ("cnm:y", ()), (None, ("hairpin",)), ("cnm:z", ("neigh_suppress", "hairpin"))],
)
def test_link_settings(alias, port):
    attrs = []
    if alias:
        attrs.append(("IFLA_IFALIAS", alias))
    names = {"hairpin": "IFLA_BRPORT_MODE", "neigh_suppress": "IFLA_BRPORT_NEIGH_SUPPRESS"}
    if port:
        flags = [(names[flag], 1) for flag in port]
        slave = {"attrs": [("IFLA_INFO_SLAVE_KIND", "bridge"), ("IFLA_INFO_SLAVE_DATA", {"attrs": flags})]}
        attrs.append(("IFLA_LINKINFO", slave))
    attrs.append(NO_IPV6_ADDRESSES)
    expected = pyroute2_bytes(ifinfo(9, attrs=attrs), 16, 4, 13)
    assert packed(16, 4, pack.link_settings(9, alias, port), 13) == expected


NO_IPV6_ADDRESSES = ("IFLA_AF_SPEC", {"attrs": [("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", 1)]})]})


def test_no_ipv6_addresses():
    expected = pyroute2_bytes(ifinfo(7, attrs=[NO_IPV6_ADDRESSES]), 16, 4, 14)
    assert packed(16, 4, pack.no_ipv6_addresses(7), 14) == expected


@pytest.mark.parametrize("network", ["172.17.0.0/16", "10.0.0.0/31"])
def test_address(network):
    net = IPv4Network(network)
    ip = next(net.hosts()) if net.prefixlen < 31 else net.network_address
    m = ifaddrmsg()
    m["family"] = socket.AF_INET
    m["prefixlen"] = net.prefixlen
    m["index"] = 4
    attrs = [("IFA_LOCAL", str(ip)), ("IFA_ADDRESS", str(ip))]
    if net.prefixlen < 31:
        attrs.append(("IFA_BROADCAST", str(net.broadcast_address)))
    m["attrs"] = attrs
    assert packed(20, 0x605, pack.address(4, ip, net), 14) == pyroute2_bytes(m, 20, 0x605, 14)


@pytest.mark.parametrize(
    "destination, gateway, oif",
    [("0.0.0.0/0", "172.17.0.1", 2), ("10.1.0.0/16", None, 3), ("0.0.0.0/0", "198.18.0.1", None)],
)
def test_route(destination, gateway, oif):
    dst = IPv4Network(destination)
    m = rtmsg()
    m["family"] = socket.AF_INET
    m["dst_len"] = dst.prefixlen
    m["table"] = 254
    m["proto"] = 4
    m["scope"] = 0 if gateway else 253
    m["type"] = 1
    attrs = []
    if dst.prefixlen:
        attrs.append(("RTA_DST", str(dst.network_address)))
    if gateway:
        attrs.append(("RTA_GATEWAY", gateway))
    if oif:
        attrs.append(("RTA_OIF", oif))
    m["attrs"] = attrs
    gw = IPv4Address(gateway) if gateway else None
    assert packed(24, 0x605, pack.route(dst, gw, oif), 15) == pyroute2_bytes(m, 24, 0x605, 15)


@pytest.mark.parametrize("interface", ["2001:db8::2/64", "fd00:1:2:3::1/128"])
def test_address_ipv6_without_dad(interface):
    iface = IPv6Interface(interface)
    m = ifaddrmsg()
    m["family"] = socket.AF_INET6
    m["prefixlen"] = iface.network.prefixlen
    m["flags"] = 0x02  # IFA_F_NODAD
    m["index"] = 5
    m["attrs"] = [("IFA_LOCAL", str(iface.ip)), ("IFA_ADDRESS", str(iface.ip))]
    assert packed(20, 0x605, pack.address(5, iface.ip, iface.network), 16) == pyroute2_bytes(m, 20, 0x605, 16)


@pytest.mark.parametrize(
    "destination, gateway, oif",
    [("::/0", "2001:db8::1", 2), ("fd00:1::/64", None, 3), ("::/0", None, 4), ("::/0", "fe80::1", None)],
)
def test_route_ipv6(destination, gateway, oif):
    dst = IPv6Network(destination)
    m = rtmsg()
    m["family"] = socket.AF_INET6
    m["dst_len"] = dst.prefixlen
    m["table"] = 254
    m["proto"] = 4
    m["scope"] = 0  # IPv6 routes have no scope: universe, as ip -6 route sends
    m["type"] = 1
    attrs = []
    if dst.prefixlen:
        attrs.append(("RTA_DST", str(dst.network_address)))
    if gateway:
        attrs.append(("RTA_GATEWAY", gateway))
    if oif:
        attrs.append(("RTA_OIF", oif))
    m["attrs"] = attrs
    gw = IPv6Address(gateway) if gateway else None
    assert packed(24, 0x605, pack.route(dst, gw, oif), 17) == pyroute2_bytes(m, 24, 0x605, 17)


def test_default_networks():
    assert pack.default_network(4) == IPv4Network("0.0.0.0/0")
    assert pack.default_network(6) == IPv6Network("::/0")


def _captured_configure(call):
    """The (type, flags, body, label) requests a configure call hands to the one write."""
    rtnl = Rtnl.__new__(Rtnl)  # no socket: only the requests are looked at
    sent = []
    rtnl._apply = lambda requests, what: sent.extend(requests)
    call(rtnl)
    return sent


def test_ipv4_configure_sends_the_requests_it_always_sent():
    gateway = IPv4Address("172.17.0.1")
    sent = _captured_configure(
        lambda r: r.configure_link("eth0", [IPv4Interface("172.17.0.2/16")], [Route.default(gateway)], "w", index=7)
    )
    assert sent == [
        (16, 4, pack.no_ipv6_addresses(7), "no IPv6 addresses on eth0"),
        (16, 4, pack.set_up(7), "set eth0 up"),
        (20, 0x604, pack.address(7, IPv4Address("172.17.0.2"), IPv4Network("172.17.0.0/16")), "add address 172.17.0.2/16"),
        (24, 0x604, pack.route(IPv4Network("0.0.0.0/0"), gateway, 7), "add default route via 172.17.0.1"),
    ]


def test_dual_stack_configure_adds_both_families_after_up_in_one_write():
    sent = _captured_configure(
        lambda r: r.configure_link(
            "eth0",
            [IPv4Interface("10.0.0.2/24"), IPv6Interface("fd00::2/64")],
            [Route.default(IPv4Address("10.0.0.1")), Route.default(IPv6Address("fd00::1")), Route.on_link(6)],
            "w",
            index=3,
        )
    )
    assert [label for *_, label in sent] == [
        "no IPv6 addresses on eth0",
        "set eth0 up",
        "add address 10.0.0.2/24",
        "add address fd00::2/64",
        "add default route via 10.0.0.1",
        "add default route via fd00::1",
        "add default route",
    ]
    assert sent[3][2] == pack.address(3, IPv6Address("fd00::2"), IPv6Network("fd00::/64"))
    assert sent[5][2] == pack.route(IPv6Network("::/0"), IPv6Address("fd00::1"), 3)
    assert sent[6][2] == pack.route(IPv6Network("::/0"), None, 3)


def test_configure_takes_any_route_with_a_destination_and_a_via():
    class Mine:  # a driver's own route type
        destination = IPv4Network("10.9.0.0/16")
        via = IPv4Address("10.0.0.1")

    sent = _captured_configure(lambda r: r.configure_link("eth0", [], [Mine()], "w", index=3))
    assert sent[-1] == (24, 0x604, pack.route(Mine.destination, Mine.via, 3), "add route 10.9.0.0/16 via 10.0.0.1")


def test_a_route_of_mixed_families_is_refused():
    with pytest.raises(InvalidArgumentError, match="another address family"):
        Route(IPv6Network("::/0"), IPv4Address("10.0.0.1"))
    with pytest.raises(InvalidArgumentError, match="another address family"):

        class Mixed:
            destination = IPv4Network("0.0.0.0/0")
            via = IPv6Address("fd00::1")

        _captured_configure(lambda r: r.configure_link("eth0", [], [Mixed()], "w", index=3))
