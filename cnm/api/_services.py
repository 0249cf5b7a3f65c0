"""What a host's children may use of it: one narrow object.

A :class:`Services` holds what every network, endpoint and sandbox of one
host shares: the netlink socket of the host's namespace, the firewall
backend, the books of addresses (each network's pools, in its record) and
host ports (and a socket that asks which ports the host's own sockets
hold), the links the kernel is still taking apart, the lock that
serializes operations, and the books of records (:mod:`cnm.api._records`).
Children get it when they are made and reach their host through it alone.
"""

from __future__ import annotations

import functools
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .._checks import check_instance
from ..dying import DyingLinks
from ..errors import ClosedError, InvalidArgumentError
from ..firewall import FirewallBackend
from ..kernel import LINKS_GONE_TIMEOUT, Rtnl
from ..netns import MountDir, Namespace
from ..port_books import HostPortAllocator
from ..sock_diag import SockDiag
from ..ports import PortMapping, PublishedPort
from ..undo import Undo, UndoLog
from ._records import NetworkRecord, SandboxRecord

if TYPE_CHECKING:
    from ..drivers import NetworkDriver
    from ..facade import Kernel
    from .host import Host
    from .network import Network
    from .sandbox import Sandbox

__all__ = ["Services", "serialized"]

F = TypeVar("F", bound=Callable[..., Any])


def serialized(method: F) -> F:
    """Run *method* under its host's lock: one operation at a time per host.

    cnm's bookkeeping (records, address pools, host ports, undo logs) is
    shared by everything on a host; runtimes call from many threads.
    """

    @functools.wraps(method)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._services.lock:
            return method(self, *args, **kwargs)

    return locked  # type: ignore[return-value]


class Services:
    """The shared state of one host; see the module documentation."""

    def __init__(self, host: Host, kernel: Kernel, name: str, namespace: Namespace, token: str) -> None:
        #: the kernel facade (cnm.facade): everything below talks to the kernel through it
        self.kernel = kernel
        self.name = name
        self.namespace = namespace
        self.token = token
        self.lock = threading.RLock()
        # A weak reference: the host's finalizer (cnm.leftovers.watch) must
        # be able to run while children, and so this object, are still alive.
        self._host = weakref.ref(host)
        self.ports = HostPortAllocator()
        self.networks: dict[str, NetworkRecord] = {}
        self.sandboxes: dict[str, SandboxRecord] = {}
        #: networks and sandboxes in creation order (close() goes in reverse)
        self.children: list[NetworkRecord | SandboxRecord] = []
        #: what failed operations could not roll back; close() retries it
        self.leftovers: list[Undo] = []
        self.closed = False
        #: the newest sandbox, the only one that keeps a socket open
        self.warm: SandboxRecord | None = None
        self._forwarding_users = {4: 0, 6: 0}
        #: UDP ports held for tunnels: (networks using it, its publications)
        self._tunnels: dict[int, tuple[int, list[PublishedPort]]] = {}
        self._forwarding_was: dict[int, str | None] = {4: None, 6: None}
        #: stable text naming this host, from which IPAM derives its IPv6 prefix
        self.seed = token
        #: network drivers of this host's own, by name (before cnm.drivers.DRIVERS)
        self.drivers: dict[str, Callable[[], NetworkDriver]] = {}
        # Set by attach(), once the host's kernel side exists.
        self.rtnl: Rtnl
        self.dying: DyingLinks
        self.mounts: MountDir
        self.firewall: FirewallBackend
        self.sock_diag: SockDiag

    def attach(self, rtnl: Rtnl, mounts: MountDir, firewall: FirewallBackend, sock_diag: SockDiag) -> None:
        self.rtnl = rtnl
        #: which ports the host's own sockets hold (one socket per host, opened once)
        self.sock_diag = sock_diag
        #: deleted sandboxes' veths the kernel has yet to remove, and the addresses and ports they hold
        self.dying = DyingLinks(rtnl, LINKS_GONE_TIMEOUT, f"host {self.name!r}")
        self.mounts = mounts
        self.firewall = firewall

    @property
    def host(self) -> Host:
        host = self._host()
        if host is None:
            raise ClosedError(f"host {self.name!r} is gone")
        return host

    @property
    def where(self) -> str:
        return f"host {self.name!r}"

    def check_open(self) -> None:
        if self.closed:
            raise ClosedError(f"host {self.name!r} is closed")

    def keep(self, leftover: Undo) -> None:
        """Keep what a failed operation could not roll back, for close() to retry."""
        self.leftovers.append(leftover)

    def driver(self, name: str) -> NetworkDriver:
        """A new instance of the network driver *name*: this host's own, else the registry's."""
        from ..drivers import network_driver

        own = self.drivers.get(name)
        return own() if own is not None else network_driver(name)

    def sandbox_path(self, name: str) -> str:
        return os.path.join(self.mounts.path, f"sb-{name}")

    # ---- the books -----------------------------------------------------------------

    def adopt(self, registry: dict[str, Any], record: NetworkRecord | SandboxRecord, books: UndoLog) -> None:
        """Enter *record* in *registry* (networks or sandboxes); forgotten when *books* unwinds."""
        registry[record.name] = record
        self.children.append(record)

        def forget() -> None:
            if registry.get(record.name) is record:
                del registry[record.name]
            if record in self.children:
                self.children.remove(record)

        books.push(f"forget {record.name!r}", forget)

    def keep_warm(self, record: SandboxRecord) -> None:
        """Only the newest sandbox keeps its socket: descriptors stay bounded."""
        if self.warm is not None and self.warm is not record:
            self.warm.cool()
        self.warm = record

    def network(self, where: str, value: object) -> NetworkRecord:
        """The record of *value*, which must be a live network of this host."""
        from .network import Network

        network: Network = self._mine(where, "network", value, Network)
        record = self.networks.get(network.name)
        if record is None or record.handle is not network:
            raise ClosedError(f"network {network.name!r} was deleted")
        return record

    def sandbox(self, where: str, value: object, *, gone: bool = False) -> SandboxRecord | None:
        """The record of *value*, which must be a sandbox of this host.

        A sandbox that was deleted raises ClosedError, or with *gone* gives None.
        """
        from .sandbox import Sandbox

        sandbox: Sandbox = self._mine(where, "sandbox", value, Sandbox)
        record = self.sandboxes.get(sandbox.name)
        if record is None or record.handle is not sandbox:
            if gone:
                return None
            raise ClosedError(f"sandbox {sandbox.name!r} was deleted")
        return record

    def live_sandbox(self, where: str, value: object) -> SandboxRecord:
        record = self.sandbox(where, value)
        assert record is not None
        if record.deleted:
            raise ClosedError(f"sandbox {record.name!r} was deleted")
        return record

    def _mine(self, where: str, what: str, value: object, cls: type[Any]) -> Any:
        child = check_instance(where, what, value, cls)
        if child.host is not self._host():
            raise InvalidArgumentError(f"{where}: {what} {child.name!r} belongs to another host")
        return child

    def hold_tunnel_port(self, port: int, books: UndoLog) -> None:
        """Keep UDP *port* from being published while any network whose
        tunnels arrive on it is here (see ``Capabilities.tunnel_port``)."""
        if port not in self._tunnels:
            mapping = PortMapping(container_port=port, host_port=port, protocol="udp")
            self._tunnels[port] = (0, self.ports.reserve("(the overlay tunnels)", [mapping], families=(4, 6)))
        users, held = self._tunnels[port]
        self._tunnels[port] = (users + 1, held)

        def release() -> None:
            users, held = self._tunnels[port]
            if users == 1:
                del self._tunnels[port]
                self.ports.release(held)
            else:
                self._tunnels[port] = (users - 1, held)

        books.push(f"host {self.name!r}: udp {port} for the overlay tunnels", release)

    # ---- forwarding ----------------------------------------------------------------

    def use_forwarding(self, family: int, kernel: UndoLog) -> None:
        """Turn forwarding of *family* on while any routed network of it needs it.

        In the machine's own namespace the previous value is restored when the
        last network that needed it goes (an isolated host just keeps it on).
        """
        key = _FORWARDING[family]
        if self._forwarding_users[family] == 0:
            before = self.namespace.read_sysctl(key)
            if before != "1":
                self.namespace.write_sysctl(key, "1")
            self._forwarding_was[family] = before
        self._forwarding_users[family] += 1

        def release() -> None:
            was = self._forwarding_was[family]
            if self._forwarding_users[family] == 1 and was not in (None, "1"):
                self.namespace.write_sysctl(key, was or "0")
            self._forwarding_users[family] -= 1

        kernel.push(f"host {self.name!r}: {key.replace('/', '.')}", release)

    def forwarding_always_on(self) -> None:
        """An isolated host keeps forwarding on (both families) and never restores it."""
        for family, key in _FORWARDING.items():
            self.namespace.write_sysctl(key, "1")
            self._forwarding_users[family] = 1


#: The sysctl that turns forwarding of each family on, in a host's namespace.
_FORWARDING = {4: "net/ipv4/ip_forward", 6: "net/ipv6/conf/all/forwarding"}
