"""Networks: made by a driver on a host (``host.create_network``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TYPE_CHECKING, Any, TypeVar

from .._checks import check_collection, check_flag, check_name, check_text, describe, string_map
from .._ip import Family, IPAddress, IPNetwork, family_name
from ..drivers import NetworkSpec, SpanningDriver
from ..errors import ClosedError, ConflictError, InvalidArgumentError, NotFoundError, StateError
from ..firewall import NetworkRules
from ..ipam import AddressPool, ipam_driver, parse_address, parse_subnet
from ..ports import PortMapping
from ..undo import Undo, raise_collected, transaction
from . import endpoint as endpoints
from . import modes, views
from ._common import new_id, now
from ._records import NetworkRecord
from ._services import Services, serialized

if TYPE_CHECKING:
    from .endpoint import Endpoint
    from .host import Host
    from .sandbox import Sandbox

__all__ = ["AddressArgument", "Network", "abandon", "create", "teardown"]

T = TypeVar("T")


class Network:
    """A network made by a driver on a host (``host.create_network``)."""

    def __init__(self, services: Services, host: Host, record: NetworkRecord) -> None:
        self._services = services
        self._record = record
        self.name = record.name
        self.id = record.spec.id
        self.created = record.created

    @property
    def host(self) -> Host:
        # Through the services' weak reference: a host's own networks
        # (the predefined ones) must not keep it alive (see cnm.leftovers).
        return self._services.host

    def __repr__(self) -> str:
        # The predefined networks have no subnet and no interface: their driver says what they are.
        parts = [repr(self.name), f"({self.driver})", *map(str, self.subnets)]
        if self._record.deleted:
            parts.append("deleted")  # (its interface is gone)
        elif self.interface:
            parts.append(f"on {self.interface}")
        return f"<Network {' '.join(parts)}>"

    @property
    def driver(self) -> str:
        return self._record.driver.name

    @property
    def subnets(self) -> tuple[IPNetwork, ...]:
        """The network's subnets, one per family (IPv4 first)."""
        return self._record.subnets

    @property
    def subnet(self) -> IPv4Network | None:
        """The IPv4 subnet (None on an IPv6-only network)."""
        return self._pool_field(4, "subnet")  # type: ignore[no-any-return]

    @property
    def gateway(self) -> IPv4Address | None:
        return self._pool_field(4, "gateway")  # type: ignore[no-any-return]

    @property
    def ip_range(self) -> IPv4Network | None:
        return self._pool_field(4, "ip_range")  # type: ignore[no-any-return]

    @property
    def subnet6(self) -> IPv6Network | None:
        """The IPv6 subnet (None on a network without IPv6)."""
        return self._pool_field(6, "subnet")  # type: ignore[no-any-return]

    @property
    def gateway6(self) -> IPv6Address | None:
        return self._pool_field(6, "gateway")  # type: ignore[no-any-return]

    @property
    def ip_range6(self) -> IPv6Network | None:
        return self._pool_field(6, "ip_range")  # type: ignore[no-any-return]

    def _pool_field(self, family: int, field: str) -> Any:
        """*field* of the pool of *family*, or None when the network has no such family."""
        pool = self._record.pools.get(family)
        return getattr(pool, field) if pool is not None else None

    @property
    def ipv6(self) -> bool:
        return 6 in self._record.pools

    @property
    def internal(self) -> bool:
        return self._record.spec.internal

    @property
    def interface(self) -> str:
        """The host-side interface of this network (the bridge)."""
        return self._record.plumbing.interface

    @property
    @serialized
    def endpoints(self) -> list[Endpoint]:
        return [e.handle for e in self._record.endpoints.values()]

    def endpoint(self, name: str) -> Endpoint:
        check_text(f"network {self.name!r}", "endpoint name", name)
        try:
            return self._record.endpoints[name].handle
        except KeyError:
            raise NotFoundError(f"network {self.name!r}: no endpoint named {name!r}") from None

    # ---- endpoints ---------------------------------------------------------------

    @serialized
    def create_endpoint(
        self,
        name: str,
        *,
        ip: str | IPv4Address | None = None,
        ip6: str | IPv6Address | None = None,
        mac: str | None = None,
        ports: Iterable[str | PortMapping] = (),
    ) -> Endpoint:
        """An endpoint with an address of each of this network's families, not yet joined.

        *ip* and *ip6* ask for given addresses (Docker's ``--ip`` and ``--ip6``).
        """
        self._check_open()
        return endpoints.create(self._services, self._record, name, ip=ip, ip6=ip6, mac=mac, ports=ports).handle

    @serialized
    def connect(
        self,
        sandbox: Sandbox,
        *,
        ip: str | IPv4Address | None = None,
        ip6: str | IPv6Address | None = None,
        mac: str | None = None,
        ports: Iterable[str | PortMapping] = (),
        name: str | None = None,
    ) -> Endpoint:
        """Create an endpoint and join *sandbox* to it (``docker network connect``).

        The endpoint belongs to the connection: ``disconnect`` and deleting the
        sandbox delete it. *ports* are published on the host (``docker run
        -p``); a host port that is published already, or that a socket of the
        host's own holds (a TCP listener or a bound UDP socket, as ``bind``
        would see it), is a :class:`~cnm.errors.ConflictError`, raised before
        any change (see the explanation page for a host process that binds a
        published port later).
        """
        self._check_open()
        modes.check_not_predefined(self._record, "be connected to")
        services = self._services
        target = services.live_sandbox(f"network {self.name!r}: connect", sandbox)
        modes.check_own_stack(target, f"join network {self.name!r}")
        with transaction(keep=services.keep) as undo:
            record = endpoints.create(
                services, self._record, sandbox.name if name is None else name, ip=ip, ip6=ip6, mac=mac, ports=ports
            )
            undo.books.push(f"endpoint {record.name!r}", lambda: raise_collected(record.name, endpoints.teardown(services, record)))
            endpoints.join(services, record, target)
        record.owned_by_connection = True
        return record.handle

    @serialized
    def disconnect(self, sandbox: Sandbox) -> None:
        """Make *sandbox* leave this network (``docker network disconnect``)."""
        modes.check_not_predefined(self._record, "be disconnected from")
        target = self._services.sandbox(f"network {self.name!r}: disconnect", sandbox, gone=True)
        for record in self._record.endpoints.values():
            if target is not None and record.sandbox is target:
                raise_collected(f"endpoint {record.name!r}: disconnect", endpoints.disconnect(self._services, record))
                return
        raise NotFoundError(f"network {self.name!r}: sandbox {sandbox.name!r} is not connected")

    # ---- lifecycle ---------------------------------------------------------------

    @serialized
    def delete(self, *, force: bool = False) -> None:
        """Delete the network. With endpoints it refuses, unless *force* (then they go too).

        Idempotent; after a failed step, calling it again retries what is left.
        """
        check_flag(f"network {self.name!r}: delete", "force", force)
        record = self._record
        if not record.deleted:  # (closing the host deletes it, and then this does nothing)
            modes.check_not_predefined(record, "be deleted")
        if record.endpoints and not force and not record.deleted:
            names = ", ".join(sorted(record.endpoints))
            raise StateError(f"network {self.name!r} has active endpoints ({names}); disconnect them or use force=True")
        raise_collected(f"network {self.name!r}", teardown(self._services, record))

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete(force=True)

    def _check_open(self) -> None:
        if self._record.deleted:
            raise ClosedError(f"network {self.name!r} was deleted")
        self._services.check_open()

    @serialized
    def inspect(self) -> dict[str, Any]:
        """This network in the shape of ``docker network inspect``."""
        return views.network_inspect(self._record)


#: What ``subnet``, ``gateway`` and ``ip_range`` take: one value, or one per family.
AddressArgument = str | IPNetwork | IPAddress | Iterable[str | IPNetwork | IPAddress] | None


def create(
    services: Services,
    host: Host,
    name: str,
    driver: str,
    *,
    subnet: AddressArgument,
    gateway: AddressArgument,
    ip_range: AddressArgument,
    internal: bool,
    options: Mapping[str, str] | None,
    labels: Mapping[str, str] | None,
    ipam: str,
    ipv4: bool,
    ipv6: bool,
) -> NetworkRecord:
    """What ``host.create_network`` does; see there."""
    check_name("network", name)
    if name in services.networks:
        raise ConflictError(f"network {name!r}: a network with that name already exists")
    where = f"network {name!r}"
    check_flag(where, "internal", internal)
    families = _families(where, check_flag(where, "ipv4", ipv4), check_flag(where, "ipv6", ipv6))
    subnets: dict[int, IPNetwork] = _per_family(
        name, "subnet", subnet, families, lambda v, f: parse_subnet(name, v, family=f)
    )
    ranges: dict[int, IPNetwork] = _per_family(
        name, "ip_range", ip_range, families, lambda v, f: parse_subnet(name, v, what="ip_range", family=f)
    )
    gateways: dict[int, IPAddress] = _per_family(
        name, "gateway", gateway, families, lambda v, f: parse_address(name, "gateway", v, family=f)
    )
    options = string_map(f"{where}: options", options)
    labels = string_map(f"{where}: labels", labels)
    drv = services.driver(check_text(where, "driver", driver))
    missing = [f for f in families if f not in drv.capabilities.families]
    if missing:
        raise InvalidArgumentError(f"{where}: driver {drv.name!r} does not carry {family_name(missing[0])}")
    ipam_drv = ipam_driver(check_text(where, "ipam", ipam))
    in_use = [s for n in services.networks.values() for s in n.subnets]
    # The host routes what its routed networks carry, so their subnets must
    # be new to its routing table; a macvlan or ipvlan network's subnet is
    # normally the parent's own, already routed to the parent.
    if drv.capabilities.routed:
        in_use += services.rtnl.routes(4)
        if 6 in families:
            in_use += services.rtnl.routes(6)
    pools: dict[int, AddressPool] = {}
    for family in families:
        pools[family] = ipam_drv.request_pool(
            network=name,
            family=family,
            subnet=subnets.get(family),
            ip_range=ranges.get(family),
            gateway=gateways.get(family),
            in_use=in_use,
            seed=services.seed,
        )
    spec = NetworkSpec(
        name=name,
        id=new_id(),
        subnets=tuple(p.subnet for p in pools.values()),
        gateways=tuple(p.gateway for p in pools.values()),
        internal=internal,
        options=options,
        owner=services.token,
    )
    drv.validate(spec)
    spanning = drv.capabilities.spans_hosts
    if spanning and not isinstance(drv, SpanningDriver):
        raise InvalidArgumentError(f"{where}: driver {drv.name!r} spans hosts but has no share_pools")
    with transaction(keep=services.keep) as undo:
        if drv.capabilities.tunnel_port is not None:  # books only, before the kernel (a conflict changes nothing)
            services.hold_tunnel_port(drv.capabilities.tunnel_port, undo.books)
        if isinstance(drv, SpanningDriver) and spanning:  # books only: addresses unique across the hosts
            pools = drv.share_pools(name, pools, undo.books)
        # The driver first: what it can only check against the kernel (an
        # interface name already taken) then fails before anything changed.
        plumbing = drv.create_network(services.rtnl, spec, undo.kernel)
        if not internal:
            for family in families:
                services.use_forwarding(family, undo.kernel)
        rules = None
        if drv.capabilities.routed:
            rules = NetworkRules(name=name, bridge=plumbing.interface, subnets=spec.subnets, internal=internal)
            services.firewall.add_network(rules, undo.kernel)
        record = NetworkRecord(
            handle=None,  # type: ignore[arg-type]  # set just below: the handle needs its record
            spec=spec,
            driver=drv,
            ipam=ipam,
            pools=pools,
            plumbing=plumbing,
            rules=rules,
            labels=labels,
            created=now(),
        )
        record.handle = Network(services, host, record)
        services.adopt(services.networks, record, undo.books)
    record.undo = undo
    return record


def abandon(network: NetworkRecord) -> None:
    """Forget the undo steps: the host's namespace, and all of this network in it, is gone."""
    for endpoint in network.endpoints.values():
        endpoints.abandon(endpoint)
    network.endpoints.clear()
    network.undo, network.deleted = Undo(), True


def teardown(services: Services, network: NetworkRecord) -> list[Exception]:
    """Endpoints, then the network's own kernel objects; its name and
    subnet are given back only when all of that is gone."""
    network.deleted = True
    failures: list[Exception] = []
    for endpoint in reversed(list(network.endpoints.values())):
        failures += endpoints.teardown(services, endpoint)
    # Veths of deleted sandboxes may still be ports of the bridge: the
    # network goes with nothing of its own left in the kernel.
    failures += services.dying.wait()
    failures += network.undo.kernel.unwind()
    if not failures:
        failures += network.undo.books.unwind()
    return failures




def _families(where: str, ipv4: bool, ipv6: bool) -> tuple[Family, ...]:
    if not ipv4 and not ipv6:
        raise InvalidArgumentError(f"{where}: ipv4=False needs ipv6=True (a network needs an address family)")
    wanted: list[Family] = []
    if ipv4:
        wanted.append(4)
    if ipv6:
        wanted.append(6)
    return tuple(wanted)


def _per_family(
    name: str, what: str, value: object, families: tuple[Family, ...], parse: Callable[[Any, Family], T | None]
) -> dict[int, T]:
    """*value* (one, or an iterable of at most one per family) parsed, by family.

    A value of a family the network does not have is refused, saying how to have it.
    """
    if value is None:
        return {}
    kinds = "an IPv4Address or an IPv6Address" if what == "gateway" else "an IPv4Network or an IPv6Network"
    if isinstance(value, (str, *_IP_TYPES)):
        items: list[object] = [value]
    elif isinstance(value, (bytes, bytearray)) or not isinstance(value, Iterable):
        raise InvalidArgumentError(
            f"network {name!r}: {what} must be a string, {kinds} (or a list of one per family), not {describe(value)}"
        )
    else:
        items = list(check_collection(f"network {name!r}", what, value, f"strings or {kinds.replace('an ', '')}s"))
    found: dict[int, T] = {}
    for item in items:
        version = _version(name, what, item)
        if version not in families:
            fix = "ipv6=True enables it" if version == 6 else "it is made with ipv4=False"
            raise InvalidArgumentError(
                f"network {name!r}: {what} {str(item)!r} is {family_name(version)}, "
                f"but the network has no {family_name(version)} ({fix})"
            )
        if version in found:
            raise InvalidArgumentError(f"network {name!r}: more than one {family_name(version)} {what} given")
        parsed = parse(item, version)
        if parsed is not None:
            found[version] = parsed
    return found


_IP_TYPES = (IPv4Network, IPv6Network, IPv4Address, IPv6Address)


def _version(name: str, what: str, item: object) -> Family:
    """The family *item* is written in (the parsers check the rest)."""
    if isinstance(item, _IP_TYPES):
        return 6 if item.version == 6 else 4
    if isinstance(item, str):
        return 6 if ":" in item else 4
    kinds = "an IPv4Address or an IPv6Address" if what == "gateway" else "an IPv4Network or an IPv6Network"
    raise InvalidArgumentError(f"network {name!r}: {what} must be a string or {kinds}, not {describe(item)}")
