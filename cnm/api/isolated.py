"""Isolated hosts: a fresh host namespace and an "outside" playing the internet.

:meth:`cnm.Host.isolated` builds them with the helpers here: both
namespaces (named with the host's token, so that whatever a failure leaves
can be swept), and the uplink between them.
"""

from __future__ import annotations

import threading
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from typing import TYPE_CHECKING, Protocol

import attrs

from ..kernel import Route, random_mac
from ..netns import Namespace
from ..undo import UndoLog
from ._common import InNamespace
from ._records import Processes
from ._services import Services

if TYPE_CHECKING:
    from ..facade import Kernel

__all__ = [
    "HOST_ADDRESS",
    "HOST_ADDRESS6",
    "OUTSIDE_ADDRESS",
    "OUTSIDE_ADDRESS6",
    "DATA_LINK",
    "DATA_SUBNET",
    "UPLINK",
    "UPLINK_SUBNET",
    "UPLINK_SUBNET6",
    "Outside",
    "make_namespaces",
    "make_tunnels",
    "wire_uplink",
]


#: The link between an isolated host and its "outside": a /24 from the range
#: reserved for benchmarking network devices (RFC 2544), so it never collides
#: with Docker's default pools or with real networks.
#: The name of the uplink, on the host's side and on the outside's: the
#: parent to give macvlan and ipvlan networks (``host.uplink``).
UPLINK = "eth0"
UPLINK_SUBNET = IPv4Network("198.18.0.0/24")
OUTSIDE_ADDRESS = IPv4Interface("198.18.0.1/24")
HOST_ADDRESS = IPv4Interface("198.18.0.2/24")
#: Its IPv6 side, from the IPv6 benchmarking range (RFC 5180) for the same reason.
UPLINK_SUBNET6 = IPv6Network("2001:2::/64")
OUTSIDE_ADDRESS6 = IPv6Interface("2001:2::1/64")
HOST_ADDRESS6 = IPv6Interface("2001:2::2/64")
#: A lab host's data link, in its tunnel namespace, on the lab's data plane:
#: the segment only the overlay's tunnels cross (see :func:`make_tunnels`).
DATA_LINK = "eth1"
DATA_SUBNET = IPv4Network("198.18.1.0/24")


@attrs.frozen
class Underlay:
    """Where a lab's host plugs its uplink in (see :mod:`cnm.api.lab`): the
    lab's outside namespace, the bridge there, and the host's addresses on
    it; and the lab's data plane, where the host's tunnel namespace plugs
    its data link in (the *port* there), with the *tunnel_address*."""

    namespace: Namespace
    bridge: int
    address: IPv4Interface
    address6: IPv6Interface
    dataplane: Namespace
    data_bridge: int
    tunnel_address: IPv4Interface
    port: str


class Owner(Protocol):
    """What an Outside asks of the host (or lab) it belongs to: its lock, and whether it is open."""

    @property
    def lock(self) -> threading.RLock: ...

    def check_open(self) -> None: ...


class Outside(InNamespace):
    """The "internet" of an isolated host: a namespace linked to the host's uplink."""

    name = "outside"

    def __init__(self, namespace: Namespace, processes: Processes, services: Owner) -> None:
        self.namespace = namespace
        #: its addresses on the uplink, with their prefix (as ``host.address``)
        self.address: IPv4Interface = OUTSIDE_ADDRESS
        self.address6: IPv6Interface = OUTSIDE_ADDRESS6
        self._processes = processes
        self._services = services  # type: ignore[assignment]  # a host's Services, or a lab's Owner

    def _check_open(self) -> None:
        self._services.check_open()

    def __repr__(self) -> str:
        return f"<Outside {self.namespace.name} {self.address.ip}>"


def make_namespaces(
    kernel: Kernel, token: str, name: str | None, label: str, undo: UndoLog, *, outside: bool = True
) -> tuple[Namespace, Namespace | None]:
    """The host's namespace and (unless not *outside*: a lab's host uses the
    lab's) the outside's, each with its undo step on *undo*.

    Both start with IPv6 off for the interfaces to come. Every interface cnm
    configures without an IPv6 address is told to make none (see
    :meth:`cnm.kernel.Rtnl.configure_link`), but IPv6 would still give
    each host end of a veth a multicast route: the host's IPv6 routing table
    would grow with the number of sandboxes, and the kernel walks all of it
    on every link change (O(N^2) for N sandboxes, measured; see the docs'
    explanation page). A bridge of a network with IPv6 turns it on for
    itself. Sandboxes don't get this: a path under /proc/sys/net costs a
    look-up that grows with the number of namespaces on the machine, and a
    sandbox has one interface per network.
    """
    host_ns, socket = kernel.create_namespace(f"cnm-{token}-host" + (f"-{name}" if name else ""), ipv6_off=True)
    socket.close()
    undo.push(f"host {label!r}: namespace", lambda: host_ns.delete())
    if not outside:
        return host_ns, None
    outside_ns, socket = kernel.create_namespace(f"cnm-{token}-outside", ipv6_off=True)
    socket.close()
    undo.push(f"host {label!r}: outside namespace", lambda: outside_ns.delete())
    return host_ns, outside_ns


def make_tunnels(kernel: Kernel, token: str, label: str, underlay: Underlay, undo: UndoLog) -> Namespace:
    """A lab host's tunnel namespace, with its undo step on *undo*: the data
    link in it, a port of the lab's data plane, addressed. The host's overlay
    networks make their VXLAN devices from there (see
    :mod:`cnm.drivers.overlay`), so that the tunnels' sockets, and the only
    route to the other hosts' tunnel ends, are there and nowhere else."""
    tunnels, socket = kernel.create_namespace(f"cnm-{token}-tunnels", ipv6_off=True)
    try:
        undo.push(f"host {label!r}: tunnel namespace", lambda: tunnels.delete())
        _port, end = kernel.inside(
            underlay.dataplane,
            lambda plane: plane.add_veth(
                underlay.port, mac=random_mac(), alias=f"cnm:{token}:dataplane", master=underlay.data_bridge,
                peer_name=DATA_LINK, peer_namespace=tunnels,
            ),
        )  # goes with the tunnel namespace (a veth pair goes with either end)
        socket.configure_link(DATA_LINK, [underlay.tunnel_address], [], f"host {label!r}: data link", index=end)
    finally:
        socket.close()
    return tunnels


def wire_uplink(services: Services, outside: Outside, underlay: Underlay | None = None) -> None:
    """The veth between the host and its outside, addressed, with the host's default route.

    Both ends live in namespaces the host deletes: no undo step of their own.
    With *underlay*, the outside's end is a port of the lab's bridge instead,
    and goes with the host's namespace (a veth pair goes with either end).
    """
    if underlay is not None:
        _wire_to_underlay(services, underlay)
        return
    label = services.name
    rtnl = services.rtnl
    uplink, outside_end = rtnl.add_veth(
        UPLINK,
        mac=random_mac(),
        alias=f"cnm:{services.token}:uplink",
        master=None,
        peer_name=UPLINK,
        peer_namespace=outside.namespace,
    )
    # Both ends carry IPv6 too (the namespaces start with it off, see
    # make_namespaces): once per host, so that networks with IPv6 reach the
    # outside; networks without it add nothing of IPv6 to the kernel.
    services.namespace.write_sysctl(f"net/ipv6/conf/{UPLINK}/disable_ipv6", "0")
    defaults = [Route.default(OUTSIDE_ADDRESS.ip), Route.default(OUTSIDE_ADDRESS6.ip)]
    rtnl.configure_link(UPLINK, [HOST_ADDRESS, HOST_ADDRESS6], defaults, f"host {label!r}: uplink", index=uplink)
    outside.namespace.write_sysctl(f"net/ipv6/conf/{UPLINK}/disable_ipv6", "0")
    services.kernel.inside(
        outside.namespace,
        lambda outside_rtnl: outside_rtnl.configure_link(
            UPLINK, [OUTSIDE_ADDRESS, OUTSIDE_ADDRESS6], [], "outside: uplink", index=outside_end
        ),
    )
    services.forwarding_always_on()



def _wire_to_underlay(services: Services, underlay: Underlay) -> None:
    """The host's uplink as a port of the lab's bridge, made from the lab's side (its end enslaved as it is made)."""
    port, host_end = services.kernel.inside(
        underlay.namespace,
        lambda lab: lab.add_veth(
            f"up-{services.token}",
            mac=random_mac(),
            alias=f"cnm:{services.token}:uplink",
            master=underlay.bridge,
            peer_name=UPLINK,
            peer_namespace=services.namespace,
        ),
    )
    services.namespace.write_sysctl(f"net/ipv6/conf/{UPLINK}/disable_ipv6", "0")
    defaults = [Route.default(OUTSIDE_ADDRESS.ip), Route.default(OUTSIDE_ADDRESS6.ip)]
    services.rtnl.configure_link(
        UPLINK, [underlay.address, underlay.address6], defaults, f"host {services.name!r}: uplink", index=host_end
    )
    services.forwarding_always_on()
