"""The one place that talks rtnetlink: links, addresses, routes.

:class:`Rtnl` wraps one NETLINK_ROUTE socket created inside one namespace
(see :mod:`cnm.netns`). Its methods are small verbs; the requests on hot paths
are packed by :mod:`cnm.rtmsg`, answers and dumps are decoded by pyroute2, and
everything goes through :class:`cnm.netlink.Netlink`. Nothing outside this
module sends rtnetlink requests. OSErrors from the kernel are mapped to
:class:`cnm.errors.KernelError` naming the object, here and nowhere else
(the refusal of a link's creation through :func:`cnm._newlink.creation_error`).

The values the verbs take and give (:class:`Link`, :class:`Peer`,
:class:`Route`, ...) live in :mod:`cnm._links`, and the encoding of
:meth:`Rtnl.add_link`'s request in :mod:`cnm._newlink`; both are imported
from here.

Undo is *not* registered here: the caller that decides to make a change
registers its inverse (see :mod:`cnm.undo`), because only the caller knows
what the change belongs to.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network, ip_address, ip_interface, ip_network
from typing import Any, Literal, overload

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL
from pyroute2.netlink import rtnl as rt
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from . import _newlink
from ._fdb import ForwardingEntries
from . import rtmsg as pack
from ._ip import IPAddress, IPInterface, IPNetwork
from ._links import Link, LinkInfo, Peer, Route, RouteSpec, check_route, mac_for, random_mac
from .errors import KernelError, kernel_error
from .netlink import Netlink
from .netns import Namespace

__all__ = ["LINKS_GONE_TIMEOUT", "LINKS_STALL", "Link", "LinkInfo", "Peer", "Route", "RouteSpec", "Rtnl", "mac_for", "random_mac"]

# What is imported from cnm._links is public here: named so in reprs, pickles
# and the docs (which would otherwise see cnm.drivers re-export the same
# classes under a second, private, name).
for _public in (Link, LinkInfo, Peer, Route, RouteSpec, mac_for, random_mac):
    _public.__module__ = __name__

_NETLINK_ROUTE = 0
_RT_TABLE_MAIN = 254
_CREATE = NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
#: link look-ups sent in one write while waiting (their answers must fit the receive buffer)
_LOOKUPS_PER_WRITE = 64


#: How long cnm waits for the host ends of veths to vanish with their
#: sandbox namespaces (the kernel dismantles those later, on its own) before
#: deleting what is left one by one.
LINKS_GONE_TIMEOUT = 5.0
#: How long such a wait goes on while none vanishes. Deleting
#: 1000 sandbox namespaces at once, the first veth went after 0.17-0.21 s
#: and no later gap was longer (see the docs' explanation page): ten times that.
LINKS_STALL = 2.0


class Rtnl(ForwardingEntries):
    """rtnetlink verbs for one namespace, over one socket opened inside it
    (the forwarding-entry verbs come from :class:`cnm._fdb.ForwardingEntries`)."""

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
        return _newlink.index_of(reply)

    def links(self) -> list[LinkInfo]:
        return [LinkInfo(m) for m in self._nl.dump(ifinfmsg(), rt.RTM_GETLINK)]

    @overload
    def routes(self, family: Literal[4] = 4) -> list[IPv4Network]: ...
    @overload
    def routes(self, family: Literal[6]) -> list[IPv6Network]: ...
    def routes(self, family: int = 4) -> list[IPv4Network] | list[IPv6Network]:
        """Destinations of the unicast routes of *family* (4 or 6) in the main
        table (default route excluded)."""
        return [dst for dst, _, _ in self.route_table(family) if dst.prefixlen]  # type: ignore[return-value]

    def route_table(self, family: int = 4) -> list[tuple[IPNetwork, IPAddress | None, int | None]]:
        """Every unicast route of *family* (4 or 6) in the main table, the
        default route too: (destination, gateway or None, out interface's index)."""
        msg = rtmsg()
        msg["family"] = _AF[family]
        out: list[tuple[IPNetwork, IPAddress | None, int | None]] = []
        for m in self._nl.dump(msg, rt.RTM_GETROUTE):
            if m["table"] != _RT_TABLE_MAIN or m["type"] != 1:
                continue
            dst = m.get_attr("RTA_DST") or ("0.0.0.0" if family == 4 else "::")
            via = m.get_attr("RTA_GATEWAY")
            out.append((ip_network(f"{dst}/{m['dst_len']}", strict=False), ip_address(via) if via else None, m.get_attr("RTA_OIF")))
        return out

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
        create = pack.message(pack.RTM_NEWLINK, _CREATE | NLM_F_ECHO, pack.bridge(name, mac, mtu, multicast_snooping))
        return self._make_link(create, self, "bridge", name, mac, alias, what=f"link {name!r} (bridge)").index

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
        group: int = 0,
    ) -> tuple[int, int | None]:
        """Create a veth pair: *name* here, with *mac*, up, enslaved to
        *master* and in device *group*; *peer_name* directly inside *peer_namespace*, still down (the
        kernel refuses to open a veth end before its pair is complete,
        ENOTCONN, so the peer is brought up from inside its namespace:
        :meth:`configure_link`). Return the index of this end and of the
        peer in its namespace (None if the kernel did not say).

        One request makes the whole pair, so there is never a half-made pair.
        A port of a bridge gets hairpin mode: a sandbox reaching its own
        published port through a host address is DNATed back to itself, and
        with bridge netfilter on (the kernel's default) that frame leaves
        through the port it came in by.
        """
        fd = os.open(peer_namespace.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            body = pack.veth(name, mac, master, mtu, peer_name, fd, peer_mac, group)
            create = pack.message(pack.RTM_NEWLINK, _CREATE | NLM_F_ECHO, body)
            what = f"link {name!r} (veth)"
            link = self._make_link(create, self, "veth", name, mac, alias, port=("hairpin",) if master is not None else (), what=what)
            return link.index, link.peer_index
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
        inherit_mac: bool = False,
        group: int = 0,
        port: Collection[str] = (),
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

        With *inherit_mac*, *mac* is the *parent*'s and is not asked for: the
        kernel gives the link its parent's (an ipvlan, a macvlan in passthru
        mode), by which the made link is then recognised.

        *group* is the link's device group (what firewall rules can match
        without naming the link); *port* names settings of its bridge port
        to turn on, of :data:`cnm.rtmsg.BRIDGE_PORT_FLAGS` (``"hairpin"``,
        ``"neigh_suppress"``), with a *master* only.

        There is never a half-made link: if a step after the creation fails,
        the link is deleted again before the error is raised. A kind the
        kernel lacks raises :class:`~cnm.errors.MissingKernelFeatureError`
        naming its module; a taken name raises
        :class:`~cnm.errors.InterfaceExistsError`; bad arguments raise
        :class:`~cnm.errors.InvalidArgumentError` before any request is sent.
        """
        with _newlink.request(
            kind, name, here=self.namespace, data=data, parent=parent, namespace=namespace, peer=peer,
            mac=mac, mtu=mtu, alias=alias, master=master, parent_mac=mac if inherit_mac else None, group=group, port=port,
        ) as new:
            # Follow-up requests go where the link lives; opened before the
            # creation so that failing to open it changes nothing.
            there = Rtnl(new.namespace) if new.namespace is not None else self
            try:
                return self._make_link(new.create, there, kind, name, new.mac, alias, up=up, port=port, what=new.what)
            finally:
                if there is not self:
                    there.close()

    def _make_link(
        self,
        create: tuple[int, bytes],
        there: Rtnl,
        kind: str,
        name: str,
        mac: str,
        alias: str | None,
        *,
        up: bool = False,
        port: Iterable[str] = (),
        what: str,
    ) -> Link:
        """Send the RTM_NEWLINK *create* (which gives the link *mac*); find the
        new link in *there* (its namespace); mark it with *alias* (cnm's owner
        mark), turn on the settings *port* of its bridge port, and with
        *up* bring it up.

        The creation asks the kernel to echo the new link back (NLM_F_ECHO:
        its index, and a veth's peer index, without a look-up). The kernel
        echoes a link made in this socket's namespace, but not one made in
        another namespace, nor a vxlan (it announces itself before the
        creation request is done with it; measured): those are looked up by
        name in their namespace, and must carry the *mac* they were given.
        The kernel ignores an alias (and bridge-port settings) in a creation
        request, so they follow in a second write, by index, once the link
        is known to be ours (sent by name, they would change a same-named
        link of someone else's when the creation fails with EEXIST). If the
        link was made but a later step fails, it is deleted again before the
        error is raised: callers register undo steps only for what succeeded.
        """
        try:
            replies = self._nl.transact([create], echoed=[create[0]])
        except BaseException:
            there._delete_if_ours(name, mac)  # the kernel may have made it before the exchange broke
            raise
        try:
            replies[create[0]].raise_for()
        except OSError as exc:
            raise _newlink.creation_error(exc, kind, what) from exc
        made = replies[create[0]].data
        try:
            peer_index = None
            if made is not None and there is self:
                index = _newlink.index_of(replies[create[0]])
                if kind == "veth":
                    peer_index = _newlink.peer_index_of(replies[create[0]])
            else:
                found = there.link(name=name)
                if found is None or found.mac != mac:
                    raise KernelError(errno.ENODEV, f"{what}: made, but gone (or changed) before it could be marked")
                index = found.index
            requests = [(pack.RTM_NEWLINK, NLM_F_ACK, pack.link_settings(index, alias, port), "mark")]
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
        check_route(destination, gateway)  # before the kernel sees it
        body = pack.route(destination, gateway, oif)
        self._apply([(pack.RTM_NEWROUTE, _CREATE, body, f"add route {destination} via {gateway}")], what)

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
            check_route(route.destination, route.via)
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
