"""The one place that talks rtnetlink: links, addresses, routes.

:class:`Rtnl` wraps one NETLINK_ROUTE socket created inside one namespace
(see :mod:`cnm.netns`). Its methods are small verbs that build pyroute2
messages and send them through :class:`cnm.netlink.Netlink`; nothing outside
this module builds rtnetlink messages. OSErrors from the kernel are mapped to
:class:`cnm.errors.KernelError` naming the object, here and nowhere else.

Undo is *not* registered here: the caller that decides to make a change
registers its inverse (see :mod:`cnm.undo`), because only the caller knows
what the change belongs to.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink import rtnl as rt
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from .errors import KernelError, MissingKernelFeatureError, kernel_error
from .netlink import Netlink, NetlinkReply
from .netns import Namespace

__all__ = ["Rtnl", "LinkInfo"]

_IFF_UP = 0x1
_NETLINK_ROUTE = 0
_RT_TABLE_MAIN = 254


class LinkInfo:
    """What cnm needs to know about a link: index, name, kind, master, alias."""

    __slots__ = ("index", "name", "kind", "master", "alias", "mac", "up")

    def __init__(self, msg: Any) -> None:
        self.index: int = msg["index"]
        self.name: str = msg.get_attr("IFLA_IFNAME")
        info = msg.get_attr("IFLA_LINKINFO")
        self.kind: str | None = info.get_attr("IFLA_INFO_KIND") if info else None
        self.master: int | None = msg.get_attr("IFLA_MASTER")
        self.alias: str | None = msg.get_attr("IFLA_IFALIAS")
        self.mac: str | None = msg.get_attr("IFLA_ADDRESS")
        self.up = bool(msg["flags"] & _IFF_UP)


def _getlink_by_name(name: str) -> tuple[int, bytes]:
    """A hand-packed RTM_GETLINK for *name*: (seq, bytes).

    Looking up an index is on every hot path; packing these 40 bytes by hand
    and reading the index straight from the answer avoids pyroute2's generic
    encoder and decoder, which cost far more than the kernel's work here.
    """
    seq, _ = Netlink.encode(ifinfmsg(), rt.RTM_GETLINK, 0)  # only for a fresh sequence number
    ifname = name.encode() + b"\0"
    attr = struct.pack("=HH", 4 + len(ifname), 3) + ifname  # IFLA_IFNAME
    attr += b"\0" * (-len(attr) % 4)
    body = struct.pack("=BxHiII", 0, 0, 0, 0, 0) + attr
    header = struct.pack("=IHHII", 16 + len(body), rt.RTM_GETLINK, NLM_F_REQUEST, seq, 0)
    return seq, header + body


def _index_of(reply: NetlinkReply) -> int:
    """The ifindex in an RTM_NEWLINK answer (ifinfomsg.ifi_index)."""
    assert reply.data is not None
    return int(struct.unpack_from("=i", reply.data, 16 + 4)[0])


class Rtnl:
    """rtnetlink verbs for one namespace, over one socket opened inside it."""

    def __init__(self, namespace: Namespace, *, here: bool = False) -> None:
        """Open the socket inside *namespace*; ``here=True`` means the calling
        thread is already inside it (used while a namespace is being made)."""
        self.namespace = namespace
        if here:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_ROUTE)
        else:
            sock = namespace.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_ROUTE)
        self._nl = Netlink(sock, MarshalRtnl())

    def close(self) -> None:
        self._nl.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- links -----------------------------------------------------------------

    def link(self, name: str | None = None, index: int | None = None) -> LinkInfo | None:
        """The link with this name or index, or None."""
        msg = ifinfmsg()
        if index is not None:
            msg["index"] = index
        if name is not None:
            msg["attrs"] = [("IFLA_IFNAME", name)]
        try:
            found = self._nl.get(msg, rt.RTM_GETLINK)
        except OSError as exc:
            raise kernel_error(exc, f"link {name or index}: look-up") from exc
        return LinkInfo(found) if found is not None else None

    def link_index(self, name: str) -> int | None:
        """The index of link *name*, or None when there is none."""
        seq, data = _getlink_by_name(name)
        reply = self._nl.transact([(seq, data)])[seq]
        if reply.error in (errno.ENODEV, errno.ENOENT):
            return None
        try:
            reply.raise_for()
        except OSError as exc:
            raise kernel_error(exc, f"link {name!r}: look-up") from exc
        return _index_of(reply)

    def links(self) -> list[LinkInfo]:
        return [LinkInfo(m) for m in self._nl.dump(ifinfmsg(), rt.RTM_GETLINK)]

    def loopback_up(self) -> None:
        """Bring ``lo`` up (index 1 in every namespace)."""
        self.set_up(1, "loopback")

    def set_up(self, index: int, what: str) -> None:
        msg = ifinfmsg()
        msg["index"] = index
        msg["flags"] = _IFF_UP
        msg["change"] = _IFF_UP
        self._request(msg, rt.RTM_NEWLINK, 0, f"{what}: set up")

    def add_bridge(self, name: str, *, alias: str, mac: str, mtu: int | None = None) -> int:
        """Create a bridge that is up; return its index.

        The bridge gets a fixed *mac*: otherwise the kernel gives it the
        lowest MAC of its ports, so it would change as sandboxes come and go.
        """
        attrs: list[tuple[str, Any]] = [
            ("IFLA_IFNAME", name),
            ("IFLA_ADDRESS", mac),
            ("IFLA_IFALIAS", alias),
            ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge")]}),
        ]
        if mtu is not None:
            attrs.append(("IFLA_MTU", mtu))
        return self._create_link(name, "bridge", attrs)

    def add_veth(
        self,
        name: str,
        *,
        alias: str,
        master: int | None,
        peer_name: str,
        peer_namespace: Namespace,
        peer_mac: str | None = None,
        mtu: int | None = None,
    ) -> int:
        """Create a veth pair: *name* here, up and enslaved to *master*;
        *peer_name* directly inside *peer_namespace*, still down (the kernel
        refuses to open a veth end before its pair is complete, ENOTCONN, so
        the peer is brought up from inside its namespace:
        :meth:`configure_interface`). Return this end's index.

        One request makes the whole pair, so there is never a half-made pair.
        """
        peer_attrs: list[Any] = [["IFLA_IFNAME", peer_name]]
        if peer_mac is not None:
            peer_attrs.append(["IFLA_ADDRESS", peer_mac])
        if mtu is not None:
            peer_attrs.append(["IFLA_MTU", mtu])
        fd = os.open(peer_namespace.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            peer_attrs.append(["IFLA_NET_NS_FD", fd])
            peer = {"attrs": peer_attrs}
            attrs: list[tuple[str, Any]] = [
                ("IFLA_IFNAME", name),
                ("IFLA_IFALIAS", alias),
                (
                    "IFLA_LINKINFO",
                    {"attrs": [("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer)]})]},
                ),
            ]
            if master is not None:
                attrs.append(("IFLA_MASTER", master))
            if mtu is not None:
                attrs.append(("IFLA_MTU", mtu))
            return self._create_link(name, "veth", attrs, hairpin=master is not None)
        finally:
            os.close(fd)

    def delete_link(self, index: int, what: str) -> None:
        """Delete a link (for a veth, both ends). Already gone raises OSError(ENODEV)."""
        msg = ifinfmsg()
        msg["index"] = index
        try:
            self._nl.request(msg, rt.RTM_DELLINK, 0)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                raise  # "already gone": callers undoing a change treat it as success
            raise kernel_error(exc, f"{what}: delete") from exc

    def wait_gone(self, indexes: Iterable[int], timeout: float) -> list[int]:
        """Wait until no link has one of *indexes*; return the ones still present at *timeout*."""
        pending = set(indexes)
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while pending:
            present = {link.index for link in self.links()}
            pending &= present
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        return sorted(pending)

    def _create_link(self, name: str, kind: str, attrs: list[tuple[str, Any]], *, hairpin: bool = False) -> int:
        """Create a link that is up and carries cnm's owner mark (its alias);
        with *hairpin*, also let its bridge port send frames back where they
        came from. Returns the new index.

        The kernel ignores an alias (and bridge-port settings) in a creation
        request, so a second request sets them; both go in one write, and the
        kernel handles a write's requests in order before the write returns.
        If the link was made but a later step fails, it is deleted again
        before the error is raised: callers register undo steps only for what
        succeeded.
        """
        alias = dict(attrs).pop("IFLA_IFALIAS", None)
        msg = ifinfmsg()
        msg["flags"] = _IFF_UP
        msg["change"] = _IFF_UP
        msg["attrs"] = [a for a in attrs if a[0] != "IFLA_IFALIAS"]
        requests = [self._nl.encode(msg, rt.RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK)]
        then: list[tuple[str, Any]] = []
        if alias is not None:
            then.append(("IFLA_IFALIAS", alias))
        if hairpin:
            # A sandbox reaching its own published port through a host address
            # is DNATed back to itself; with bridge netfilter on (the default),
            # that frame leaves through the port it came in by.
            then.append(
                ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_SLAVE_KIND", "bridge"), ("IFLA_INFO_SLAVE_DATA", {"attrs": [("IFLA_BRPORT_MODE", 1)]})]})
            )
        if then:
            settings = ifinfmsg()
            settings["attrs"] = [("IFLA_IFNAME", name), *then]
            requests.append(self._nl.encode(settings, rt.RTM_NEWLINK, NLM_F_ACK))
        # The new index comes back in the same round trip: the look-up is the last request.
        lookup = _getlink_by_name(name)
        requests.append(lookup)
        try:
            replies = self._nl.transact(requests)
        except BaseException:
            # The exchange broke after the request was written: the kernel may
            # have made the link. Remove it if it carries our mark.
            self._delete_by_name(name, alias)
            raise
        try:
            replies[requests[0][0]].raise_for()
        except OSError as exc:
            if exc.errno == errno.EOPNOTSUPP:
                raise MissingKernelFeatureError(
                    exc.errno, f"link {name!r}: this kernel has no {kind!r} link type (module not available)"
                ) from exc
            raise kernel_error(exc, f"link {name!r} ({kind}): create") from exc
        try:
            for seq, _ in requests[1:]:
                replies[seq].raise_for()
            return _index_of(replies[lookup[0]])
        except BaseException as exc:
            self._delete_by_name(name, alias)
            if isinstance(exc, OSError) and not isinstance(exc, KernelError):
                raise kernel_error(exc, f"link {name!r} ({kind}): configure") from exc
            raise

    def _delete_by_name(self, name: str, alias: str | None) -> None:
        """Best-effort removal of a link this process just made, while already failing.

        Only a link that carries *alias* (our mark) is removed, so a link of
        the same name that belongs to someone else is never touched.
        """
        try:
            link = self.link(name=name)
            if link is not None and link.alias == alias:
                msg = ifinfmsg()
                msg["index"] = link.index
                self._nl.request(msg, rt.RTM_DELLINK, 0)
        except OSError:
            pass  # the original error is the one to report

    # ---- addresses and routes --------------------------------------------------

    def add_address(self, index: int, address: IPv4Interface, what: str) -> None:
        msg = ifaddrmsg()
        msg["family"] = socket.AF_INET
        msg["prefixlen"] = address.network.prefixlen
        msg["index"] = index
        attrs: list[tuple[str, Any]] = [("IFA_LOCAL", str(address.ip)), ("IFA_ADDRESS", str(address.ip))]
        if address.network.prefixlen < 31:
            attrs.append(("IFA_BROADCAST", str(address.network.broadcast_address)))
        msg["attrs"] = attrs
        self._request(msg, rt.RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, f"{what}: add address {address}")

    def add_route(self, destination: IPv4Network, gateway: IPv4Address | None, what: str, *, oif: int | None = None) -> None:
        msg = rtmsg()
        msg["family"] = socket.AF_INET
        msg["dst_len"] = destination.prefixlen
        msg["table"] = _RT_TABLE_MAIN
        msg["proto"] = 4  # RTPROT_STATIC
        msg["scope"] = 0 if gateway is not None else 253  # universe / link
        msg["type"] = 1  # RTN_UNICAST
        attrs: list[tuple[str, Any]] = []
        if destination.prefixlen:
            attrs.append(("RTA_DST", str(destination.network_address)))
        if gateway is not None:
            attrs.append(("RTA_GATEWAY", str(gateway)))
        if oif is not None:
            attrs.append(("RTA_OIF", oif))
        msg["attrs"] = attrs
        self._request(msg, rt.RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, f"{what}: add route {destination} via {gateway}")

    def routes(self) -> list[IPv4Network]:
        """Destinations of the IPv4 routes in the main table (default route excluded)."""
        msg = rtmsg()
        msg["family"] = socket.AF_INET
        out = []
        for m in self._nl.dump(msg, rt.RTM_GETROUTE):
            if m["table"] != _RT_TABLE_MAIN or m["dst_len"] == 0 or m["type"] != 1:
                continue
            out.append(IPv4Network(f"{m.get_attr('RTA_DST')}/{m['dst_len']}", strict=False))
        return out

    def addresses(self) -> list[tuple[int, IPv4Interface]]:
        msg = ifaddrmsg()
        msg["family"] = socket.AF_INET
        return [
            (m["index"], IPv4Interface(f"{m.get_attr('IFA_LOCAL') or m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}"))
            for m in self._nl.dump(msg, rt.RTM_GETADDR)
        ]

    def configure_interface(
        self, name: str, address: IPv4Interface, gateway: IPv4Address | None, what: str
    ) -> None:
        """Bring link *name* up, give it an address and, with *gateway*, the
        default route through it.

        The requests are pipelined in one write (the link is looked up first);
        the kernel handles them in order.
        """
        index = self.link_index(name)
        if index is None:
            raise KernelError(errno.ENODEV, f"{what}: interface {name!r} not found")
        up = ifinfmsg()
        up["index"] = index
        up["flags"] = _IFF_UP
        up["change"] = _IFF_UP
        requests = [(self._nl.encode(up, rt.RTM_NEWLINK, NLM_F_ACK), f"set {name} up")]
        addr = ifaddrmsg()
        addr["family"] = socket.AF_INET
        addr["prefixlen"] = address.network.prefixlen
        addr["index"] = index
        addr["attrs"] = [
            ("IFA_LOCAL", str(address.ip)),
            ("IFA_ADDRESS", str(address.ip)),
            ("IFA_BROADCAST", str(address.network.broadcast_address)),
        ]
        requests.append((self._nl.encode(addr, rt.RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK), f"add address {address}"))
        if gateway is not None:
            route = rtmsg()
            route["family"] = socket.AF_INET
            route["table"] = _RT_TABLE_MAIN
            route["proto"] = 4
            route["type"] = 1
            route["attrs"] = [("RTA_GATEWAY", str(gateway)), ("RTA_OIF", index)]
            requests.append((self._nl.encode(route, rt.RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK), f"add default route via {gateway}"))
        replies = self._nl.transact([r for r, _ in requests])
        for (seq, _), label in requests:
            try:
                replies[seq].raise_for()
            except OSError as exc:
                raise kernel_error(exc, f"{what}: {label}") from exc

    # ---- plumbing ----------------------------------------------------------------

    def _request(self, msg: Any, mtype: int, flags: int, what: str) -> None:
        try:
            self._nl.request(msg, mtype, flags)
        except OSError as exc:
            raise kernel_error(exc, what) from exc


def mac_for(address: IPv4Address) -> str:
    """A locally administered MAC derived from an IPv4 address (as Docker did: 02:42:ac:11:00:02)."""
    return "02:42:" + ":".join(f"{b:02x}" for b in address.packed)
