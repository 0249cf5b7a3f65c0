"""Network drivers: the contract, the value types they receive and return, and the registry.

A driver turns a network description into kernel objects in the host
namespace, and gives sandboxes an interface on that network. It has three
methods and no delete: every change a driver makes registers its own inverse
on the :class:`~cnm.undo.UndoLog` it is given, and cnm deletes a network or
makes an endpoint leave by unwinding that log. A driver therefore never writes
its cleanup twice, and a failure halfway through ``create_network`` or
``join`` is rolled back by the same steps that a later delete would run.

Contract:

``capabilities``
    A :class:`Capabilities`: the address families the driver carries and
    whether the host routes for its networks (then the firewall applies:
    outbound NAT, isolation, published ports).

``validate(spec)``
    Check ``spec.options`` (and anything else driver-specific) and raise
    :class:`~cnm.errors.InvalidArgumentError` naming the network and the bad
    option. Called before any kernel change; must not touch the kernel.

``create_network(host, spec, undo) -> NetworkPlumbing``
    Build the network in the host namespace through ``host`` (a
    :class:`~cnm.kernel.Rtnl`), push one undo step per change, and return the
    :class:`NetworkPlumbing` that later ``join`` calls and the firewall need.

``join(host, network, endpoint, sandbox, undo) -> SandboxLink``
    Make the link that puts ``sandbox`` on this network, its end inside the
    sandbox named ``endpoint.interface`` (with ``endpoint.mac``), and
    **return** what that end needs as a :class:`SandboxLink`: its addresses
    (normally ``endpoint.addresses``), extra routes, and the default-route
    candidates (gateways, at most one per family). cnm brings the interface
    up, addresses it, adds the routes, and elects which of a sandbox's
    endpoints gives the default route of each family. Any kind of link is made
    with the public verb :meth:`cnm.kernel.Rtnl.add_link` (the veth has a fast
    path of its own, :meth:`~cnm.kernel.Rtnl.add_veth`). A link with an end in
    the sandbox is undone with ``sandbox.release_link(index, what, inside=...)``:
    for a veth (the host end's index) the sandbox knows whether its namespace
    is about to disappear (taking the link with it, which is ~50x cheaper
    than deleting the link) or not; a link made inside on a host interface
    (macvlan, ipvlan: its index in the sandbox, ``inside=True``) is deleted
    at once either way, so that its address leaves the parent's wire.

``share_pools(network, pools, books) -> pools`` (drivers whose ``capabilities.spans_hosts`` only)
    A network that spans hosts has one network object per host, each with
    its own address pools; cnm hands them to the driver when the network is
    made (before any kernel change) and uses the pools it returns, through
    which an address stays unique across the hosts (see :class:`SpanningDriver`).

Third-party drivers register under the entry-point group ``cnm.drivers`` (the
entry point names a zero-argument factory); they subclass nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from ipaddress import ip_interface
from typing import Protocol, runtime_checkable

import attrs

from .._ip import IPAddress, IPInterface, IPNetwork
from .._plugins import Registry
from ..ipam import AddressPool
from ..kernel import Link, Peer, Route, Rtnl
from ..netns import Namespace
from ..undo import UndoLog

__all__ = [
    "DRIVERS",
    "Capabilities",
    "EndpointSpec",
    "Link",
    "NetworkDriver",
    "NetworkPlumbing",
    "NetworkSpec",
    "Peer",
    "Route",
    "SandboxLink",
    "SandboxPort",
    "SpanningDriver",
    "network_driver",
]


@attrs.frozen
class Capabilities:
    """What a driver can do, declared by the driver."""

    #: the address families its networks can carry (4, 6)
    families: frozenset[int] = frozenset({4})
    #: the host routes (and NATs) for its networks, so the firewall applies
    #: and ports can be published; False for drivers whose sandboxes sit on
    #: another network directly (macvlan, ipvlan)
    routed: bool = True
    #: its networks span hosts (overlay): closing a host deletes them one by
    #: one, so that the other hosts hear of it, instead of letting them go
    #: with the host's namespace; the driver is a :class:`SpanningDriver`
    spans_hosts: bool = False
    #: the UDP port its tunnels arrive on, kept from being published while
    #: any of its networks is on the host (a published port's DNAT would hand
    #: the tunnels' traffic to a sandbox)
    tunnel_port: int | None = None


@attrs.frozen
class NetworkSpec:
    """A validated network description, as a driver receives it."""

    name: str
    id: str
    #: one subnet per family of the network (IPv4 first)
    subnets: tuple[IPNetwork, ...]
    #: the gateway of each subnet, in the same order
    gateways: tuple[IPAddress, ...]
    internal: bool
    options: Mapping[str, str]
    #: the owning host's token; drivers mark what they create with it so a
    #: later process can find what a crashed one left (interface alias).
    owner: str

    def interfaces(self) -> tuple[IPInterface, ...]:
        """Each gateway with its subnet's prefix length (what a bridge carries)."""
        return tuple(ip_interface(f"{g}/{s.prefixlen}") for s, g in zip(self.subnets, self.gateways))


@attrs.frozen
class EndpointSpec:
    """One endpoint to attach, as a driver receives it."""

    name: str
    id: str
    #: one address per family of the network
    addresses: tuple[IPInterface, ...]
    mac: str
    #: interface name inside the sandbox (eth0, eth1, ...)
    interface: str


@attrs.frozen
class SandboxLink:
    """What a join gives the sandbox end; cnm applies it (see the contract)."""

    #: the interface's name inside the sandbox
    interface: str
    #: its index inside the sandbox, when the driver knows it (saves a look-up)
    index: int | None
    addresses: tuple[IPInterface, ...]
    #: routes besides the default routes
    routes: tuple[Route, ...] = ()
    #: next hops for the default route, at most one per family; empty for an
    #: internal network. A via of None is a default route on the link itself
    #: (ipvlan l3): give it as ``Route`` in *routes* instead.
    gateways: tuple[IPAddress, ...] = ()


@attrs.frozen
class NetworkPlumbing:
    """What a driver built for a network and hands back to cnm."""

    #: the host-side interface the subnet lives on (the bridge)
    interface: str
    index: int
    #: the owning host's token (see NetworkSpec.owner), for marking endpoints' links
    owner: str
    mtu: int | None = None
    #: what the driver's joins offer as default-route next hops (one per family)
    gateways: tuple[IPAddress, ...] = ()
    #: the driver's mode of the network, for its joins (macvlan_mode, ipvlan_mode)
    mode: str = ""


class SandboxPort(Protocol):
    """The part of a sandbox a driver may use."""

    @property
    def namespace(self) -> Namespace:
        """The sandbox's namespace: a link's end is put there."""

    def release_link(self, index: int, what: str, *, inside: bool = False) -> None:
        """Undo step for a link with one end in the sandbox: *index* is the
        host-side end's (a veth), or with *inside* the link's own index in the
        sandbox (a macvlan made there)."""


class NetworkDriver(Protocol):
    """A network driver; see the module documentation for the contract."""

    name: str
    capabilities: Capabilities

    def validate(self, spec: NetworkSpec) -> None: ...

    def create_network(self, host: Rtnl, spec: NetworkSpec, undo: UndoLog) -> NetworkPlumbing: ...

    def join(
        self, host: Rtnl, network: NetworkPlumbing, endpoint: EndpointSpec, sandbox: SandboxPort, undo: UndoLog
    ) -> SandboxLink: ...


@runtime_checkable
class SpanningDriver(NetworkDriver, Protocol):
    """A driver whose networks span hosts (``capabilities.spans_hosts``)."""

    def share_pools(self, network: str, pools: Mapping[int, AddressPool], books: UndoLog) -> dict[int, AddressPool]:
        """The pools network *network* of this host is to use instead of *pools* (by family).

        Through them an address is unique across every host of the network:
        a static one another host holds (or has in its ``ip_range``) is
        refused with :class:`~cnm.errors.ConflictError`, and none is handed
        out that another host holds. Called before any kernel change;
        whatever it records for the network is undone on *books*.
        """
        ...


def _builtin() -> dict[str, Callable[[], NetworkDriver]]:
    from .bridge import BridgeDriver
    from .ipvlan import IpvlanDriver
    from .macvlan import MacvlanDriver
    from .predefined import HostDriver, NullDriver

    return {
        "bridge": BridgeDriver,
        "host": HostDriver,
        "ipvlan": IpvlanDriver,
        "macvlan": MacvlanDriver,
        "null": NullDriver,
    }


#: The network drivers by name (zero-argument factories): the built-ins, then
#: the ``cnm.drivers`` entry points (see :class:`cnm._plugins.Registry`).
DRIVERS: Registry[Callable[[], NetworkDriver]] = Registry("network driver", "cnm.drivers", _builtin)


def network_driver(name: str) -> NetworkDriver:
    """A new instance of the driver called *name* (see :data:`DRIVERS`).

    Raises :class:`~cnm.errors.NotFoundError` naming the known drivers.
    """
    return DRIVERS.lookup(name)()
