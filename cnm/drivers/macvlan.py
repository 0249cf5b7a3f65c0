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

import errno

from ..errors import ConflictError, KernelError
from ..kernel import Rtnl
from ..undo import UndoLog
from . import EndpointSpec, NetworkPlumbing, SandboxLink, SandboxPort
from ._parent import OnParent

__all__ = ["MacvlanDriver"]


class MacvlanDriver(OnParent):
    name = "macvlan"
    modes = ("bridge", "private", "vepa", "passthru")

    def join(
        self, host: Rtnl, network: NetworkPlumbing, endpoint: EndpointSpec, sandbox: SandboxPort, undo: UndoLog
    ) -> SandboxLink:
        if network.mode != "passthru":
            index = self.add_sandbox_link(host, network, endpoint, sandbox, undo, mac=endpoint.mac)
            return SandboxLink(endpoint.interface, index, endpoint.addresses, gateways=network.gateways)
        # Passthru gives the parent itself to one sandbox, with the parent's MAC.
        try:
            index = self.add_sandbox_link(host, network, endpoint, sandbox, undo, mac=None)
        except KernelError as exc:
            if exc.errno != errno.EINVAL:
                raise
            raise ConflictError(
                f"endpoint {endpoint.name!r}: macvlan_mode passthru gives parent {network.interface!r} "
                "to one sandbox only, and another has it"
            ) from exc
        return SandboxLink(endpoint.interface, index, endpoint.addresses, gateways=network.gateways)
