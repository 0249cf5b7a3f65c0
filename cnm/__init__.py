"""cnm: Docker's Container Network Model as an in-process Python library.

Sandboxes (network namespaces), endpoints (interfaces with addresses joined to
sandboxes), networks made by pluggable drivers, pluggable IPAM and a firewall
layer for NAT and published ports. Every object is a context manager: entering
builds it in the kernel through netlink, leaving removes it.

>>> import cnm
>>> with cnm.Host.isolated() as host:                      # doctest: +SKIP
...     net = host.create_network("web")
...     a = host.create_sandbox("a")
...     net.connect(a, ports=["8080:80"])
"""

from .errors import (
    ClosedError,
    CNMError,
    ConflictError,
    ExhaustedError,
    InterfaceExistsError,
    InvalidArgumentError,
    KernelError,
    MissingKernelFeatureError,
    NotFoundError,
    StateError,
    TeardownError,
)
from .api import Endpoint, Host, Lab, Network, Outside, Sandbox, SandboxRequest
from .leftovers import CollectedHost, GCReport, gc
from .ports import PortMapping, PublishedPort

__version__ = "0.1.0"

__all__ = [
    "CNMError",
    "ClosedError",
    "CollectedHost",
    "ConflictError",
    "Endpoint",
    "ExhaustedError",
    "GCReport",
    "Host",
    "InterfaceExistsError",
    "InvalidArgumentError",
    "KernelError",
    "Lab",
    "MissingKernelFeatureError",
    "Network",
    "NotFoundError",
    "Outside",
    "PortMapping",
    "PublishedPort",
    "Sandbox",
    "SandboxRequest",
    "StateError",
    "TeardownError",
    "__version__",
    "gc",
]
