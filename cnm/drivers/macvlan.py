"""The macvlan driver: each sandbox gets a MAC address of its own on a host interface.

Like Docker's ``macvlan`` driver: ``-o parent=eth0`` (see
:mod:`cnm.drivers._parent` for ``eth0.10`` and for no parent) and
``-o macvlan_mode=bridge`` (the default), ``private``, ``vepa`` or
``passthru``. A sandbox's interface is a macvlan link on the parent, made
straight inside the sandbox, so it sits on the parent's network with an
address of the network's subnet (normally the parent's own) and reaches
that network directly: nothing is routed or NATed by the host, and no
ports are published. In bridge mode the sandboxes of one parent reach each
other; in private mode they do not; vepa sends their traffic to the switch
outside; passthru gives one sandbox the parent itself.

As with Docker, the host cannot reach its own macvlan sandboxes through the
parent (the kernel keeps a macvlan and its parent apart), and the
addresses already used on the parent's network are not known to IPAM:
give ``ip_range`` (or each sandbox's ``ip``) outside them.
"""

from __future__ import annotations

from ..errors import InvalidArgumentError
from ..kernel import Rtnl
from ..undo import UndoLog
from . import Capabilities, EndpointSpec, NetworkPlumbing, NetworkSpec, SandboxLink, SandboxPort
from ._parent import OPT_PARENT, check_parent, make_parent

__all__ = ["MacvlanDriver"]

OPT_MODE = "macvlan_mode"
MODES = ("bridge", "private", "vepa", "passthru")


class MacvlanDriver:
    name = "macvlan"
    capabilities = Capabilities(families=frozenset({4, 6}), routed=False)

    def validate(self, spec: NetworkSpec) -> None:
        unknown = sorted(set(spec.options) - {OPT_PARENT, OPT_MODE})
        if unknown:
            raise InvalidArgumentError(
                f"network {spec.name!r}: unknown macvlan option(s) {', '.join(unknown)} (known: {OPT_MODE}, {OPT_PARENT})"
            )
        mode = spec.options.get(OPT_MODE, "bridge")
        if mode not in MODES:
            raise InvalidArgumentError(f"network {spec.name!r}: {OPT_MODE} {mode!r} is not one of {', '.join(MODES)}")
        check_parent(spec, self.name)

    def create_network(self, host: Rtnl, spec: NetworkSpec, undo: UndoLog) -> NetworkPlumbing:
        plumbing = make_parent(host, spec, self.name, undo)
        return NetworkPlumbing(
            interface=plumbing.interface,
            index=plumbing.index,
            owner=plumbing.owner,
            gateways=plumbing.gateways,
            mode=spec.options.get(OPT_MODE, "bridge"),
        )

    def join(
        self, host: Rtnl, network: NetworkPlumbing, endpoint: EndpointSpec, sandbox: SandboxPort, undo: UndoLog
    ) -> SandboxLink:
        what = f"endpoint {endpoint.name!r}: macvlan on {network.interface!r}"
        link = host.add_link(
            "macvlan",
            endpoint.interface,
            data={"macvlan_mode": network.mode},
            parent=network.index,
            namespace=sandbox.namespace,
            mac=endpoint.mac,
            alias=f"cnm:{network.owner}:endpoint/{endpoint.name}",
        )
        undo.push(what, lambda: sandbox.release_link(link.index, what, inside=True))
        return SandboxLink(endpoint.interface, link.index, endpoint.addresses, gateways=network.gateways)
