"""What a sandbox end gets: its interface configured, and one default route per family.

A driver returns a :class:`~cnm.drivers.SandboxLink` for each join; this
module applies it inside the sandbox (interface up, addresses, routes) and
elects, per address family, which of a sandbox's endpoints gives its default
route: the first joined endpoint that offers a gateway of that family, as in
Docker. When that endpoint leaves, the next one that offers one gives it.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import ip_network

from .._ip import IPAddress
from ..drivers import SandboxLink
from ..kernel import Rtnl
from ._records import EndpointRecord, SandboxRecord

__all__ = ["apply", "claim", "reelect"]


def claim(sandbox: SandboxRecord, candidates: Sequence[IPAddress]) -> dict[int, IPAddress]:
    """The default routes a new endpoint of *sandbox* gives, among its *candidates*:
    those of the families no joined endpoint gives yet."""
    given = {family for endpoint in sandbox.endpoints for family in endpoint.routes_given}
    chosen: dict[int, IPAddress] = {}
    for gateway in candidates:
        if gateway.version not in given and gateway.version not in chosen:
            chosen[gateway.version] = gateway
    return chosen


def apply(rtnl: Rtnl, link: SandboxLink, gateways: dict[int, IPAddress], what: str) -> None:
    """Configure the sandbox end of *link* through *rtnl*, a socket inside the
    sandbox: up, its addresses and routes, and the default routes through *gateways*."""
    address = link.addresses[0]
    rtnl.configure_interface(link.interface, address, gateways.get(4), what, index=link.index)  # type: ignore[arg-type]
    for route in link.routes:
        index = link.index if link.index is not None else rtnl.link_index(link.interface)
        rtnl.add_route(route.destination, route.via, f"{what}: route to {route.destination}", oif=index)  # type: ignore[arg-type]


def reelect(sandbox: SandboxRecord, gone: set[int]) -> list[Exception]:
    """After an endpoint that gave the default routes of the families *gone* left:
    give each of them to the first endpoint that offers a gateway of that family."""
    for family in sorted(gone):
        if any(family in e.routes_given for e in sandbox.endpoints):
            continue
        for endpoint in sandbox.endpoints:
            gateway = next((g for g in endpoint.gateways if g.version == family), None)
            if gateway is None or endpoint.interface is None:
                continue
            try:
                _add_default(sandbox, endpoint, gateway)
            except Exception as exc:  # noqa: BLE001 - reported with the leave
                return [exc]
            endpoint.routes_given.add(family)  # the route goes with its interface; leave resets the set
            break
    return []


def _add_default(sandbox: SandboxRecord, endpoint: EndpointRecord, gateway: IPAddress) -> None:
    interface = endpoint.interface
    assert interface is not None
    what = f"sandbox {sandbox.name!r}: default route"
    default = ip_network("0.0.0.0/0" if gateway.version == 4 else "::/0")

    def inside() -> None:
        with Rtnl(sandbox.namespace, here=True) as rtnl:
            rtnl.add_route(default, gateway, what, oif=rtnl.link_index(interface))  # type: ignore[arg-type]

    sandbox.namespace.quick(inside)
