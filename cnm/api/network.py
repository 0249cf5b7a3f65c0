"""Networks: made by a driver on a host (``host.create_network``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any

from .._checks import check_flag, check_name, check_text, string_map
from ..drivers import NetworkSpec, network_driver
from ..errors import ClosedError, ConflictError, NotFoundError, StateError
from ..firewall import NetworkRules
from ..ipam import ipam_driver, parse_address, parse_subnet
from ..ports import PortMapping
from ..undo import Undo, raise_collected, transaction
from . import endpoint as endpoints
from . import views
from ._common import new_id, now
from ._records import NetworkRecord
from ._services import Services, serialized

if TYPE_CHECKING:
    from .endpoint import Endpoint
    from .host import Host
    from .sandbox import Sandbox

__all__ = ["Network", "abandon", "create", "teardown"]


class Network:
    """A network made by a driver on a host (``host.create_network``)."""

    def __init__(self, services: Services, host: Host, record: NetworkRecord) -> None:
        self._services = services
        self._record = record
        self.host = host
        self.name = record.name
        self.id = record.spec.id
        self.created = record.created

    def __repr__(self) -> str:
        return f"<Network {self.name!r} {self.subnet} on {self.interface}>"

    @property
    def driver(self) -> str:
        return self._record.driver.name

    @property
    def subnet(self) -> IPv4Network:
        subnet = self._record.pools[4].subnet
        assert isinstance(subnet, IPv4Network)
        return subnet

    @property
    def gateway(self) -> IPv4Address:
        gateway = self._record.pools[4].gateway
        assert isinstance(gateway, IPv4Address)
        return gateway

    @property
    def ip_range(self) -> IPv4Network | None:
        ip_range = self._record.pools[4].ip_range
        assert ip_range is None or isinstance(ip_range, IPv4Network)
        return ip_range

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
        mac: str | None = None,
        ports: Iterable[str | PortMapping] = (),
    ) -> Endpoint:
        """An endpoint with an address from this network's pool, not yet joined."""
        self._check_open()
        return endpoints.create(self._services, self._record, name, ip=ip, mac=mac, ports=ports).handle

    @serialized
    def connect(
        self,
        sandbox: Sandbox,
        *,
        ip: str | IPv4Address | None = None,
        mac: str | None = None,
        ports: Iterable[str | PortMapping] = (),
        name: str | None = None,
    ) -> Endpoint:
        """Create an endpoint and join *sandbox* to it (``docker network connect``).

        The endpoint belongs to the connection: ``disconnect`` and deleting the
        sandbox delete it.
        """
        self._check_open()
        services = self._services
        target = services.live_sandbox(f"network {self.name!r}: connect", sandbox)
        with transaction(keep=services.keep) as undo:
            record = endpoints.create(
                services, self._record, sandbox.name if name is None else name, ip=ip, mac=mac, ports=ports
            )
            undo.books.push(f"endpoint {record.name!r}", lambda: raise_collected(record.name, endpoints.teardown(services, record)))
            endpoints.join(services, record, target)
        record.owned_by_connection = True
        return record.handle

    @serialized
    def disconnect(self, sandbox: Sandbox) -> None:
        """Make *sandbox* leave this network (``docker network disconnect``)."""
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


def create(
    services: Services,
    host: Host,
    name: str,
    driver: str,
    *,
    subnet: str | IPv4Network | None,
    gateway: str | IPv4Address | None,
    ip_range: str | IPv4Network | None,
    internal: bool,
    options: Mapping[str, str] | None,
    labels: Mapping[str, str] | None,
    ipam: str,
) -> NetworkRecord:
    """What ``host.create_network`` does; see there."""
    check_name("network", name)
    if name in services.networks:
        raise ConflictError(f"network {name!r}: a network with that name already exists")
    where = f"network {name!r}"
    check_flag(where, "internal", internal)
    options = string_map(f"{where}: options", options)
    labels = string_map(f"{where}: labels", labels)
    drv = network_driver(check_text(where, "driver", driver))
    ipam_drv = ipam_driver(check_text(where, "ipam", ipam))
    in_use = [s for n in services.networks.values() for s in n.subnets] + services.rtnl.routes()
    pool = ipam_drv.request_pool(
        network=name,
        family=4,
        subnet=parse_subnet(name, subnet, family=4),
        ip_range=parse_subnet(name, ip_range, what="ip_range", family=4),
        gateway=parse_address(name, "gateway", gateway, family=4),
        in_use=in_use,
        seed=services.token,
    )
    pools = {4: pool}
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
    with transaction(keep=services.keep) as undo:
        # The driver first: what it can only check against the kernel (an
        # interface name already taken) then fails before anything changed.
        plumbing = drv.create_network(services.rtnl, spec, undo.kernel)
        if not internal:
            services.use_forwarding(undo.kernel)
        rules = None
        if drv.capabilities.routed:
            rules = NetworkRules(name=name, bridge=plumbing.interface, subnet=pool.subnet, internal=internal)  # type: ignore[arg-type]  # until the firewall takes both families
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


