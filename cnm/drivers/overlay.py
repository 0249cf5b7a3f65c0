"""The overlay driver: one network across hosts, as VXLAN over their underlay.

Like Docker's ``overlay`` driver, on cnm's bridge: on every host that has
the network, a bridge (MTU 1450, the 50 bytes VXLAN adds taken off the
underlay's 1500) and, as a port of it, a VXLAN device with the network's
VNI, sending to UDP 4789 of the other hosts' tunnel ends (their addresses
on the underlay: in a lab, on its data plane). Frames for
unknown MACs, broadcasts and multicast go to every other host (one
forwarding entry per peer); the kernel learns where each MAC lives from
what arrives. The bridge carries the network's gateway on every host, with
one MAC derived from the VNI, so each host routes (and NATs, and publishes
the ports of) its own sandboxes, as on a bridge network. That gateway stays
on its host: the VXLAN port has neighbour suppression on (ARP and neighbour
discovery for the bridge's own addresses are answered there, not flooded to
the peers, which would each answer too), and the firewall drops whatever the
host itself sends out of the tunnel and whatever the tunnel brings the host
(the ``nftables`` backend's ``bridge`` table; with the firewall ``"none"``
nothing does, and hosts hear each other's gateway). So, as in Docker, a host
reaches only its own sandboxes' overlay addresses (a remote one would answer
the gateway MAC, which is its own host's); sandboxes reach each other across
hosts.

Which hosts have a network (and its VNI) comes from a :class:`Peers`: the
small interface peer discovery sits behind. :class:`LocalPeers` keeps it
in the process, for :class:`cnm.Lab`; a distributed store can take its
place. A host that deletes the network, or closes, leaves it, and every
other host removes its forwarding entry for that host.

Addresses must not repeat across hosts: :meth:`cnm.Lab.create_network`
gives each host its own ``ip_range`` of the subnet, and every host's
address pool of the network goes through the network's book of addresses
across hosts, which its :class:`Peers` keep (:meth:`Peers.addresses`): a
static address another host holds, or has in its range, is refused, and no
host hands out an address another holds. While an overlay is on a
host, UDP 4789 cannot be published there (its DNAT would hand the peers'
tunnel traffic to a sandbox).

VXLAN has no authentication: whoever can send a peer UDP 4789 can put frames
into any overlay. With *tunnels* (what :class:`cnm.Lab` gives), the tunnel
end is not on the host at all: its address is on the host's data link in a
namespace of its own, on a data plane nothing but the hosts' tunnel
namespaces is on, and the VXLAN devices are made from there (the kernel
keeps a VXLAN device's socket in the namespace it was created from) and
live on the host. Nothing with a namespace of its own on the uplink's wire
(the outside, a macvlan sandbox) or behind the host (a sandbox) then has a
route to a tunnel end, nor a socket to send to. (What runs in the host's
own namespace, a ``network_mode="host"`` sandbox included, is the host, and
root there can reach everything the host can.) Without *tunnels*, the kernel's VXLAN socket takes UDP
4789 on every address of the host: the firewall still drops UDP 4789 from
every network's bridge, to the host and through it
(:mod:`cnm.firewall.nftables.ruleset`), but the uplink's wire must then be
trusted.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Protocol

import attrs

from .._ip import IPAddress
from .._transport import VXLAN_PORT
from ..errors import ConflictError, InvalidArgumentError
from ..firewall import TUNNEL_PORT_GROUP
from ..ipam import AddressPool
from ..kernel import Link, Rtnl
from ..netns import Namespace
from ..undo import UndoLog, raise_collected
from . import Capabilities, NetworkPlumbing, NetworkSpec
from ._shared_pool import SharedAddresses, SharedPool
from .bridge import OPT_MTU, BridgeDriver

__all__ = ["FIRST_VNI", "OVERLAY_MTU", "VXLAN_PORT", "LocalPeers", "Member", "OverlayDriver", "Peers", "SharedAddresses"]

OVERLAY_MTU = 1450
#: Docker's first overlay VNI
FIRST_VNI = 4096
#: the forwarding entry that floods (broadcast, unknown, multicast) to a peer
_FLOOD = "00:00:00:00:00:00"


class Member(Protocol):
    """A host's side of one overlay network, told when other hosts come and go."""

    def peer_added(self, vtep: IPAddress) -> None: ...

    def peer_removed(self, vtep: IPAddress) -> None: ...


class Peers(Protocol):
    """Peer discovery: which hosts (tunnel ends) have which overlay network."""

    def vni(self, network: str) -> int:
        """The network's VNI, the same on every host."""

    def join(self, network: str, vtep: IPAddress, member: Member) -> None:
        """Enter *vtep* in *network*: tell the members there, and tell *member* of each of them."""

    def leave(self, network: str, vtep: IPAddress) -> None:
        """Take *vtep* out of *network*, telling the members left; a failure
        raises, and leaving again tells those not told yet."""

    def addresses(self, network: str) -> SharedAddresses:
        """The book of *network*'s addresses on all its hosts, the same object for every host."""


class LocalPeers:
    """:class:`Peers` kept in this process (the hosts of one :class:`cnm.Lab`)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._vnis: dict[str, int] = {}
        self._members: dict[str, dict[IPAddress, Member]] = {}
        #: the members still to be told that a tunnel end left (a failed leave is retried)
        self._untold: dict[tuple[str, IPAddress], list[Member]] = {}
        self._addresses: dict[str, SharedAddresses] = {}

    def addresses(self, network: str) -> SharedAddresses:
        with self._lock:
            return self._addresses.setdefault(network, SharedAddresses(network))

    def vni(self, network: str) -> int:
        with self._lock:
            return self._vnis.setdefault(network, FIRST_VNI + len(self._vnis))

    def join(self, network: str, vtep: IPAddress, member: Member) -> None:
        with self._lock:  # so that no peer comes or goes halfway
            members = self._members.setdefault(network, {})
            if vtep in members:
                raise ConflictError(f"overlay {network!r}: tunnel end {vtep} has joined already")
            told: list[tuple[Member, IPAddress]] = []  # (who, of whom), to take back on failure
            try:
                for other_vtep, other in members.items():
                    # Taken back even if this fails: the entry may be there though the answer was lost.
                    told.append((other, vtep))
                    other.peer_added(vtep)
                    told.append((member, other_vtep))
                    member.peer_added(other_vtep)
            except BaseException as exc:
                for who, gone in reversed(told):
                    try:
                        who.peer_removed(gone)
                    except Exception as failure:  # noqa: BLE001 - reported with the original
                        exc.add_note(f"taking back the entry for {gone} failed: {failure!r}")
                raise
            members[vtep] = member
            self._untold.pop((network, vtep), None)

    def leave(self, network: str, vtep: IPAddress) -> None:
        with self._lock:
            members = self._members.get(network, {})
            if vtep in members:
                del members[vtep]
                self._untold[(network, vtep)] = list(members.values())
            untold = self._untold.get((network, vtep), [])
            failures: list[Exception] = []
            for other in untold[:]:
                try:
                    other.peer_removed(vtep)
                    untold.remove(other)
                except Exception as exc:  # noqa: BLE001 - every peer is told
                    failures.append(exc)
            if not untold:
                self._untold.pop((network, vtep), None)
            raise_collected(f"overlay {network!r}: {vtep} leaving", failures)


@attrs.define
class _Tunnel:
    """One host's VXLAN device of a network: adds and removes a flood entry per peer."""

    host: Rtnl
    index: int
    what: str

    def peer_added(self, vtep: IPAddress) -> None:
        self.host.add_fdb(self.index, _FLOOD, vtep, self.what)

    def peer_removed(self, vtep: IPAddress) -> None:
        # The flood entry, and what was learned behind that host, so that
        # nothing is sent to it while those would age out.
        for mac in self.host.fdb_to(self.index, vtep, self.what):
            self.host.delete_fdb(self.index, mac, vtep, self.what)


class OverlayDriver(BridgeDriver):
    """A bridge per host joined to the other hosts' by VXLAN; see the module documentation."""

    name = "overlay"
    capabilities = Capabilities(families=frozenset({4, 6}), routed=True, spans_hosts=True, tunnel_port=VXLAN_PORT)

    def __init__(self, peers: Peers, vtep: IPAddress, *, tunnels: Namespace | None = None, host: str = "") -> None:
        #: where this host's tunnel end is: its address on the underlay (a lab's data plane)
        self.vtep = vtep
        #: the host's name, for messages about addresses other hosts hold
        self.host = host
        #: the namespace that address is in, if not the host's (a lab host's
        #: tunnel namespace): the VXLAN sockets live there, the devices on the host
        self.tunnels = tunnels
        self._peers = peers

    def validate(self, spec: NetworkSpec) -> None:
        super().validate(spec)
        if OPT_MTU in spec.options and int(spec.options[OPT_MTU]) > OVERLAY_MTU:
            raise InvalidArgumentError(
                f"network {spec.name!r}: {OPT_MTU} {spec.options[OPT_MTU]} is more than the underlay leaves ({OVERLAY_MTU})"
            )

    def share_pools(self, network: str, pools: Mapping[int, AddressPool], books: UndoLog) -> dict[int, AddressPool]:
        """Each pool through *network*'s book of addresses across hosts, this host's ranges entered there."""
        book = self._peers.addresses(network)
        host = (self.vtep, self.host)
        for pool in pools.values():
            ip_range = pool.ip_range
            if ip_range is not None:
                book.add_range(host, ip_range)
                books.push(
                    f"network {network!r}: ip_range {ip_range} on the overlay", lambda r=ip_range: book.remove_range(host, r)  # type: ignore[misc]
                )
        return {family: SharedPool(pool, book, host) for family, pool in pools.items()}

    def bridge_mac(self, spec: NetworkSpec) -> str:
        # The same on every host: the gateway answers with one MAC wherever a sandbox is.
        vni = self._peers.vni(spec.name)
        return f"02:42:{vni >> 16 & 255:02x}:{vni >> 8 & 255:02x}:{vni & 255:02x}:01"

    def create_network(self, host: Rtnl, spec: NetworkSpec, undo: UndoLog) -> NetworkPlumbing:
        vni = self._peers.vni(spec.name)
        options = {OPT_MTU: str(OVERLAY_MTU), **spec.options}
        plumbing = super().create_network(host, attrs.evolve(spec, options=options), undo)
        name = f"vx{vni}"
        what = f"network {spec.name!r}: vxlan {name!r} (VNI {vni})"
        # Leaving is undone last, after the device is gone: peers forget this
        # host once nothing of it can send to them (nor they re-learn from it).
        undo.push(f"{what}: leave the overlay", lambda: self._peers.leave(spec.name, self.vtep))
        link = self._add_vxlan(
            host,
            name,
            data={"vxlan_id": vni, "vxlan_local": str(self.vtep), "vxlan_port": VXLAN_PORT, "vxlan_learning": 1},
            master=plumbing.index,
            mtu=plumbing.mtu,
            alias=f"cnm:{spec.owner}:network/{spec.name}",
            up=True,
            # The anycast gateway stays on each host: ARP and neighbour
            # discovery for the bridge's own addresses are not flooded to the
            # peers (each would answer), and the firewall drops what the host
            # itself sends out of the tunnel (see TUNNEL_PORT_GROUP).
            port=("neigh_suppress",),
            group=TUNNEL_PORT_GROUP,
        )
        undo.push(what, lambda: host.delete_link(link.index, what))  # its forwarding entries go with it
        self._peers.join(spec.name, self.vtep, _Tunnel(host, link.index, what))
        return plumbing

    def _add_vxlan(self, host: Rtnl, name: str, **settings: Any) -> Link:
        """The VXLAN device on the host; made from the tunnel namespace, if
        there is one, so that its socket is there (the kernel keeps a VXLAN
        device's socket in the namespace it was created from)."""
        if self.tunnels is None:
            return host.add_link("vxlan", name, **settings)
        with Rtnl(self.tunnels) as there:
            return there.add_link("vxlan", name, namespace=host.namespace, **settings)
