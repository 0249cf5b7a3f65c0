"""The drivers of the two predefined networks, ``host`` and ``none`` (Docker's ``host`` and ``null``).

Every host has these two networks from the start, as ``docker network ls``
shows them on a fresh daemon. Nothing joins them with ``connect``: a sandbox
is on one of them by its network mode (``host.create_sandbox(name,
network_mode="host")`` or ``"none"``, see :mod:`cnm.api.modes`), which is
decided when the sandbox is made. So these drivers build nothing and refuse
every call of the contract; they exist so that the networks have a driver
to name in ``inspect``, and so that no second network of either kind is made.
"""

from __future__ import annotations

from ..errors import InvalidArgumentError, StateError
from ..kernel import Rtnl
from ..undo import UndoLog
from . import (
    Capabilities,
    EndpointSpec,
    NetworkPlumbing,
    NetworkSpec,
    SandboxLink,
    SandboxPort,
)

__all__ = ["HostDriver", "NullDriver"]


class _PredefinedDriver:
    #: what a sandbox of either mode has: both families, nothing routed for it
    capabilities = Capabilities(families=frozenset({4, 6}), routed=False)

    def __init__(self, name: str, network: str) -> None:
        #: the driver's name, and the one network that uses it
        self.name = name
        self.network = network

    def validate(self, spec: NetworkSpec) -> None:
        raise InvalidArgumentError(
            f"network {spec.name!r}: driver {self.name!r} is only for the predefined network "
            f"{self.network!r}; only one network of this driver exists (as in Docker)"
        )

    def create_network(self, host: Rtnl, spec: NetworkSpec, undo: UndoLog) -> NetworkPlumbing:
        self.validate(spec)
        raise AssertionError("unreachable")  # validate always refuses

    def join(
        self, host: Rtnl, network: NetworkPlumbing, endpoint: EndpointSpec, sandbox: SandboxPort, undo: UndoLog
    ) -> SandboxLink:
        raise StateError(
            f"endpoint {endpoint.name!r}: nothing joins network {self.network!r}; "
            f"create the sandbox with network_mode={self.network!r}"
        )


def HostDriver() -> _PredefinedDriver:  # a factory, named like the drivers' classes
    """The driver of network ``host``: a sandbox in it is the host's own namespace."""
    return _PredefinedDriver("host", "host")


def NullDriver() -> _PredefinedDriver:
    """The driver of network ``none``: a sandbox in it has loopback only."""
    return _PredefinedDriver("null", "none")
