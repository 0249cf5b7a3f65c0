"""Network drivers: the contract, the value types they receive, and the registry.

A driver turns a network description into kernel objects in the host
namespace, and attaches endpoints of that network to sandboxes. It has three
methods and no delete: every change a driver makes registers its own inverse
on the :class:`~cnm.undo.UndoLog` it is given, and cnm deletes a network or
makes an endpoint leave by unwinding that log. A driver therefore never writes
its cleanup twice, and a failure halfway through ``create_network`` or
``join`` is rolled back by the same steps that a later delete would run.

Contract:

``validate(spec)``
    Check ``spec.options`` (and anything else driver-specific) and raise
    :class:`~cnm.errors.InvalidArgumentError` naming the network and the bad
    option. Called before any kernel change; must not touch the kernel.

``create_network(host, spec, undo) -> NetworkPlumbing``
    Build the network in the host namespace through ``host`` (a
    :class:`~cnm.kernel.Rtnl`), push one undo step per change, and return the
    :class:`NetworkPlumbing` that later ``join`` calls and the firewall need.

``join(host, network, endpoint, sandbox, undo)``
    Give ``sandbox`` an interface named ``endpoint.interface`` on this network
    with ``endpoint.address``, ``endpoint.mac`` and, when ``endpoint.gateway``
    is set, a default route through it. A link with one end inside the sandbox
    must be undone with ``sandbox.release_link(host, index, what)``: the
    sandbox knows whether its namespace is about to disappear (taking the link
    with it, which is ~50x cheaper than deleting the link) or not.

Third-party drivers register under the entry-point group ``cnm.drivers`` (the
entry point names a zero-argument factory); they subclass nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Protocol

import attrs

from .._plugins import Registry
from ..kernel import Rtnl
from ..netns import Namespace
from ..undo import UndoLog

__all__ = [
    "DRIVERS",
    "EndpointSpec",
    "NetworkDriver",
    "NetworkPlumbing",
    "NetworkSpec",
    "SandboxPort",
    "network_driver",
]


@attrs.frozen
class NetworkSpec:
    """A validated network description, as a driver receives it."""

    name: str
    id: str
    subnet: IPv4Network
    gateway: IPv4Address
    internal: bool
    options: Mapping[str, str]
    #: the owning host's token; drivers mark what they create with it so a
    #: later process can find what a crashed one left (interface alias).
    owner: str


@attrs.frozen
class EndpointSpec:
    """One endpoint to attach, as a driver receives it."""

    name: str
    id: str
    address: IPv4Interface
    mac: str
    #: interface name inside the sandbox (eth0, eth1, ...)
    interface: str
    #: the default route's next hop, or None when another network gives the route
    gateway: IPv4Address | None


@attrs.frozen
class NetworkPlumbing:
    """What a driver built for a network and hands back to cnm."""

    #: the host-side interface the subnet lives on (the bridge)
    interface: str
    index: int
    #: True when the host routes (and NATs) for this network, so the firewall applies
    routed: bool
    #: the owning host's token (see NetworkSpec.owner), for marking endpoints' links
    owner: str
    mtu: int | None = None


class SandboxPort(Protocol):
    """The part of a sandbox a driver may use."""

    namespace: Namespace

    def configure(
        self, interface: str, address: IPv4Interface, gateway: IPv4Address | None, what: str, *, index: int | None = None
    ) -> None:
        """Bring *interface* up inside the sandbox, address it and route through
        *gateway*. *index*, when the driver knows it, saves a look-up."""

    def release_link(self, host: Rtnl, index: int, what: str) -> None:
        """Undo step for a link (host-side *index*) with one end in the sandbox."""


class NetworkDriver(Protocol):
    """A network driver; see the module documentation for the contract."""

    name: str

    def validate(self, spec: NetworkSpec) -> None: ...

    def create_network(self, host: Rtnl, spec: NetworkSpec, undo: UndoLog) -> NetworkPlumbing: ...

    def join(
        self, host: Rtnl, network: NetworkPlumbing, endpoint: EndpointSpec, sandbox: SandboxPort, undo: UndoLog
    ) -> None: ...


def _builtin() -> dict[str, Callable[[], NetworkDriver]]:
    from .bridge import BridgeDriver

    return {"bridge": BridgeDriver}


#: The network drivers by name (zero-argument factories): the built-ins, then
#: the ``cnm.drivers`` entry points (see :class:`cnm._plugins.Registry`).
DRIVERS: Registry[Callable[[], NetworkDriver]] = Registry("network driver", "cnm.drivers", _builtin)


def network_driver(name: str) -> NetworkDriver:
    """A new instance of the driver called *name* (see :data:`DRIVERS`).

    Raises :class:`~cnm.errors.NotFoundError` naming the known drivers.
    """
    return DRIVERS.lookup(name)()
