"""What the rtnetlink verbs of :class:`cnm.kernel.Rtnl` take and give back:
links, veth peers, routes, MACs, and the checks on them made before the
kernel sees a request.

Everything public here is re-exported by :mod:`cnm.kernel`, which is where
callers import it from; this module holds no socket and sends nothing.
"""

from __future__ import annotations

import os
import re
from ipaddress import IPv4Address
from typing import Any, Protocol

import attrs

from . import rtmsg as pack
from ._ip import IPAddress, IPNetwork
from .errors import InvalidArgumentError
from .netns import Namespace

__all__ = ["Link", "LinkInfo", "Peer", "Route", "RouteSpec", "check_ifname", "check_mac", "check_route", "mac_for", "random_mac"]

_IFF_UP = 0x1


class LinkInfo:
    """What cnm needs to know about a link: index, name, kind, master, alias."""

    __slots__ = ("index", "name", "kind", "master", "alias", "mac", "up", "promiscuity")

    def __init__(self, msg: Any) -> None:
        self.index: int = msg["index"]
        self.name: str = msg.get_attr("IFLA_IFNAME")
        info = msg.get_attr("IFLA_LINKINFO")
        self.kind: str | None = info.get_attr("IFLA_INFO_KIND") if info else None
        self.master: int | None = msg.get_attr("IFLA_MASTER")
        self.alias: str | None = msg.get_attr("IFLA_IFALIAS")
        self.mac: str | None = msg.get_attr("IFLA_ADDRESS")
        self.up = bool(msg["flags"] & _IFF_UP)
        #: how many users put it in promiscuous mode (a parent with macvlans on it: 1 while any is there)
        self.promiscuity: int = msg.get_attr("IFLA_PROMISCUITY") or 0


class RouteSpec(Protocol):
    """What :meth:`cnm.kernel.Rtnl.configure_link` needs of a route: its
    *destination* and the gateway it goes *via* (None: on the link).
    :class:`Route` is one; so is any object with these two attributes."""

    @property
    def destination(self) -> IPNetwork: ...
    @property
    def via(self) -> IPAddress | None: ...


@attrs.frozen
class Route:
    """A route to *destination* via a gateway, or on the link (a device
    route) with *via* None; both of one family.

    Out of the interface it is given with (:meth:`cnm.kernel.Rtnl.configure_link`).
    """

    destination: IPNetwork
    via: IPAddress | None = None

    def __attrs_post_init__(self) -> None:
        check_route(self.destination, self.via)

    @classmethod
    def default(cls, gateway: IPAddress) -> Route:
        """The default route of *gateway*'s family, through it."""
        return cls(pack.default_network(gateway.version), gateway)

    @classmethod
    def on_link(cls, family: int) -> Route:
        """The default route of *family* (4 or 6) with no gateway: every
        destination is reached straight through the interface (for drivers
        such as ipvlan in L3 mode, whose parent routes)."""
        return cls(pack.default_network(family))


@attrs.frozen
class Peer:
    """The other end of a veth made by :meth:`cnm.kernel.Rtnl.add_link`: its
    *name*, the *namespace* it is made in (None: the namespace of the
    :class:`~cnm.kernel.Rtnl`) and its *mac* (None: a random one)."""

    name: str
    namespace: Namespace | None = None
    mac: str | None = None


@attrs.frozen
class Link:
    """A link made by :meth:`cnm.kernel.Rtnl.add_link`: its *index* in the
    *namespace* it lives in and, for a veth, the index of the peer in the
    peer's namespace (None when the kernel did not say: a veth made inside
    another namespace)."""

    index: int
    namespace: Namespace
    peer_index: int | None = None


def check_route(destination: IPNetwork, via: IPAddress | None) -> None:
    """A gateway of the destination's family, or none."""
    if via is not None and via.version != destination.version:
        raise InvalidArgumentError(f"route to {destination}: gateway {via} is of another address family")


# An interface name: 1-15 printable ASCII characters but '/', ':' and '%'.
# The kernel counts bytes (15 and a NUL), refuses '/', ':' and whitespace,
# and takes byte 0xa0 for whitespace, so a non-ASCII name may be refused
# even when short enough; ASCII keeps characters and bytes the same. A '%'
# makes the name a pattern ("br%d" becomes "br0"), so the link cnm made
# would not have the name it asked for.
_IFNAME = re.compile(r"[!-$&-.0-9;-~]{1,15}")
# Names the kernel refuses (EINVAL): "." and ".." would be directories of
# their own in sysfs; "all" and "default" are the sysctl directories
# net/ipv4/conf/all and .../default.
_RESERVED_NAMES = (".", "..", "all", "default")
#: What every message about a bad interface name says the rule is.
IFNAME_RULE = "1-15 printable ASCII characters, no '/', ':', '%' or space"


def valid_ifname(name: object) -> bool:
    """Whether *name* is an interface name cnm makes links with: one the kernel
    takes as it is (see the comment above for the rule and why)."""
    return isinstance(name, str) and _IFNAME.fullmatch(name) is not None and name not in _RESERVED_NAMES


def check_ifname(name: object, what: str) -> None:
    """:func:`valid_ifname`, raising InvalidArgumentError naming *what* before the kernel sees *name*."""
    if not valid_ifname(name):
        raise InvalidArgumentError(f"{what}: {name!r} is not a valid interface name ({IFNAME_RULE})")


def check_mac(mac: object, what: str) -> str:
    """*mac* in the lower-case form the kernel reports it in (so that a link can be recognised by it)."""
    parts = mac.split(":") if isinstance(mac, str) else []
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        raise InvalidArgumentError(f"{what}: {mac!r} is not a MAC address (six hex octets with ':')")
    assert isinstance(mac, str)
    return mac.lower()


def mac_for(address: IPv4Address) -> str:
    """A locally administered MAC derived from an IPv4 address (as Docker did: 02:42:ac:11:00:02)."""
    return "02:42:" + address.packed.hex(":")


def random_mac() -> str:
    """A random locally administered unicast MAC (02:xx:xx:xx:xx:xx)."""
    return "02:" + ":".join(f"{b:02x}" for b in os.urandom(5))
