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

from ..errors import InvalidArgumentError
from ..kernel import Route, Rtnl
from ..undo import UndoLog
from . import Capabilities, EndpointSpec, NetworkPlumbing, NetworkSpec, SandboxLink, SandboxPort
from ._parent import OPT_PARENT, check_parent, make_parent

__all__ = ["IpvlanDriver"]

OPT_MODE = "ipvlan_mode"
MODES = ("l2", "l3", "l3s")
_DEFAULTS = {4: ip_network("0.0.0.0/0"), 6: ip_network("::/0")}


class IpvlanDriver:
    name = "ipvlan"
    capabilities = Capabilities(families=frozenset({4, 6}), routed=False)

    def validate(self, spec: NetworkSpec) -> None:
        unknown = sorted(set(spec.options) - {OPT_PARENT, OPT_MODE})
        if unknown:
            raise InvalidArgumentError(
                f"network {spec.name!r}: unknown ipvlan option(s) {', '.join(unknown)} (known: {OPT_MODE}, {OPT_PARENT})"
            )
        mode = spec.options.get(OPT_MODE, "l2")
        if mode not in MODES:
            raise InvalidArgumentError(f"network {spec.name!r}: {OPT_MODE} {mode!r} is not one of {', '.join(MODES)}")
        check_parent(spec, self.name)

    def create_network(self, host: Rtnl, spec: NetworkSpec, undo: UndoLog) -> NetworkPlumbing:
        plumbing = make_parent(host, spec, self.name, undo)
        mode = spec.options.get(OPT_MODE, "l2")
        return NetworkPlumbing(
            interface=plumbing.interface,
            index=plumbing.index,
            owner=plumbing.owner,
            # In l3 modes the parent routes: no next hop to offer.
            gateways=plumbing.gateways if mode == "l2" else (),
            mode=mode,
        )

    def join(
        self, host: Rtnl, network: NetworkPlumbing, endpoint: EndpointSpec, sandbox: SandboxPort, undo: UndoLog
    ) -> SandboxLink:
        what = f"endpoint {endpoint.name!r}: ipvlan on {network.interface!r}"
        link = host.add_link(
            "ipvlan",
            endpoint.interface,
            data={"ipvlan_mode": network.mode},
            parent=network.index,
            namespace=sandbox.namespace,
            alias=f"cnm:{network.owner}:endpoint/{endpoint.name}",
        )
        undo.push(what, lambda: sandbox.release_link(link.index, what, inside=True))
        routes: tuple[Route, ...] = ()
        if network.mode != "l2":
            # The default route is the interface itself (Docker's l3 mode), per family it has.
            routes = tuple(Route(_DEFAULTS[a.version]) for a in endpoint.addresses)
        return SandboxLink(endpoint.interface, link.index, endpoint.addresses, routes=routes, gateways=network.gateways)
