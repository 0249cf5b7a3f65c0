"""The one place that talks rtnetlink: links, addresses, routes.

:class:`Rtnl` wraps one NETLINK_ROUTE socket created inside one namespace
(see :mod:`cnm.netns`). Its methods are small verbs; the requests on hot paths
are packed by :mod:`cnm.rtmsg`, answers and dumps are decoded by pyroute2, and
everything goes through :class:`cnm.netlink.Netlink`. Nothing outside this
module sends rtnetlink requests. OSErrors from the kernel are mapped to
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
from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Interface, IPv6Network, ip_interface, ip_network
from typing import Any, Literal, Protocol, overload

import attrs

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL
from pyroute2.netlink import rtnl as rt
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from . import rtmsg as pack
from ._ip import IPAddress, IPInterface, IPNetwork
from .errors import InterfaceExistsError, InvalidArgumentError, KernelError, MissingKernelFeatureError, kernel_error
from .netlink import Netlink, NetlinkReply
from .netns import Namespace

__all__ = ["Link", "LinkInfo", "Peer", "Route", "RouteSpec", "Rtnl", "mac_for", "random_mac"]

_NETLINK_ROUTE = 0
_RT_TABLE_MAIN = 254
_IFF_UP = 0x1
_CREATE = NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_ALIAS_MAX = 255  # IFALIASZ - 1
#: link look-ups sent in one write while waiting (their answers must fit the receive buffer)
_LOOKUPS_PER_WRITE = 64


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


class RouteSpec(Protocol):
    """What :meth:`Rtnl.configure_link` needs of a route: its *destination*
    and the gateway it goes *via* (None: on the link). :class:`Route` is one;
    so is any object with these two attributes."""

    @property
    def destination(self) -> IPNetwork: ...
    @property
    def via(self) -> IPAddress | None: ...


@attrs.frozen
class Route:
    """A route to *destination* via a gateway, or on the link (a device
    route) with *via* None; both of one family.

    Out of the interface it is given with (:meth:`Rtnl.configure_link`).
    """

    destination: IPNetwork
    via: IPAddress | None = None

    def __attrs_post_init__(self) -> None:
        _check_route(self.destination, self.via)

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
    """The other end of a veth made by :meth:`Rtnl.add_link`: its *name*, the
    *namespace* it is made in (None: the namespace of the :class:`Rtnl`) and
    its *mac* (None: a random one)."""

    name: str
    namespace: Namespace | None = None
    mac: str | None = None


@attrs.frozen
class Link:
    """A link made by :meth:`Rtnl.add_link`: its *index* in the *namespace* it
    lives in and, for a veth, the index of the peer in the peer's namespace
    (None when the kernel did not say: a veth made inside another namespace)."""

    index: int
    namespace: Namespace
    peer_index: int | None = None


def _check_route(destination: IPNetwork, via: IPAddress | None) -> None:
    if via is not None and via.version != destination.version:
        raise InvalidArgumentError(f"route to {destination}: gateway {via} is of another address family")


def _index_of(reply: NetlinkReply) -> int:
    """The ifindex in an RTM_NEWLINK answer (ifinfomsg.ifi_index)."""
    assert reply.data is not None
    return int(struct.unpack_from("=i", reply.data, 16 + 4)[0])


def _peer_index_of(reply: NetlinkReply) -> int | None:
    """IFLA_LINK of an RTM_NEWLINK answer: for a veth, the other end's index
    (in the other end's namespace)."""
    data = reply.data
    assert data is not None
    offset, end = 32, min(len(data), struct.unpack_from("=I", data, 0)[0])
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        if kind & 0x3FFF == 5 and length >= 8:  # IFLA_LINK
            return int(struct.unpack_from("=I", data, offset + 4)[0])
        offset += (length + 3) & ~3
    return None


#: How long cnm waits for the host ends of veths to vanish with their
#: sandbox namespaces (the kernel dismantles those later, on its own) before
#: deleting what is left one by one.
LINKS_GONE_TIMEOUT = 5.0
#: How long such a wait goes on while none vanishes. Deleting
#: 1000 sandbox namespaces at once, the first veth went after 0.17-0.21 s
#: and no later gap was longer (see the docs' explanation page): ten times that.
LINKS_STALL = 2.0


class Rtnl:
    """rtnetlink verbs for one namespace, over one socket opened inside it."""

    def __init__(self, namespace: Namespace, *, here: bool = False) -> None:
        """Open the socket inside *namespace*; ``here=True`` means the calling
        thread is already inside it (a call running on the namespace worker)."""
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

    # ---- reading -----------------------------------------------------------------

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
        seq, data = pack.message(pack.RTM_GETLINK, 0, pack.getlink(name))
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

    @overload
    def routes(self, family: Literal[4] = 4) -> list[IPv4Network]: ...
    @overload
    def routes(self, family: Literal[6]) -> list[IPv6Network]: ...
    def routes(self, family: int = 4) -> list[IPv4Network] | list[IPv6Network]:
        """Destinations of the unicast routes of *family* (4 or 6) in the main
        table (default route excluded)."""
        msg = rtmsg()
        msg["family"] = _AF[family]
        out = []
        for m in self._nl.dump(msg, rt.RTM_GETROUTE):
            if m["table"] != _RT_TABLE_MAIN or m["dst_len"] == 0 or m["type"] != 1:
                continue
            out.append(ip_network(f"{m.get_attr('RTA_DST')}/{m['dst_len']}", strict=False))
        return out  # type: ignore[return-value]  # one family, as asked

    @overload
    def addresses(self, family: Literal[4] = 4) -> list[tuple[int, IPv4Interface]]: ...
    @overload
    def addresses(self, family: Literal[6]) -> list[tuple[int, IPv6Interface]]: ...
    @overload
    def addresses(self, family: None) -> list[tuple[int, IPInterface]]: ...
    def addresses(
        self, family: int | None = 4
    ) -> list[tuple[int, IPv4Interface]] | list[tuple[int, IPv6Interface]] | list[tuple[int, IPInterface]]:
        """(link index, address) of every address of *family* (4, 6, or None for both)."""
        msg = ifaddrmsg()
        msg["family"] = _AF[family] if family is not None else socket.AF_UNSPEC
        return [
            (m["index"], ip_interface(f"{m.get_attr('IFA_LOCAL') or m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}"))
            for m in self._nl.dump(msg, rt.RTM_GETADDR)
            if m["family"] in (socket.AF_INET, socket.AF_INET6)
        ]

    # ---- links -----------------------------------------------------------------

    def loopback_up(self) -> None:
        """Bring ``lo`` up (index 1 in every namespace)."""
        self.set_up(1, "loopback")

    def set_up(self, index: int, what: str) -> None:
        self._apply([(pack.RTM_NEWLINK, NLM_F_ACK, pack.set_up(index), "set up")], what)

    def add_bridge(
        self, name: str, *, alias: str, mac: str, mtu: int | None = None, multicast_snooping: bool = True
    ) -> int:
        """Create a bridge that is up; return its index.

        The bridge gets a fixed *mac*: otherwise the kernel gives it the
        lowest MAC of its ports, so it would change as sandboxes come and go.
        """
        body = pack.bridge(name, mac, mtu, multicast_snooping)
        return _index_of(self._create_link(name, "bridge", body, mac=mac, alias=alias, hairpin=False))

    def add_veth(
        self,
        name: str,
        *,
        mac: str,
        alias: str,
        master: int | None,
        peer_name: str,
        peer_namespace: Namespace,
        peer_mac: str | None = None,
        mtu: int | None = None,
    ) -> tuple[int, int | None]:
        """Create a veth pair: *name* here, with *mac*, up and enslaved to
        *master*; *peer_name* directly inside *peer_namespace*, still down (the
        kernel refuses to open a veth end before its pair is complete,
        ENOTCONN, so the peer is brought up from inside its namespace:
        :meth:`configure_interface`). Return the index of this end and of the
        peer in its namespace (None if the kernel did not say).

        One request makes the whole pair, so there is never a half-made pair.
        A port of a bridge gets hairpin mode: a sandbox reaching its own
        published port through a host address is DNATed back to itself, and
        with bridge netfilter on (the kernel's default) that frame leaves
        through the port it came in by.
        """
        fd = os.open(peer_namespace.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            body = pack.veth(name, mac, master, mtu, peer_name, fd, peer_mac)
            reply = self._create_link(name, "veth", body, mac=mac, alias=alias, hairpin=master is not None)
            return _index_of(reply), _peer_index_of(reply)
        finally:
            os.close(fd)

    def delete_link(self, index: int, what: str, *, namespace: Namespace | None = None) -> None:
        """Delete a link (for a veth, both ends). Already gone raises OSError(ENODEV).

        *index* is in this socket's namespace, or in *namespace* when given
        (as :meth:`add_link` returns it in :attr:`Link.namespace`): the
        request then goes through a socket opened there for it.
        """
        if namespace is not None and namespace.path != self.namespace.path:
            with Rtnl(namespace) as there:
                there.delete_link(index, what)
            return
        seq, data = pack.message(pack.RTM_DELLINK, NLM_F_ACK, pack.dellink(index))
        try:
            self._nl.transact([(seq, data)])[seq].raise_for()
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                raise  # "already gone": callers undoing a change treat it as success
            raise kernel_error(exc, f"{what}: delete") from exc

    def add_link(
        self,
        kind: str,
        name: str,
        *,
        data: Mapping[str, Any] | None = None,
        parent: int | None = None,
        namespace: Namespace | None = None,
        peer: Peer | None = None,
        mac: str | None = None,
        mtu: int | None = None,
        alias: str | None = None,
        master: int | None = None,
        up: bool = False,
    ) -> Link:
        """Create a link of any *kind* the kernel knows (``"macvlan"``,
        ``"ipvlan"``, ``"vxlan"``, ``"vlan"``, ``"veth"``, ``"bridge"``,
        ``"dummy"``, ...) called *name*; return where it is.

        *data* is the kind's own settings (IFLA_INFO_DATA), keyed by the
        attribute's name as the kernel's headers spell it, with or without
        the ``IFLA_`` prefix and in either case: ``{"macvlan_mode":
        "bridge"}``, ``{"IFLA_VXLAN_ID": 42}``, ``{"ipvlan_mode": "l3"}``,
        ``{"vlan_id": 10}``. Values are what :mod:`pyroute2` encodes for that
        attribute: integers, addresses as strings, macvlan mode names
        (``private``, ``vepa``, ``bridge``, ``passthru``, ``source``); ipvlan
        modes may also be named (``l2``, ``l3``, ``l3s``). *parent* is the
        index of the link a macvlan, ipvlan or vlan sits on (IFLA_LINK), in
        this socket's namespace.

        With *namespace*, the link is made straight inside that namespace
        (IFLA_NET_NS_FD); its *parent* is still looked up here, where the
        socket is (the kernel resolves IFLA_LINK in the requester's
        namespace): a macvlan on a host interface can be made directly in a
        sandbox. *peer* is a veth's other end. The link gets *mac* (default:
        a random locally administered one), *mtu*, *master* (a bridge's
        index here), cnm's owner mark *alias*, and no IPv6 addresses of its
        own (no link-local address, as :meth:`configure_link` also sets; a
        caller may give it addresses); with *up* it is brought up last.

        There is never a half-made link: if a step after the creation fails,
        the link is deleted again before the error is raised. A kind the
        kernel lacks raises :class:`~cnm.errors.MissingKernelFeatureError`
        naming its module; a taken name raises
        :class:`~cnm.errors.InterfaceExistsError`; bad arguments raise
        :class:`~cnm.errors.InvalidArgumentError` before any request is sent.
        """
        what = f"link {name!r} ({kind})"
        _check_ifname(name, what)
        mac = _check_mac(mac, what) if mac is not None else random_mac()
        if alias is not None and (not isinstance(alias, str) or len(alias.encode()) > _ALIAS_MAX):
            raise InvalidArgumentError(f"{what}: alias {alias!r} is longer than the kernel keeps ({_ALIAS_MAX} bytes)")
        if (peer is not None) != (kind == "veth"):
            raise InvalidArgumentError(f"{what}: a peer is given for a veth, and only for a veth")
        info: list[tuple[str, Any]] = [("IFLA_INFO_KIND", kind)]
        fds: list[int] = []
        try:
            attrs: list[tuple[str, Any]] = [("IFLA_IFNAME", name), ("IFLA_ADDRESS", mac)]
            if mtu is not None:
                attrs.append(("IFLA_MTU", mtu))
            if parent is not None:
                attrs.append(("IFLA_LINK", parent))
            if master is not None:
                attrs.append(("IFLA_MASTER", master))
            if namespace is not None and namespace.path == self.namespace.path:
                namespace = None
            if namespace is not None:
                fds.append(os.open(namespace.path, os.O_RDONLY | os.O_CLOEXEC))
                attrs.append(("IFLA_NET_NS_FD", fds[-1]))
            settings = _info_data(kind, data, what)
            if peer is not None:
                _check_ifname(peer.name, f"{what}: peer")
                end: list[tuple[str, Any]] = [("IFLA_IFNAME", peer.name)]
                if peer.mac is not None:
                    end.append(("IFLA_ADDRESS", _check_mac(peer.mac, f"{what}: peer")))
                if mtu is not None:
                    end.append(("IFLA_MTU", mtu))
                if peer.namespace is not None:
                    fds.append(os.open(peer.namespace.path, os.O_RDONLY | os.O_CLOEXEC))
                    end.append(("IFLA_NET_NS_FD", fds[-1]))
                settings.append(("VETH_INFO_PEER", {"attrs": end}))
            if settings:
                info.append(("IFLA_INFO_DATA", {"attrs": settings}))
            attrs.append(("IFLA_LINKINFO", {"attrs": info}))
            msg = ifinfmsg()
            msg["index"] = msg["flags"] = msg["change"] = 0
            msg["attrs"] = attrs
            try:
                create = Netlink.encode(msg, pack.RTM_NEWLINK, _CREATE | NLM_F_ECHO)
            except Exception as exc:  # pyroute2 refusing a value: bad input, nothing sent
                raise InvalidArgumentError(f"{what}: cannot encode its settings: {exc}") from exc
            # Follow-up requests go where the link lives; opened before the
            # creation so that failing to open it changes nothing.
            there = Rtnl(namespace) if namespace is not None else self
            try:
                return self._make_link(create, there, kind, name, mac, alias, up, what)
            finally:
                if there is not self:
                    there.close()
        finally:
            for fd in fds:
                os.close(fd)

    def _make_link(
        self, create: tuple[int, bytes], there: Rtnl, kind: str, name: str, mac: str, alias: str | None, up: bool, what: str
    ) -> Link:
        """Send *create*; find the new link in *there* (its namespace); mark it and bring it up.

        The kernel echoes a link made in this socket's namespace, but not one
        made in another namespace, nor a vxlan (it announces itself before the
        creation request is done with it; measured): those are looked up by
        name in their namespace, and must carry the *mac* they were given.
        """
        try:
            replies = self._nl.transact([create], echoed=[create[0]])
        except BaseException:
            there._delete_if_ours(name, mac)  # the kernel may have made it before the exchange broke
            raise
        try:
            replies[create[0]].raise_for()
        except OSError as exc:
            if exc.errno == errno.EOPNOTSUPP:
                module = _MODULES.get(kind, kind)
                raise MissingKernelFeatureError(
                    exc.errno, f"{what}: this kernel has no {kind!r} link type (module {module!r} not available)"
                ) from exc
            if exc.errno == errno.EEXIST:
                raise InterfaceExistsError(exc.errno, f"{what}: create: an interface of that name exists") from exc
            raise kernel_error(exc, f"{what}: create") from exc
        made = replies[create[0]].data
        try:
            peer_index = None
            if made is not None and there is self:
                index = _index_of(replies[create[0]])
                if kind == "veth":
                    peer_index = _peer_index_of(replies[create[0]])
            else:
                found = there.link(name=name)
                if found is None or found.mac != mac:
                    raise KernelError(errno.ENODEV, f"{what}: made, but gone (or changed) before it could be marked")
                index = found.index
            requests = [(pack.RTM_NEWLINK, NLM_F_ACK, pack.link_settings(index, alias, False), "mark")]
            if up:
                requests.append((pack.RTM_NEWLINK, NLM_F_ACK, pack.set_up(index), "set up"))
            there._apply(requests, what)
            return Link(index, there.namespace, peer_index)
        except BaseException:
            there._delete_if_ours(name, mac)
            raise

    def wait_gone(self, indexes: Iterable[int], timeout: float, *, stall: float | None = None) -> list[int]:
        """Wait until no link has one of *indexes*; return the ones still present at *timeout*.

        With *stall*, give up earlier once none of them went for that long:
        a veth whose namespace something else keeps alive (a process, an open
        descriptor) does not go at all.

        Each round asks for just those links (pipelined, without statistics),
        so a wait costs the same however many other links the namespace has.
        """
        pending = sorted(set(indexes))
        now = time.monotonic()
        deadline, progress = now + timeout, now
        delay = 0.0005
        while pending:
            still: list[int] = []
            for start in range(0, len(pending), _LOOKUPS_PER_WRITE):
                chunk = pending[start : start + _LOOKUPS_PER_WRITE]
                asks = [pack.message(pack.RTM_GETLINK, 0, pack.getlink(index=i)) for i in chunk]
                replies = self._nl.transact(asks)
                still += [i for (seq, _), i in zip(asks, chunk) if replies[seq].error == 0]
            now = time.monotonic()
            if len(still) < len(pending):
                progress = now
            pending = still
            if not pending or now >= deadline or (stall is not None and now - progress >= stall):
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        return pending

    def _create_link(self, name: str, kind: str, body: bytes, *, mac: str, alias: str, hairpin: bool) -> NetlinkReply:
        """Create a link from the RTM_NEWLINK *body* (which gives it *mac*),
        then mark it with *alias* (cnm's owner mark) and, with *hairpin*, set
        its bridge port to hairpin mode. Returns the kernel's description of
        the new link (RTM_NEWLINK).

        The creation asks the kernel to echo the new link back (NLM_F_ECHO:
        its index, and a veth's peer index, without a look-up); the kernel
        ignores an alias (and bridge-port settings) in a creation request, so
        they follow in a second write, by index, once the link is known to be
        ours (sent by name, they would change a same-named link of someone
        else's when the creation fails with EEXIST). If the link was made but
        a later step fails, it is deleted again before the error is raised:
        callers register undo steps only for what succeeded.
        """
        create = pack.message(pack.RTM_NEWLINK, _CREATE | NLM_F_ECHO, body)
        try:
            replies = self._nl.transact([create], echoed=[create[0]])
        except BaseException:
            # The exchange broke after the request was written: the kernel may
            # have made the link. Remove it if it has the MAC we gave it.
            self._delete_if_ours(name, mac)
            raise
        try:
            replies[create[0]].raise_for()
        except OSError as exc:
            if exc.errno == errno.EOPNOTSUPP:
                raise MissingKernelFeatureError(
                    exc.errno, f"link {name!r}: this kernel has no {kind!r} link type (module not available)"
                ) from exc
            raise kernel_error(exc, f"link {name!r} ({kind}): create") from exc
        made = replies[create[0]]
        try:
            if made.data is None:
                raise KernelError(errno.EPROTO, f"link {name!r} ({kind}): the kernel did not echo the new link")
            index = _index_of(made)
            settings = pack.message(pack.RTM_NEWLINK, NLM_F_ACK, pack.link_settings(index, alias, hairpin))
            self._nl.transact([settings])[settings[0]].raise_for()
            return made
        except BaseException as exc:
            self._delete_if_ours(name, mac)
            if isinstance(exc, OSError) and not isinstance(exc, KernelError):
                raise kernel_error(exc, f"link {name!r} ({kind}): configure") from exc
            raise

    def _delete_if_ours(self, name: str, mac: str) -> None:
        """Best-effort removal of a link this process just made, while already failing.

        Only a link with the random *mac* cnm gave it is removed, so a link of
        the same name that belongs to someone else is never touched.
        """
        try:
            link = self.link(name=name)
            if link is not None and link.mac == mac:
                self.delete_link(link.index, f"link {name!r}")
        except OSError:
            pass  # the original error is the one to report

    # ---- addresses and routes --------------------------------------------------

    def add_address(self, index: int, address: IPInterface, what: str) -> None:
        """Put *address* on link *index* (an IPv6 one usable at once: see :func:`cnm.rtmsg.address`)."""
        body = pack.address(index, address.ip, address.network)
        self._apply([(pack.RTM_NEWADDR, _CREATE, body, f"add address {address}")], what)

    def add_route(self, destination: IPNetwork, gateway: IPAddress | None, what: str, *, oif: int | None = None) -> None:
        """Add a route of either family to *destination* through *gateway* (None: on-link, out of *oif*)."""
        _check_route(destination, gateway)  # before the kernel sees it
        body = pack.route(destination, gateway, oif)
        self._apply([(pack.RTM_NEWROUTE, _CREATE, body, f"add route {destination} via {gateway}")], what)

    def configure_interface(
        self, name: str, address: IPv4Interface, gateway: IPv4Address | None, what: str, *, index: int | None = None
    ) -> None:
        """Bring link *name* up, give it an address and, with *gateway*, the
        default route through it (:meth:`configure_link` with one address)."""
        self.configure_link(name, [address], [Route.default(gateway)] if gateway is not None else [], what, index=index)

    def configure_link(
        self,
        name: str,
        addresses: Sequence[IPInterface],
        routes: Sequence[RouteSpec],
        what: str,
        *,
        index: int | None = None,
    ) -> None:
        """Bring link *name* up, give it *addresses* (of either family, at
        most as many as the caller likes) and *routes* out of it.

        The requests are pipelined in one write; the kernel handles them in
        order. The link is looked up first unless its *index* is given.
        """
        if index is None:
            index = self.link_index(name)
        if index is None:
            raise kernel_error(errno.ENODEV, what, reason=f"interface {name!r} not found")
        requests = [
            # Before "up": IPv6 would otherwise give the link a link-local
            # address, with duplicate-address detection and multicast reports
            # (without this, building an IPv4 sandbox measured ~3x slower).
            # An IPv6 sandbox needs none of it either: its addresses are added
            # without DAD, and neighbour discovery works from them alone, both
            # ways, at once (measured: see the docs' explanation page).
            (pack.RTM_NEWLINK, NLM_F_ACK, pack.no_ipv6_addresses(index), f"no IPv6 addresses on {name}"),
            (pack.RTM_NEWLINK, NLM_F_ACK, pack.set_up(index), f"set {name} up"),
        ]
        for address in addresses:
            body = pack.address(index, address.ip, address.network)
            requests.append((pack.RTM_NEWADDR, _CREATE, body, f"add address {address}"))
        for route in routes:
            _check_route(route.destination, route.via)
            if route.destination.prefixlen == 0:
                label = f"add default route via {route.via}" if route.via is not None else "add default route"
            else:
                label = f"add route {route.destination} via {route.via}"
            body = pack.route(route.destination, route.via, index)
            requests.append((pack.RTM_NEWROUTE, _CREATE, body, label))
        self._apply(requests, what)

    # ---- plumbing ----------------------------------------------------------------

    def _apply(self, requests: list[tuple[int, int, bytes, str]], what: str) -> None:
        """Send (type, flags, body, label) requests in one write; raise for the first refused."""
        messages = [pack.message(mtype, flags, body) for mtype, flags, body, _ in requests]
        try:
            replies = self._nl.transact(messages)
        except OSError as exc:
            raise kernel_error(exc, what) from exc
        for (seq, _), (_, _, _, label) in zip(messages, requests):
            try:
                replies[seq].raise_for()
            except OSError as exc:
                raise kernel_error(exc, f"{what}: {label}") from exc


#: The kernel module behind each link kind whose module is not named after it.
_MODULES = {
    "vlan": "8021q",
    "bond": "bonding",
    "gre": "ip_gre",
    "gretap": "ip_gre",
    "ip6gre": "ip6_gre",
    "ip6gretap": "ip6_gre",
    "ip6tnl": "ip6_tunnel",
    "vti": "ip_vti",
    "vti6": "ip6_vti",
    "xfrm": "xfrm_interface",
}
#: Names cnm accepts for the values of attributes pyroute2 only takes as numbers.
_VALUE_NAMES: dict[str, dict[str, int]] = {"IFLA_IPVLAN_MODE": {"l2": 0, "l3": 1, "l3s": 2}}


def _info_data(kind: str, data: Mapping[str, Any] | None, what: str) -> list[tuple[str, Any]]:
    """*data* as pyroute2's IFLA_INFO_DATA attribute list for *kind*."""
    if not data:
        return []
    spec = ifinfmsg.ifinfo.data_map.get(kind)
    if spec is None:
        raise InvalidArgumentError(f"{what}: no settings are known for links of kind {kind!r}")
    prefix = getattr(spec, "prefix", None) or "IFLA_"
    names = {}
    for entry in spec.nla_map:
        full = entry[-2]
        names[full.upper()] = full
        names[full[len(prefix) :].upper() if full.startswith(prefix) else full.upper()] = full
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        full = names.get(str(key).upper())
        if full is None or full.endswith("_UNSPEC"):
            raise InvalidArgumentError(f"{what}: {key!r} is not a setting of {kind} links")
        if isinstance(value, str) and full in _VALUE_NAMES:
            if value.lower() not in _VALUE_NAMES[full]:
                choices = ", ".join(_VALUE_NAMES[full])
                raise InvalidArgumentError(f"{what}: {key} {value!r} is not one of {choices}")
            value = _VALUE_NAMES[full][value.lower()]
        out.append((full, value))
    return out


def _check_ifname(name: object, what: str) -> None:
    """The kernel's rules for an interface name (dev_valid_name), checked before it sees one."""
    if (
        not isinstance(name, str)
        or not name
        or len(name.encode()) > 15
        or name in (".", "..")
        or any(c in name for c in "/:") or any(c.isspace() for c in name)
    ):
        raise InvalidArgumentError(f"{what}: {name!r} is not a valid interface name (1-15 bytes, no '/', ':' or spaces)")


def _check_mac(mac: object, what: str) -> str:
    parts = mac.split(":") if isinstance(mac, str) else []
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        raise InvalidArgumentError(f"{what}: {mac!r} is not a MAC address (six hex octets with ':')")
    assert isinstance(mac, str)
    return mac.lower()

def mac_for(address: IPv4Address) -> str:
    """A locally administered MAC derived from an IPv4 address (as Docker did: 02:42:ac:11:00:02)."""
    return "02:42:" + ":".join(f"{b:02x}" for b in address.packed)


def random_mac() -> str:
    """A random locally administered unicast MAC (02:xx:xx:xx:xx:xx)."""
    return "02:" + ":".join(f"{b:02x}" for b in os.urandom(5))
