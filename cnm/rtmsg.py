"""Packing of the few rtnetlink requests on cnm's hot paths (used by :mod:`cnm.kernel` only).

pyroute2's generic encoder builds each message from nested dictionaries and
costs several times what the kernel spends creating a veth pair, so the
requests made for every sandbox are packed here with :mod:`struct`. Answers
and dumps are still decoded by pyroute2. ``tests/unit/test_rtmsg.py`` checks
every packer byte for byte against pyroute2's encoding of the same message.

Each function returns the message *body* (everything after the 16-byte
netlink header); :func:`message` adds the header.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network

from ._ip import IPAddress, IPNetwork

from .netlink import next_seq
from .netlink import nla as _attr
from .netlink import nla_string as _string

__all__ = [
    "RTM_DELLINK",
    "RTM_GETLINK",
    "RTM_NEWADDR",
    "RTM_NEWLINK",
    "RTM_NEWROUTE",
    "address",
    "bridge",
    "default_network",
    "dellink",
    "getlink",
    "link_settings",
    "message",
    "route",
    "set_up",
    "veth",
]

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29

NLM_F_REQUEST = 0x1
_IFF_UP = 0x1

# attribute numbers (linux/if_link.h, if_addr.h, rtnetlink.h, veth.h)
_IFLA_ADDRESS, _IFLA_IFNAME, _IFLA_MTU, _IFLA_MASTER = 1, 3, 4, 10
_IFLA_GROUP = 27
_IFLA_LINKINFO, _IFLA_IFALIAS, _IFLA_NET_NS_FD = 18, 20, 28
_IFLA_NUM_TX_QUEUES, _IFLA_NUM_RX_QUEUES = 31, 32
_IFLA_AF_SPEC, _IFLA_INET6_ADDR_GEN_MODE, _IN6_ADDR_GEN_MODE_NONE = 26, 8, 1
_IFLA_INFO_KIND, _IFLA_INFO_DATA, _IFLA_INFO_SLAVE_KIND, _IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
_VETH_INFO_PEER = 1
#: the bridge-port settings :func:`link_settings` can turn on (IFLA_BRPORT_*, each a u8)
BRIDGE_PORT_FLAGS = {"hairpin": 4, "neigh_suppress": 32}
_IFLA_BR_MCAST_SNOOPING = 23
_IFA_ADDRESS, _IFA_LOCAL, _IFA_BROADCAST = 1, 2, 4
_IFA_F_NODAD = 0x02
_RTA_DST, _RTA_OIF, _RTA_GATEWAY = 1, 4, 5
_RT_TABLE_MAIN, _RTPROT_STATIC, _RTN_UNICAST = 254, 4, 1
_RT_SCOPE_UNIVERSE, _RT_SCOPE_LINK = 0, 253

_HEADER = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBi")
_RTMSG = struct.Struct("=BBBBBBBBI")

def message(mtype: int, flags: int, body: bytes, seq: int | None = None) -> tuple[int, bytes]:
    """Prefix *body* with a netlink header; return (sequence number, bytes)."""
    seq = next_seq() if seq is None else seq
    return seq, _HEADER.pack(16 + len(body), mtype, flags | NLM_F_REQUEST, seq, 0) + body


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _mac(kind: int, value: str) -> bytes:
    return _attr(kind, bytes.fromhex(value.replace(":", "")))


def _ifinfo(index: int = 0, up: bool = False) -> bytes:
    flags = _IFF_UP if up else 0
    return _IFINFO.pack(0, 0, index, flags, flags)


_IFLA_EXT_MASK, _RTEXT_FILTER_SKIP_STATS = 29, 1 << 3


def getlink(name: str | None = None, index: int = 0) -> bytes:
    """RTM_GETLINK body asking for link *name* (or *index*), without statistics."""
    attrs = _string(_IFLA_IFNAME, name) if name is not None else b""
    return _ifinfo(index) + attrs + _u32(_IFLA_EXT_MASK, _RTEXT_FILTER_SKIP_STATS)


def dellink(index: int) -> bytes:
    """RTM_DELLINK body for link *index*."""
    return _ifinfo(index)


def set_up(index: int) -> bytes:
    """RTM_NEWLINK body setting link *index* up."""
    return _ifinfo(index, up=True)


def _no_ipv6_addresses() -> bytes:
    mode = _attr(_IFLA_INET6_ADDR_GEN_MODE, bytes([_IN6_ADDR_GEN_MODE_NONE]))
    return _attr(_IFLA_AF_SPEC, _attr(socket.AF_INET6, mode))


def no_ipv6_addresses(index: int) -> bytes:
    """RTM_NEWLINK body telling IPv6 not to make addresses of its own (not even a
    link-local one) on link *index* (addr_gen_mode none); must precede "up"."""
    return _ifinfo(index) + _no_ipv6_addresses()


def bridge(name: str, mac: str, mtu: int | None, multicast_snooping: bool = True) -> bytes:
    """RTM_NEWLINK body creating an up bridge *name* with a fixed *mac*
    (and, unless *multicast_snooping*, with IGMP snooping off)."""
    attrs = _string(_IFLA_IFNAME, name) + _mac(_IFLA_ADDRESS, mac)
    if mtu is not None:
        attrs += _u32(_IFLA_MTU, mtu)
    info = _string(_IFLA_INFO_KIND, "bridge")
    if not multicast_snooping:
        info += _attr(_IFLA_INFO_DATA, _attr(_IFLA_BR_MCAST_SNOOPING, b"\0"))
    return _ifinfo(up=True) + attrs + _attr(_IFLA_LINKINFO, info)


def veth(
    name: str,
    mac: str | None,
    master: int | None,
    mtu: int | None,
    peer_name: str,
    peer_netns_fd: int | None,
    peer_mac: str | None,
    group: int = 0,
) -> bytes:
    """RTM_NEWLINK body creating veth *name* (up, enslaved to *master*, in
    device *group*) with its peer *peer_name* (down) in the namespace behind
    *peer_netns_fd*.

    Both ends get one transmit and one receive queue. The kernel's default
    is one of each per CPU, and every queue is a sysfs object made and
    removed with the link (a large share of creating and deleting a veth;
    on a machine with many CPUs, most of it). A veth's queues matter only
    to XDP and threaded NAPI, which cnm does not set up.
    """
    queues = _u32(_IFLA_NUM_TX_QUEUES, 1) + _u32(_IFLA_NUM_RX_QUEUES, 1)
    peer = _string(_IFLA_IFNAME, peer_name)
    if peer_mac is not None:
        peer += _mac(_IFLA_ADDRESS, peer_mac)
    if mtu is not None:
        peer += _u32(_IFLA_MTU, mtu)
    if peer_netns_fd is not None:
        peer += _u32(_IFLA_NET_NS_FD, peer_netns_fd)
    peer += queues
    info = _string(_IFLA_INFO_KIND, "veth") + _attr(_IFLA_INFO_DATA, _attr(_VETH_INFO_PEER, _ifinfo() + peer))
    attrs = _string(_IFLA_IFNAME, name)
    if mac is not None:
        attrs += _mac(_IFLA_ADDRESS, mac)
    if mtu is not None:
        attrs += _u32(_IFLA_MTU, mtu)
    attrs += queues
    attrs += _attr(_IFLA_LINKINFO, info)
    if master is not None:
        attrs += _u32(_IFLA_MASTER, master)
    if group:
        attrs += _u32(_IFLA_GROUP, group)
    return _ifinfo(up=True) + attrs


def link_settings(index: int, alias: str | None, port: Iterable[str] = ()) -> bytes:
    """RTM_NEWLINK body changing link *index*: its alias, the settings of its
    bridge *port* turned on (names of :data:`BRIDGE_PORT_FLAGS`), and no IPv6
    addresses (see :func:`no_ipv6_addresses`)."""
    attrs = b""
    if alias is not None:
        attrs += _string(_IFLA_IFALIAS, alias)
    flags = b"".join(_attr(BRIDGE_PORT_FLAGS[flag], b"\x01") for flag in port)
    if flags:
        attrs += _attr(_IFLA_LINKINFO, _string(_IFLA_INFO_SLAVE_KIND, "bridge") + _attr(_IFLA_INFO_SLAVE_DATA, flags))
    return _ifinfo(index) + attrs + _no_ipv6_addresses()


def address(index: int, ip: IPAddress, network: IPNetwork) -> bytes:
    """RTM_NEWADDR body putting *ip* (in *network*) on link *index*.

    An IPv6 address skips duplicate-address detection (IFA_F_NODAD): with it
    the address stays "tentative", unusable as a source, until DAD ends
    (measured: see the docs' explanation page), and cnm's IPAM already makes
    the address unique on its network.
    """
    attrs = _attr(_IFA_LOCAL, ip.packed) + _attr(_IFA_ADDRESS, ip.packed)
    if network.version == 6:
        return _IFADDR.pack(socket.AF_INET6, network.prefixlen, _IFA_F_NODAD, 0, index) + attrs
    if network.prefixlen < 31:
        attrs += _attr(_IFA_BROADCAST, network.broadcast_address.packed)
    return _IFADDR.pack(socket.AF_INET, network.prefixlen, 0, 0, index) + attrs


# struct ndmsg: family, pad, pad, ifindex, state, flags, type
_NDMSG = struct.Struct("=BBHiHBB")
_NDA_DST, _NDA_LLADDR = 1, 2
_NUD_PERMANENT, _NTF_SELF = 0x80, 0x02
AF_BRIDGE = 7


def fdb(index: int, mac: str, destination: IPAddress) -> bytes:
    """RTM_NEWNEIGH/RTM_DELNEIGH body: the forwarding entry of *mac* on device
    *index* (a vxlan) sending to the remote tunnel end *destination*, as
    ``bridge fdb append MAC dev DEV dst IP`` writes it."""
    return _NDMSG.pack(AF_BRIDGE, 0, 0, index, _NUD_PERMANENT, _NTF_SELF, 0) + _attr(
        _NDA_LLADDR, bytes.fromhex(mac.replace(":", ""))
    ) + _attr(_NDA_DST, destination.packed)


def default_network(family: int) -> IPNetwork:
    """The destination of a default route: ``0.0.0.0/0`` or ``::/0``."""
    return _DEFAULTS[family]


_DEFAULTS: dict[int, IPNetwork] = {4: IPv4Network("0.0.0.0/0"), 6: IPv6Network("::/0")}


def route(destination: IPNetwork, gateway: IPAddress | None, oif: int | None) -> bytes:
    """RTM_NEWROUTE body: *destination* via *gateway* (or on-link) out of *oif*, main table.

    IPv6 routes have no scope (the kernel ignores it), so they are sent with
    the universe scope as ``ip -6 route`` does; an IPv4 route with no gateway
    is a link-scope (device) route.
    """
    if destination.version == 6:
        family, scope = socket.AF_INET6, _RT_SCOPE_UNIVERSE
    else:
        family = socket.AF_INET
        scope = _RT_SCOPE_UNIVERSE if gateway is not None else _RT_SCOPE_LINK
    head = _RTMSG.pack(family, destination.prefixlen, 0, 0, _RT_TABLE_MAIN, _RTPROT_STATIC, scope, _RTN_UNICAST, 0)
    attrs = b""
    if destination.prefixlen:
        attrs += _attr(_RTA_DST, destination.network_address.packed)
    if gateway is not None:
        attrs += _attr(_RTA_GATEWAY, gateway.packed)
    if oif is not None:
        attrs += _u32(_RTA_OIF, oif)
    return head + attrs
