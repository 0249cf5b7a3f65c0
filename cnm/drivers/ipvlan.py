"""The ipvlan driver: sandboxes share a host interface's MAC address, each with addresses of its own.

Like Docker's ``ipvlan`` driver: ``-o parent=eth0`` (see
:mod:`cnm.drivers._parent`) and ``-o ipvlan_mode=l2`` (the default), ``l3``
or ``l3s``. In l2 mode the sandboxes sit on the parent's network as
macvlan ones do, but with the parent's MAC; their default route goes through
the network's gateway. In l3 and l3s modes the parent routes for them: there
is no gateway, and a sandbox's default route is the interface itself (as
Docker sets it). Needs the kernel's ``ipvlan`` module: without it, creating
the first sandbox's link raises :class:`~cnm.errors.MissingKernelFeatureError`
naming it.
"""

from __future__ import annotations

from ipaddress import ip_network

from .._ip import IPAddress
from ..kernel import Route, Rtnl
from ..undo import UndoLog
from . import EndpointSpec, NetworkPlumbing, SandboxLink, SandboxPort
from ._parent import OnParent

__all__ = ["IpvlanDriver"]

_DEFAULTS = {4: ip_network("0.0.0.0/0"), 6: ip_network("::/0")}


class IpvlanDriver(OnParent):
    name = "ipvlan"
    modes = ("l2", "l3", "l3s")

    def gateways(self, mode: str, offered: tuple[IPAddress, ...]) -> tuple[IPAddress, ...]:
        # In l3 modes the parent routes: no next hop to offer.
        return offered if mode == "l2" else ()

    def join(
        self, host: Rtnl, network: NetworkPlumbing, endpoint: EndpointSpec, sandbox: SandboxPort, undo: UndoLog
    ) -> SandboxLink:
        # The kernel gives an ipvlan its parent's MAC, whatever the request says.
        index = self.add_sandbox_link(host, network, endpoint, sandbox, undo, mac=None)
        routes: tuple[Route, ...] = ()
        if network.mode != "l2":
            # The default route is the interface itself (Docker's l3 mode), per family it has.
            routes = tuple(Route(_DEFAULTS[a.version]) for a in endpoint.addresses)
        return SandboxLink(endpoint.interface, index, endpoint.addresses, routes=routes, gateways=network.gateways)
