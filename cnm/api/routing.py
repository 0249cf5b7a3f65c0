"""What a sandbox end gets: its interface configured, and one default route per family.

A driver returns a :class:`~cnm.drivers.SandboxLink` for each join; this
module applies it inside the sandbox (interface up, addresses, routes) and
elects, per address family, which of a sandbox's endpoints gives its default
route: the first joined endpoint that offers a gateway of that family. When
that endpoint leaves, the next one that offers one gives it. (Docker orders
its candidates by the ``gw-priority`` of their connection, then by network
name, and elects again on every connect; cnm keeps join order and elects
only when the route's giver leaves, so a later connect never moves a
running sandbox's default route.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._ip import IPAddress
from ..drivers import SandboxLink
from ..kernel import Route, Rtnl
from ._records import EndpointRecord, SandboxRecord

if TYPE_CHECKING:
    from ..facade import Kernel

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
    # The driver's routes first: a gateway may be reachable only through one of them.
    routes = list(link.routes) + [Route.default(gateways[family]) for family in sorted(gateways)]
    rtnl.configure_link(link.interface, link.addresses, routes, what, index=link.index)


def reelect(kernel: Kernel, sandbox: SandboxRecord, gone: set[int]) -> list[Exception]:
    """After an endpoint that gave the default routes of the families *gone* left:
    give each of them to the first endpoint that offers a gateway of that family."""
    failures: list[Exception] = []
    for family in sorted(gone):
        if any(family in e.routes_given for e in sandbox.endpoints):
            continue
        for endpoint in sandbox.endpoints:
            gateway = next((g for g in endpoint.gateways if g.version == family), None)
            if gateway is None or endpoint.interface is None or not endpoint.joined:
                continue
            try:
                _add_default(kernel, sandbox, endpoint, gateway)
            except Exception as exc:  # noqa: BLE001 - reported with the leave; the other family still goes on
                failures.append(exc)
                break
            endpoint.routes_given.add(family)  # the route goes with its interface; leave resets the set
            break
    return failures


def _add_default(kernel: Kernel, sandbox: SandboxRecord, endpoint: EndpointRecord, gateway: IPAddress) -> None:
    interface = endpoint.interface
    assert interface is not None
    what = f"sandbox {sandbox.name!r}: default route"
    default = Route.default(gateway)

    def add(rtnl: Rtnl) -> None:
        rtnl.add_route(default.destination, gateway, what, oif=rtnl.link_index(interface))

    kernel.inside(sandbox.namespace, add)
