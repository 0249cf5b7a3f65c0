"""What cnm knows about each network, endpoint and sandbox of a host.

The public objects (:class:`~cnm.Network`, :class:`~cnm.Endpoint`,
:class:`~cnm.Sandbox`) are handles; their state lives in these records,
with public fields, kept in the host's books (:class:`~cnm.api._services.Services`).
The protocols that span several objects (the join, the batched teardown, the
bulk path, the default-route election, the inspect views) read and change
records found through the books, never another object's private attributes.

Each record holds its undo logs (see :mod:`cnm.undo`): what the object made,
with the inverse of each change registered where the change was made.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs

from .._ip import IPAddress, IPInterface, IPNetwork
from ..owner import OWNER_ENV
from ..undo import Undo

if TYPE_CHECKING:
    from ..drivers import NetworkDriver, NetworkPlumbing, NetworkSpec
    from ..firewall import NetworkRules
    from ..ipam import AddressPool
    from ..kernel import Rtnl
    from ..netns import Namespace
    from ..ports import PortMapping, PublishedPort
    from .endpoint import Endpoint
    from .network import Network
    from .sandbox import Sandbox

__all__ = ["STOP_GRACE", "EndpointRecord", "NetworkRecord", "Processes", "SandboxRecord", "stop_all"]


#: how long processes get after SIGTERM before SIGKILL, all together (seconds)
STOP_GRACE = 1.0


class Processes:
    """The processes started in one namespace (``popen``), ended when it goes.

    Each is marked as its host's in its environment (:data:`cnm.owner.OWNER_ENV`),
    so that :func:`cnm.gc` knows which processes in a dead host's namespaces
    cnm started, and ends those (their children inherit the mark).
    """

    __slots__ = ("running", "token")

    def __init__(self, token: str) -> None:
        self.running: list[subprocess.Popen[Any]] = []
        #: the owner token of the host the processes belong to
        self.token = token

    def marked(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """*kwargs* of a ``subprocess`` call, with the host's mark added to its environment."""
        env = dict(os.environ if kwargs.get("env") is None else kwargs["env"])
        env[OWNER_ENV] = self.token
        return {**kwargs, "env": env}

    def add(self, proc: subprocess.Popen[Any]) -> None:
        self.running[:] = [p for p in self.running if p.poll() is None]  # forget the finished
        self.running.append(proc)

    def stop(self) -> None:
        """End every process still running (see :func:`stop_all`)."""
        stop_all([self])


def stop_all(groups: Iterable[Processes], grace: float = STOP_GRACE) -> None:
    """End every process still running in *groups*: SIGTERM to all at once,
    then up to *grace* seconds for all of them together to exit (woken by
    each one's pidfd as it does), then SIGKILL to the rest; each is reaped.
    Returns at once when none runs."""
    groups = list(groups)
    procs = [p for g in groups for p in g.running if p.poll() is None]
    pidfds: dict[int, subprocess.Popen[Any]] = {}
    try:
        for proc in procs:
            # Not reaped yet, so the pid is still this process's.
            pidfds[os.pidfd_open(proc.pid)] = proc
            proc.terminate()
        deadline = time.monotonic() + grace
        while pidfds and (left := deadline - time.monotonic()) > 0:
            poller = select.poll()
            for fd in pidfds:
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll(int(left * 1000) + 1):
                os.close(fd)
                del pidfds[fd]
        for proc in pidfds.values():
            proc.kill()
    finally:
        for fd in pidfds:
            os.close(fd)
    for group in groups:
        for proc in group.running:
            proc.wait()
        group.running.clear()


@attrs.define(eq=False)
class NetworkRecord:
    handle: Network
    spec: NetworkSpec
    driver: NetworkDriver
    ipam: str
    #: one address pool per family the network has, in family order (IPv4 first)
    pools: dict[int, AddressPool]
    plumbing: NetworkPlumbing
    #: what the firewall was told, or None when the driver does not route
    rules: NetworkRules | None
    labels: dict[str, str]
    created: str
    endpoints: dict[str, EndpointRecord] = attrs.Factory(dict)
    undo: Undo = attrs.Factory(Undo)
    deleted: bool = False
    #: one of the networks every host has (``host``, ``none``): never deleted by hand
    predefined: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def subnets(self) -> tuple[IPNetwork, ...]:
        return tuple(pool.subnet for pool in self.pools.values())


@attrs.define(eq=False)
class EndpointRecord:
    handle: Endpoint
    network: NetworkRecord
    name: str
    id: str
    #: one address per family of the network, in family order
    addresses: tuple[IPInterface, ...]
    mac: str
    ports: list[PortMapping]
    #: the families whose address the user gave (Docker's IPAMConfig)
    static: frozenset[int]
    #: the address and the name in the network
    undo: Undo = attrs.Factory(Undo)
    #: the current join: interface, port forwards; host ports and the records of the join
    join: Undo = attrs.Factory(Undo)
    #: the sandbox of its join, from the join's first step on (see cnm.api.join)
    sandbox: SandboxRecord | None = None
    #: the join went through all its steps
    joined: bool = False
    interface: str | None = None
    #: the default-route candidates the driver returned for the join, one per family at most
    gateways: tuple[IPAddress, ...] = ()
    #: the families whose default route the sandbox has through this endpoint
    routes_given: set[int] = attrs.Factory(set)
    published: list[PublishedPort] = attrs.Factory(list)
    #: made by ``connect`` (or the bulk path): goes when its sandbox does
    owned_by_connection: bool = False
    deleted: bool = False
    #: the links of its last join, if they went with a namespace the kernel may still be dismantling
    old_links: frozenset[int] = frozenset()

    def address(self, family: int) -> IPInterface | None:
        return next((a for a in self.addresses if a.version == family), None)


@attrs.define(eq=False)
class SandboxRecord:
    handle: Sandbox
    name: str
    id: str
    namespace: Namespace
    processes: Processes
    undo: Undo = attrs.Factory(Undo)
    #: joined endpoints, in join order (the order the default route is elected in)
    endpoints: list[EndpointRecord] = attrs.Factory(list)
    #: a socket inside the namespace, kept while this is the host's newest sandbox
    socket: Rtnl | None = None
    deleted: bool = False
    #: set while the namespace is being deleted: links with an end in it go with it
    dying_links: list[int] | None = None
    #: links that went with the namespace, whose addresses and ports are not yet released
    went_with_namespace: list[int] = attrs.Factory(list)
    #: as Docker writes it (``host``, ``none``, ``container:NAME``, a network's
    #: name), or None for a sandbox made without one (see cnm.api.modes)
    network_mode: str | None = None
    #: the sandbox whose namespace this one shares (network mode ``container:``)
    shares: SandboxRecord | None = None
    #: the sandboxes sharing this one's namespace
    sharers: list[SandboxRecord] = attrs.Factory(list)

    @property
    def own_stack(self) -> bool:
        """Whether the namespace is this sandbox's own to connect (not the
        host's, not another sandbox's, not one of loopback only)."""
        return self.shares is None and self.network_mode not in ("host", "none")

    def cool(self) -> None:
        """Close the kept socket (another sandbox is newer, or this one goes)."""
        if self.socket is not None:
            self.socket.close()
            self.socket = None

    def next_interface(self) -> str:
        if not self.endpoints:
            return "eth0"  # the common case, on every bulk join
        used = {e.interface for e in self.endpoints}
        n = 0
        while f"eth{n}" in used:
            n += 1
        return f"eth{n}"
