"""Endpoints: an address (and published ports) on a network, joined to at most one sandbox."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from typing import TYPE_CHECKING, Any

from .._checks import check_mac, check_name
from ..errors import ClosedError, ConflictError, InvalidArgumentError, StateError
from ..ipam import parse_address
from .._ip import IPAddress, IPInterface, family_name
from ..kernel import mac_for, random_mac
from ..ports import PortMapping, PublishedPort, normalize_ports
from ..undo import Undo, raise_collected, transaction
from . import join as joining
from . import modes, routing, views
from ._common import new_id
from ._records import EndpointRecord, NetworkRecord, SandboxRecord
from ._services import Services, serialized

if TYPE_CHECKING:
    from .network import Network
    from .sandbox import Sandbox

__all__ = ["Endpoint", "create", "disconnect", "join", "teardown"]


class Endpoint:
    """An address (and published ports) on a network, joined to at most one sandbox."""

    def __init__(self, services: Services, network: Network, record: EndpointRecord) -> None:
        self._services = services
        self._record = record
        self.network = network
        self.name = record.name
        self.id = record.id
        self.mac = record.mac
        self.ports = record.ports

    def __repr__(self) -> str:
        if self._record.deleted:
            return f"<Endpoint {self.name!r} on {self.network.name!r} deleted>"
        sandbox = self._record.sandbox
        where = f" in {sandbox.name!r}" if sandbox is not None and self._record.joined else ""
        return f"<Endpoint {self.name!r} {' '.join(map(str, self.addresses))} on {self.network.name!r}{where}>"

    @property
    def addresses(self) -> tuple[IPInterface, ...]:
        """Its addresses, one per family of its network (IPv4 first)."""
        return self._record.addresses

    @property
    def address(self) -> IPv4Interface | None:
        """Its IPv4 address (None on an IPv6-only network)."""
        address = self._record.address(4)
        return address if isinstance(address, IPv4Interface) else None

    @property
    def address6(self) -> IPv6Interface | None:
        """Its IPv6 address (None on a network without IPv6)."""
        address = self._record.address(6)
        return address if isinstance(address, IPv6Interface) else None

    @property
    def ip(self) -> IPv4Address | None:
        return self.address.ip if self.address is not None else None

    @property
    def ip6(self) -> IPv6Address | None:
        return self.address6.ip if self.address6 is not None else None

    @property
    def published(self) -> list[PublishedPort]:
        return list(self._record.published)

    @property
    def sandbox(self) -> Sandbox | None:
        record = self._record
        return record.sandbox.handle if record.sandbox is not None and record.joined else None

    @property
    def interface(self) -> str | None:
        return self._record.interface if self._record.joined else None

    @serialized
    def join(self, sandbox: Sandbox) -> None:
        """Attach this endpoint to *sandbox*: interface, addresses, routes, published ports."""
        self._check_open()
        modes.check_not_predefined(self._record.network, "be joined")
        target = self._services.live_sandbox(f"endpoint {self.name!r}: join", sandbox)
        join(self._services, self._record, target)

    @serialized
    def leave(self) -> None:
        """Detach from the sandbox: the interface and published ports go; the address stays.

        If this endpoint gave the sandbox its default route, the next network
        that can (not internal) gives it instead, as in Docker.
        """
        modes.check_not_predefined(self._record.network, "be left")
        if self._record.sandbox is None and not len(self._record.join):
            raise StateError(f"endpoint {self.name!r} is not joined to a sandbox")
        raise_collected(f"endpoint {self.name!r}: leave", leave(self._services, self._record))

    @serialized
    def delete(self) -> None:
        """Leave (if joined) and release the address; idempotent.

        After a failed step, calling it again retries what is left; the
        address stays reserved until the interface is really gone.
        """
        if not self._record.deleted:
            modes.check_not_predefined(self._record.network, "be deleted")
        raise_collected(f"endpoint {self.name!r}", teardown(self._services, self._record))

    @serialized
    def settings(self) -> dict[str, Any]:
        """This endpoint in the shape of Docker's EndpointSettings."""
        return views.endpoint_settings(self._record)

    def _check_open(self) -> None:
        if self._record.deleted:
            raise ClosedError(f"endpoint {self.name!r} was deleted")
        if self._record.network.deleted:
            raise ClosedError(f"network {self.network.name!r} was deleted")
        self._services.check_open()

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()


def create(
    services: Services,
    network: NetworkRecord,
    name: str,
    *,
    ip: str | IPv4Address | None = None,
    ip6: str | IPv6Address | None = None,
    mac: str | None = None,
    ports: Iterable[str | PortMapping] = (),
) -> EndpointRecord:
    """An endpoint with an address from each of the network's pools, not yet joined."""
    modes.check_not_predefined(network, "have endpoints made")
    check_name("endpoint", name)
    if name in network.endpoints:
        raise ConflictError(f"network {network.name!r}: an endpoint named {name!r} already exists")
    mappings = normalize_ports(ports, owner=f"endpoint {name!r}")
    if mappings and network.rules is None:
        raise InvalidArgumentError(
            f"endpoint {name!r}: network {network.name!r} ({network.driver.name}) cannot publish ports"
        )
    if mappings and network.spec.internal:
        raise InvalidArgumentError(f"endpoint {name!r}: network {network.name!r} is internal; ports cannot be published")
    wanted: dict[int, IPAddress | None] = {}
    for family, what, value in ((4, "ip", ip), (6, "ip6", ip6)):
        pool = network.pools.get(family)
        if pool is None:
            if value is not None:
                raise InvalidArgumentError(f"endpoint {name!r}: network {network.name!r} has no {family_name(family)} ({what})")
            continue
        wanted[family] = parse_address(network.name, what, value, family=pool.subnet)
    mac = check_mac(f"endpoint {name!r}", mac)
    dying = services.dying
    with transaction() as undo:
        addresses: list[IPInterface] = []
        for family, address in wanted.items():
            pool = network.pools[family]
            allocated = dying.retrying(lambda: pool.allocate(address))
            undo.books.push(
                f"endpoint {name!r}: its IPv{family} address",
                lambda pool=pool, allocated=allocated: dying.release(lambda: pool.release(allocated)),  # type: ignore[misc]
            )
            interface = IPv4Interface if allocated.version == 4 else IPv6Interface
            addresses.append(interface((allocated, pool.subnet.prefixlen)))
        v4 = next((a.ip for a in addresses if isinstance(a, IPv4Interface)), None)
        record = EndpointRecord(
            handle=None,  # type: ignore[arg-type]  # set just below: the handle needs its record
            network=network,
            name=name,
            id=new_id(),
            addresses=tuple(addresses),
            # Docker derives the MAC from the IPv4 address; without one it draws one.
            mac=mac or (mac_for(v4) if v4 is not None else random_mac()),
            ports=mappings,
            static=frozenset(f for f, a in wanted.items() if a is not None),
            undo=undo,
        )
        record.handle = Endpoint(services, network.handle, record)
        network.endpoints[name] = record
        undo.books.push(f"forget endpoint {name!r}", lambda: network.endpoints.pop(name, None))
    return record


def join(services: Services, endpoint: EndpointRecord, sandbox: SandboxRecord) -> None:
    """The single path of the join protocol (:mod:`cnm.api.join`)."""
    network = endpoint.network
    if endpoint.sandbox is not None and endpoint.joined:
        raise StateError(f"endpoint {endpoint.name!r} is already joined to sandbox {endpoint.sandbox.name!r}")
    modes.check_own_stack(sandbox, f"join network {network.name!r}")
    # What an earlier failed join could not roll back is cleaned up first.
    raise_collected(f"endpoint {endpoint.name!r}: cleaning up an earlier join", endpoint.join.unwind())
    for other in sandbox.endpoints:
        if other.network is network:
            raise ConflictError(
                f"endpoint {endpoint.name!r}: sandbox {sandbox.name!r} is already connected to network {network.name!r}"
            )
    check_host_addresses(services, endpoint)
    # Its address must not meet its old interface on the bridge.
    raise_collected(f"endpoint {endpoint.name!r}: waiting for its old interface", services.dying.outlive(endpoint.old_links))

    def keep(leftover: Undo) -> None:
        endpoint.join = leftover

    with transaction(keep=keep) as undo:
        sockets = joining.held_by_host(services, endpoint.ports, [a.version for a in endpoint.addresses])
        step = joining.prepare(services, endpoint, sandbox, undo, sockets)
        joining.plumb(services, services.rtnl, step)
        joining.publish(services, [step])
        joining.commit(step)
    endpoint.join = undo


def leave(services: Services, endpoint: EndpointRecord) -> list[Exception]:
    sandbox, gave = endpoint.sandbox, set(endpoint.routes_given)
    failures = endpoint.join.unwind()
    if not failures and gave and sandbox is not None and sandbox.dying_links is None:
        failures += routing.reelect(services.kernel, sandbox, gave)
    return failures


def abandon(endpoint: EndpointRecord) -> None:
    """Forget the undo steps: everything they would undo is gone with its namespaces."""
    endpoint.undo, endpoint.join, endpoint.deleted = Undo(), Undo(), True
    endpoint.sandbox, endpoint.interface, endpoint.published, endpoint.joined = None, None, [], False
    endpoint.routes_given.clear()


def teardown(services: Services, endpoint: EndpointRecord) -> list[Exception]:
    endpoint.deleted = True
    failures = leave(services, endpoint)
    if failures:
        return failures  # the address stays reserved while its interface may be there
    # Its last interface may have gone with a namespace the kernel is still dismantling.
    dying = services.dying
    with dying.holding(dying.pending(endpoint.old_links)):
        return endpoint.undo.unwind()


def disconnect(services: Services, endpoint: EndpointRecord) -> list[Exception]:
    """Leave (and, for an endpoint made by connect, delete); return the failures."""
    return teardown(services, endpoint) if endpoint.owned_by_connection else leave(services, endpoint)


def check_host_addresses(services: Services, endpoint: EndpointRecord) -> None:
    """A port published on one host address needs that address on the host (Docker fails at bind)."""
    wanted = {m.host_ip for m in endpoint.ports if m.host_ip is not None and not m.host_ip.is_unspecified}
    if not wanted:
        return
    local = {iface.ip for _, iface in services.rtnl.addresses(None)}
    for ip in sorted(wanted - local, key=str):
        raise InvalidArgumentError(f"endpoint {endpoint.name!r}: cannot publish on {ip}: no such address on the host")
