"""The one join protocol: how an endpoint is attached to a sandbox.

Four steps, run in this order by the single path (:meth:`cnm.Endpoint.join`,
:meth:`cnm.Network.connect`) and by the bulk path
(:meth:`cnm.Host.create_sandboxes`) alike:

``prepare``
    the books: host ports reserved (none a host socket holds:
    :func:`held_by_host` asks the kernel once per call, however many joins), the interface name chosen, and the join
    recorded on both sides as in progress, so that a teardown of the sandbox
    (or the rollback of a bulk call) finds what to undo;
``plumb``
    the kernel: the network's driver makes the link and returns what the
    sandbox end needs; cnm configures it inside the sandbox and gives it the
    default routes it won (:mod:`cnm.api.routing`). Thread-safe given its own
    netlink socket, so the bulk path runs it while namespaces are being made;
``publish``
    the firewall: the endpoint's port forwards (batched over many joins);
``commit``
    the join is complete: the endpoint shows as joined.

Every step registers its inverse on the join's own undo log (the endpoint
record's ``join``), which ``leave()`` and the sandbox's teardown unwind.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import attrs

from .._ip import Family, IPAddress
from ..drivers import EndpointSpec, SandboxLink
from ..firewall import PortForward
from ..kernel import Rtnl
from ..port_books import HostSockets
from ..ports import PortMapping, PublishedPort
from ..netns import Namespace
from ..undo import Undo
from . import routing
from ._records import EndpointRecord, SandboxRecord
from ._services import Services

__all__ = ["Join", "SandboxEnd", "commit", "forwards", "held_by_host", "plumb", "prepare", "publish"]


class SandboxEnd:
    """The :class:`~cnm.drivers.SandboxPort` a driver sees of the sandbox it joins."""

    def __init__(self, services: Services, sandbox: SandboxRecord) -> None:
        self._services = services
        self._sandbox = sandbox

    @property
    def namespace(self) -> Namespace:
        return self._sandbox.namespace

    def release_link(self, index: int, what: str, *, inside: bool = False) -> None:
        dying = self._sandbox.dying_links
        if dying is not None and not inside:
            # The namespace is being deleted: the veth goes with it, and its
            # host end is watched until it has (see cnm.dying).
            dying.append(index)
            return
        if inside:
            # Even from a namespace being deleted: a link made on a host
            # interface (macvlan, ipvlan) would keep its address on the
            # parent's wire, and the parent promiscuous, until the kernel
            # dismantles the namespace later on; gone now, its address can
            # be given again at once.
            self._services.kernel.inside(self._sandbox.namespace, lambda rtnl: rtnl.delete_link(index, what))
        else:
            self._services.rtnl.delete_link(index, what)


@attrs.define(eq=False)
class Join:
    """One join in progress."""

    endpoint: EndpointRecord
    sandbox: SandboxRecord
    undo: Undo
    spec: EndpointSpec
    link: SandboxLink | None = None
    #: the default routes this endpoint gives the sandbox, by family
    routes: dict[int, IPAddress] = attrs.Factory(dict)


def held_by_host(services: Services, mappings: Iterable[PortMapping], families: Collection[int]) -> HostSockets | None:
    """What the host's own sockets hold that *mappings*, published on
    *families*, could clash with: one sock_diag dump per protocol and family
    (IPv4 needs IPv6's too, for dual-stack sockets on ``::``). None when
    nothing is published."""
    wanted = list(mappings)
    if not wanted:
        return None
    protocols = sorted({mapping.protocol for mapping in wanted})
    # Only the ports that may be published are asked for: the fixed ones,
    # and the ephemeral range if a port is to be picked.
    ends = [mapping.host_port for mapping in wanted if mapping.host_port is not None]
    if len(ends) < len(wanted):
        ends += services.ports.ephemeral_ports
    dumped: tuple[Family, ...] = (4, 6) if 4 in families else (6,)
    return HostSockets(services.sock_diag.holding(protocols, dumped, (min(ends), max(ends))))


def prepare(
    services: Services, endpoint: EndpointRecord, sandbox: SandboxRecord, undo: Undo, sockets: HostSockets | None
) -> Join:
    """The bookkeeping of a join: host ports (none that *sockets*, from
    :func:`held_by_host`, holds), interface name, the join recorded as in progress."""
    published: list[PublishedPort] = []
    if endpoint.ports:
        families = tuple(a.version for a in endpoint.addresses)
        published = services.dying.retrying(
            lambda: services.ports.reserve(endpoint.name, endpoint.ports, families=families, sockets=sockets)
        )
    endpoint.published = published

    def release() -> None:
        services.dying.release(lambda: services.ports.release(published))
        endpoint.published = []

    undo.books.push(f"endpoint {endpoint.name!r}: host ports", release)
    interface = sandbox.next_interface()
    endpoint.sandbox, endpoint.interface = sandbox, interface
    sandbox.endpoints.append(endpoint)

    def forget() -> None:
        sandbox.endpoints.remove(endpoint)
        endpoint.sandbox, endpoint.interface, endpoint.gateways, endpoint.joined = None, None, (), False
        endpoint.routes_given.clear()

    undo.books.push(f"endpoint {endpoint.name!r}: joined", forget)
    spec = EndpointSpec(
        name=endpoint.name, id=endpoint.id, addresses=endpoint.addresses, mac=endpoint.mac, interface=interface
    )
    return Join(endpoint, sandbox, undo, spec)


def plumb(services: Services, rtnl: Rtnl, join: Join) -> None:
    """The kernel side of a join: the driver's link, then the sandbox end configured.

    *rtnl* is a socket of the host's namespace (the bulk path's own, so
    that this may run beside the host's other work).
    """
    network = join.endpoint.network
    link = network.driver.join(rtnl, network.plumbing, join.spec, SandboxEnd(services, join.sandbox), join.undo.kernel)
    routes = routing.claim(join.sandbox, link.gateways)
    what = f"endpoint {join.endpoint.name!r}"
    socket = join.sandbox.socket
    if socket is not None:
        routing.apply(socket, link, routes, what)
    else:
        services.kernel.inside(join.sandbox.namespace, lambda sandbox_rtnl: routing.apply(sandbox_rtnl, link, routes, what))
    join.link, join.routes = link, routes


def forwards(endpoint: EndpointRecord) -> list[PortForward]:
    """The firewall's view of the endpoint's published ports: each to its address of the port's family."""
    found = []
    for port in endpoint.published:
        address = endpoint.address(port.family)
        assert address is not None  # the port book publishes only on the endpoint's families
        found.append(PortForward(port.protocol, port.host_ip, port.host_port, address.ip, port.container_port))
    return found


def publish(services: Services, joins: Sequence[Join]) -> None:
    """The port forwards of *joins* (all of one network), in one firewall transaction."""
    groups = [(forwards(j.endpoint), j.undo.kernel) for j in joins if j.endpoint.published]
    if not groups:
        return
    rules = joins[0].endpoint.network.rules
    assert rules is not None  # checked in create_endpoint
    if len(groups) == 1:
        services.firewall.add_port_forwards(rules, groups[0][0], groups[0][1])
    else:
        services.firewall.add_port_forwards_many(rules, groups)


def commit(join: Join) -> None:
    """The join is complete: the endpoint shows as joined, and its default
    routes count in the sandbox's next elections."""
    assert join.link is not None
    endpoint = join.endpoint
    endpoint.gateways = join.link.gateways
    endpoint.routes_given.update(join.routes)
    endpoint.joined = True
