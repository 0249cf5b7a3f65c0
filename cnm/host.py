"""Host, Network, Sandbox and Endpoint: the context-manager API.

Every public operation here follows one pattern: validate everything that can
be validated without the kernel (raising a typed error before any change),
then make the changes inside :func:`cnm.undo.transaction`, where each change
registers its inverse as it succeeds. On failure the transaction unwinds and
the kernel is as it was; on success the undo log is handed to the object just
made, and deleting that object replays it.

Ownership: a Host owns its networks and sandboxes; a network owns its
endpoints; an endpoint joined to a sandbox holds a second log (the join) that
``leave()`` unwinds. Closing a Host deletes its children in reverse creation
order, collects every failure, and raises them together as one
:class:`~cnm.errors.TeardownError`.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
import queue
import threading
import secrets
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, TypeVar

import attrs

from .dying import DyingLinks
from .drivers import EndpointSpec, NetworkDriver, NetworkPlumbing, NetworkSpec, network_driver
from ._checks import (
    check_collection,
    check_flag,
    check_instance,
    check_mac,
    check_name,
    check_text,
    string_map,
)
from .errors import (
    ClosedError,
    ConflictError,
    ExhaustedError,
    InvalidArgumentError,
    NotFoundError,
    StateError,
)
from .firewall import FirewallBackend, FirewallFactory, NetworkRules, PortForward, firewall_backend
from .ipam import AddressPool, ipam_driver, parse_address, parse_subnet
from .interrupts import deferred_interrupts, uninterruptible
from .kernel import LINKS_GONE_TIMEOUT, Rtnl, mac_for, random_mac
from .leftovers import watch
from .netns import MOUNT_DIRS, MountDir, Namespace
from .owner import OwnerRecord
from .ports import HostPortAllocator, PortMapping, PublishedPort, docker_ports_view, normalize_ports
from .undo import Undo, UndoLog, raise_collected, transaction

__all__ = ["Endpoint", "Host", "Network", "Outside", "Sandbox", "SandboxRequest"]

T = TypeVar("T")


#: The link between an isolated host and its "outside": a /24 from the range
#: reserved for benchmarking network devices (RFC 2544), so it never collides
#: with Docker's default pools or with real networks.
UPLINK_SUBNET = IPv4Network("198.18.0.0/24")
OUTSIDE_ADDRESS = IPv4Interface("198.18.0.1/24")
HOST_ADDRESS = IPv4Interface("198.18.0.2/24")


F = TypeVar("F", bound=Callable[..., Any])


def _serialized(method: F) -> F:
    """Run *method* under its host's lock: one operation at a time per host.

    cnm's bookkeeping (registries, address pools, host ports, undo logs) is
    shared by everything on a host; runtimes call from many threads.
    """

    @functools.wraps(method)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _host_of(self)._lock:
            return method(self, *args, **kwargs)

    return locked  # type: ignore[return-value]


def _host_of(obj: Any) -> Host:
    if isinstance(obj, Host):
        return obj
    if isinstance(obj, Endpoint):
        return obj.network.host
    if isinstance(obj, Outside):
        return obj._host
    return obj.host  # type: ignore[no-any-return]


C = TypeVar("C", "Network", "Sandbox")


def _check_child(host: Host, where: str, what: str, value: object, cls: type[C]) -> C:
    """*value* must be a *cls* (a Network or a Sandbox) of *host*."""
    child = check_instance(where, what, value, cls)
    if child.host is not host:
        raise InvalidArgumentError(f"{where}: {what} {child.name!r} belongs to another host")
    return child


def _claim_token(kind: str, netns_path: str, firewall: str) -> OwnerRecord:
    """A fresh host token, recorded as this process's before anything is made
    (the record goes after everything went; see cnm.owner). A token that is
    taken (by a live host, or a dead one gc has not collected) is drawn again."""
    for _ in range(8):
        try:
            return OwnerRecord.claim(secrets.token_hex(3), kind, netns_path, firewall)
        except ConflictError:
            continue
    raise ExhaustedError("cnm: no free host token after 8 draws (run cnm.gc() to collect dead hosts' records)")


def _new_id() -> str:
    return secrets.token_hex(32)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class _InNamespace:
    """run / popen / call inside a namespace (shared by Host, Outside, Sandbox)."""

    namespace: Namespace
    _processes: list[subprocess.Popen[Any]]

    def _check_open(self) -> None:
        raise NotImplementedError

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run(argv, **kwargs)`` inside this namespace."""
        self._check_open()
        return self.namespace.run(lambda: subprocess.run(argv, **kwargs))

    @_serialized
    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen(argv, **kwargs)`` inside this namespace.

        The process is killed (and reaped) when the owner is deleted. Under
        the host's lock, so a deletion cannot miss a process being started.
        """
        self._check_open()
        proc = self.namespace.run(lambda: subprocess.Popen(argv, **kwargs))
        self._processes[:] = [p for p in self._processes if p.poll() is None]  # forget the finished
        self._processes.append(proc)
        return proc

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in a thread inside this namespace; return its result.

        Sockets created by *fn* belong to this namespace.
        """
        self._check_open()
        return self.namespace.run(lambda: fn(*args, **kwargs))

    def _configure(
        self, interface: str, address: IPv4Interface, gateway: IPv4Address | None, what: str, index: int | None
    ) -> None:
        """Bring *interface* up, address it, route through *gateway*: one trip into the namespace."""

        def inside() -> None:
            with Rtnl(self.namespace, here=True) as rtnl:
                rtnl.configure_interface(interface, address, gateway, what, index=index)

        self.namespace.quick(inside)

    def _stop_processes(self) -> None:
        for proc in self._processes:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self._processes.clear()


@attrs.frozen(init=False)
class SandboxRequest:
    """One sandbox for :meth:`Host.create_sandboxes`: its name and, when the
    call connects it to a network, its address, MAC and published ports
    (as in :meth:`Network.connect`: a single string is one port spec).

    Checked when made: a bad value raises
    :class:`~cnm.errors.InvalidArgumentError` here, not in the bulk call.
    *ports* is kept as the :class:`~cnm.PortMapping` list it stands for.
    """

    name: str
    ip: str | IPv4Address | None
    mac: str | None
    ports: tuple[PortMapping, ...]

    def __init__(
        self,
        name: str,
        ip: str | IPv4Address | None = None,
        mac: str | None = None,
        ports: Iterable[str | PortMapping] | str = (),
    ) -> None:
        # By hand, not by attrs converters: each message names the sandbox.
        name = check_name("sandbox", name)
        where = f"sandbox {name!r}"
        parse_address(name, "ip", ip, kind="sandbox")
        self.__attrs_init__(name, ip, check_mac(where, mac), tuple(normalize_ports(ports, owner=where)))


class Outside(_InNamespace):
    """The "internet" of an isolated host: a namespace linked to the host's uplink."""

    name = "outside"

    def __init__(self, namespace: Namespace, address: IPv4Address, host: Host) -> None:
        self.namespace = namespace
        self.address = address
        self._processes = []
        self._host = host

    def _check_open(self) -> None:
        self._host._check_open()

    def __repr__(self) -> str:
        return f"<Outside {self.namespace.name} {self.address}>"


class Host(_InNamespace):
    """A network namespace in which cnm builds networks, with sandboxes beside it.

    ``Host()`` is the machine's own namespace, for container runtimes.
    ``Host.isolated()`` makes a fresh one (plus an "outside" namespace playing
    the internet), for tests, demos and experiments; closing it removes all.
    What a host's process could not remove because it died, :func:`cnm.gc`
    removes (see :mod:`cnm.leftovers`).
    """

    def __init__(self, *, firewall: str = "nftables") -> None:
        factory = _firewall_factory(firewall)
        namespace = Namespace.current()
        record = _claim_token("machine", namespace.path, firewall)
        token = record.token
        with transaction() as undo:
            undo.books.push(f"host {namespace.name!r}: owner record", record.remove)
            self._setup(namespace, None, factory, token, undo)
        watch(self, record, f"host {self.name!r}")

    def _setup(
        self, namespace: Namespace, outside: Outside | None, firewall: FirewallFactory, token: str, undo: Undo
    ) -> None:
        self.namespace = namespace
        self.outside = outside
        self.name = namespace.name
        self.token = token
        self._lock = threading.RLock()
        self._processes = []
        self._undo = undo
        self._warm: Sandbox | None = None
        #: what failed operations could not roll back; close() retries it
        self._leftovers: list[Undo] = []
        self._closed = False
        self._networks: dict[str, Network] = {}
        self._sandboxes: dict[str, Sandbox] = {}
        self._children: list[Network | Sandbox] = []
        self._forwarding_users = 0
        self._forwarding_was: str | None = None
        self._ports = HostPortAllocator()
        self._rtnl = Rtnl(namespace)
        undo.books.push(f"host {self.name!r}: rtnetlink socket", self._rtnl.close)
        #: deleted sandboxes' veths the kernel has yet to remove, and the addresses and ports they hold
        self._dying = DyingLinks(self._rtnl, LINKS_GONE_TIMEOUT, f"host {self.name!r}")
        # Where this host's sandboxes are mounted (see cnm.netns for why not /run/netns).
        self._mounts = MountDir.create(token)
        undo.kernel.push(f"host {self.name!r}: sandbox namespace directory", lambda: self._mounts.delete())
        self._firewall: FirewallBackend = firewall(namespace, token)
        undo.books.push(f"host {self.name!r}: firewall", self._firewall.close)

    @classmethod
    def isolated(cls, name: str | None = None, *, firewall: str = "nftables") -> Host:
        """A fresh host namespace, with ``host.outside`` linked to it by a veth.

        The host has ``address`` 198.18.0.2/24 on its ``eth0``, the outside has
        ``outside_address`` 198.18.0.1 and is the host's default gateway.
        """
        label = check_name("host", name) if name is not None else "host"
        factory = _firewall_factory(firewall)
        record = _claim_token("isolated", Namespace.current().path, firewall)
        token = record.token
        host = cls.__new__(cls)
        try:
            cls._build_isolated(host, token, name, label, factory, record)
        except BaseException:
            with deferred_interrupts():
                # Whatever the rollback could not remove carries the token: sweep it.
                if not Namespace.sweep(f"cnm-{token}-") + _collect(MountDir(os.path.join(MOUNT_DIRS, token)).delete):
                    _collect(record.remove)
            raise
        watch(host, record, f"host {label!r}")
        return host

    @classmethod
    def _build_isolated(
        cls, host: Host, token: str, name: str | None, label: str, firewall: FirewallFactory, record: OwnerRecord
    ) -> Host:
        with transaction() as undo:
            undo.books.push(f"host {label!r}: owner record", record.remove)
            host_ns = Namespace.create(f"cnm-{token}-host" + (f"-{name}" if name else ""), setup=_prepare_host_namespace)
            undo.kernel.push(f"host {label!r}: namespace", lambda: host_ns.delete())
            outside_ns = Namespace.create(f"cnm-{token}-outside", setup=_prepare_host_namespace)
            undo.kernel.push(f"host {label!r}: outside namespace", lambda: outside_ns.delete())
            outside = Outside(outside_ns, OUTSIDE_ADDRESS.ip, host)
            host._setup(host_ns, outside, firewall, token, undo)
            host.name = label
            # Both ends of the uplink live in namespaces deleted above: no undo step of their own.
            uplink, outside_end = host._rtnl.add_veth(
                "eth0",
                mac=random_mac(),
                alias=f"cnm:{token}:uplink",
                master=None,
                peer_name="eth0",
                peer_namespace=outside_ns,
            )
            host._rtnl.add_address(uplink, HOST_ADDRESS, f"host {label!r}: uplink")
            host._rtnl.add_route(IPv4Network("0.0.0.0/0"), OUTSIDE_ADDRESS.ip, f"host {label!r}: default route")
            outside._configure("eth0", OUTSIDE_ADDRESS, None, "outside: uplink", outside_end)
            host_ns.write_sysctl("net/ipv4/ip_forward", "1")
            host._forwarding_users = 1  # always on in an isolated host; never restored
        return host

    # ---- properties ------------------------------------------------------------

    @property
    def address(self) -> IPv4Address | None:
        """The host's address on its uplink (isolated hosts only)."""
        return HOST_ADDRESS.ip if self.outside is not None else None

    @property
    def outside_address(self) -> IPv4Address | None:
        return self.outside.address if self.outside is not None else None

    @property
    @_serialized
    def networks(self) -> list[Network]:
        return list(self._networks.values())

    @property
    @_serialized
    def sandboxes(self) -> list[Sandbox]:
        return list(self._sandboxes.values())

    def network(self, name: str) -> Network:
        check_text(f"host {self.name!r}", "network name", name)
        try:
            return self._networks[name]
        except KeyError:
            raise NotFoundError(f"host {self.name!r}: no network named {name!r}") from None

    def sandbox(self, name: str) -> Sandbox:
        check_text(f"host {self.name!r}", "sandbox name", name)
        try:
            return self._sandboxes[name]
        except KeyError:
            raise NotFoundError(f"host {self.name!r}: no sandbox named {name!r}") from None

    def __repr__(self) -> str:
        return f"<Host {self.name!r} {self.namespace.name}{' closed' if self._closed else ''}>"

    # ---- networks ----------------------------------------------------------------

    @_serialized
    def create_network(
        self,
        name: str,
        driver: str = "bridge",
        *,
        subnet: str | IPv4Network | None = None,
        gateway: str | IPv4Address | None = None,
        ip_range: str | IPv4Network | None = None,
        internal: bool = False,
        options: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        ipam: str = "default",
    ) -> Network:
        """Create a network (like ``docker network create``).

        With no *subnet* the next free pool of Docker's default list that
        overlaps no network or route of this host is used.
        """
        self._check_open()
        check_name("network", name)
        if name in self._networks:
            raise ConflictError(f"network {name!r}: a network with that name already exists")
        where = f"network {name!r}"
        check_flag(where, "internal", internal)
        options = string_map(f"{where}: options", options)
        labels = string_map(f"{where}: labels", labels)
        drv = network_driver(check_text(where, "driver", driver))
        ipam_drv = ipam_driver(check_text(where, "ipam", ipam))
        in_use = [n.subnet for n in self._networks.values()] + self._rtnl.routes()
        pool = ipam_drv.request_pool(
            network=name,
            subnet=parse_subnet(name, subnet),
            ip_range=parse_subnet(name, ip_range, what="ip_range"),
            gateway=parse_address(name, "gateway", gateway),
            in_use=in_use,
        )
        spec = NetworkSpec(
            name=name,
            id=_new_id(),
            subnet=pool.subnet,
            gateway=pool.gateway,
            internal=internal,
            options=options,
            owner=self.token,
        )
        drv.validate(spec)
        with transaction(keep=self._leftovers.append) as undo:
            # The driver first: what it can only check against the kernel (an
            # interface name already taken) then fails before anything changed.
            plumbing = drv.create_network(self._rtnl, spec, undo.kernel)
            if not internal:
                self._use_forwarding(undo.kernel)
            rules = None
            if plumbing.routed:
                rules = NetworkRules(name=name, bridge=plumbing.interface, subnets=(pool.subnet,), internal=internal)
                self._firewall.add_network(rules, undo.kernel)
            network = Network(self, spec, drv, ipam, pool, plumbing, rules, labels)
            self._adopt(self._networks, name, network, undo.books)
        network._undo = undo
        return network

    # ---- sandboxes ---------------------------------------------------------------

    @_serialized
    def create_sandbox(self, name: str) -> Sandbox:
        """A sandbox: its own network namespace with loopback up."""
        self._check_open()
        check_name("sandbox", name)
        if name in self._sandboxes:
            raise ConflictError(f"sandbox {name!r}: a sandbox with that name already exists")
        sockets: list[Rtnl] = []
        with transaction(keep=self._leftovers.append) as undo:
            ns = Namespace.create(
                f"cnm-{self.token}-sb-{name}",
                setup=lambda: sockets.append(_open_new_namespace()),
                path=self._sandbox_path(name),
            )
            undo.kernel.push(f"sandbox {name!r}: namespace", ns.delete)
            # The socket that brought lo up stays open for the sandbox's first
            # connect (saving a trip into the namespace); it must be closed
            # before the namespace can go, hence after it on the log.
            undo.kernel.push(f"sandbox {name!r}: socket", sockets[0].close)
            sandbox = Sandbox(self, name, ns, sockets[0])
            self._adopt(self._sandboxes, name, sandbox, undo.books)
        sandbox._undo = undo
        # Only the newest sandbox keeps its socket: descriptors stay bounded.
        if self._warm is not None:
            self._warm._cool()
        self._warm = sandbox
        return sandbox

    @_serialized
    def create_sandboxes(
        self, requests: Iterable[str | SandboxRequest], *, network: Network | None = None
    ) -> list[Sandbox]:
        """Create many sandboxes in one call, each connected to *network* if given.

        For harnesses that need hundreds of sandboxes: the kernel work is
        batched and spread over threads, much faster than a loop of
        ``create_sandbox`` and ``connect``. All or nothing: if one sandbox
        cannot be made, none is left. A request is a name or a
        :class:`SandboxRequest` (with the address, MAC and ports of its
        connection to *network*).
        """
        self._check_open()
        where = f"host {self.name!r}: create_sandboxes"
        if network is not None:
            _check_child(self, where, "network", network, Network)
            network._check_open()
        # SandboxRequest checks each name (and ip, mac, ports) as it is made.
        items = check_collection(where, "requests", requests, "sandbox names or SandboxRequests")
        wanted = [r if isinstance(r, SandboxRequest) else SandboxRequest(r) for r in items]
        names: set[str] = set()
        for request in wanted:
            if request.name in self._sandboxes or request.name in names:
                raise ConflictError(f"sandbox {request.name!r}: a sandbox with that name already exists")
            names.add(request.name)
            if network is None and (request.ip is not None or request.mac is not None or request.ports):
                raise InvalidArgumentError(f"sandbox {request.name!r}: ip, mac and ports need a network to connect to")
        endpoints: list[Endpoint | None] = []
        sandboxes: list[Sandbox] = []
        with transaction(keep=self._leftovers.append) as undo:
            # Rollback runs the kernel step first, then (once it is clean) the books.
            undo.kernel.push(
                f"host {self.name!r}: new sandboxes",
                lambda: raise_collected("new sandboxes", Sandbox._delete_many(sandboxes, wait=True)),
            )
            for request in wanted:
                endpoint = None
                if network is not None:
                    endpoint = network.create_endpoint(request.name, ip=request.ip, mac=request.mac, ports=request.ports)
                    endpoint._owned_by_connection = True
                    undo.books.push(f"endpoint {endpoint.name!r}", endpoint.delete)  # if never joined
                    endpoint._check_host_addresses()
                endpoints.append(endpoint)
                ns = Namespace(f"cnm-{self.token}-sb-{request.name}", self._sandbox_path(request.name))
                sandbox = Sandbox(self, request.name, ns)
                self._adopt(self._sandboxes, request.name, sandbox, sandbox._undo.books)
                sandboxes.append(sandbox)
            specs: list[EndpointSpec | None] = []
            for endpoint, sandbox in zip(endpoints, sandboxes):
                spec = None
                if endpoint is not None:
                    # Recorded as joined before the kernel work: a rollback
                    # (Sandbox._delete_many) finds what to undo through it.
                    spec = endpoint._prepare_join(sandbox, endpoint._join)
                    endpoint._mark_joined(sandbox, spec, endpoint._join)
                specs.append(spec)

            def make_namespace(i: int) -> None:
                """Runs in a namespace thread: sandbox *i*'s namespace, lo up, a socket in it."""
                sandbox = sandboxes[i]
                sockets: list[Rtnl] = []
                sandbox.namespace = Namespace.create(
                    sandbox.namespace.name,
                    setup=lambda: sockets.append(_open_new_namespace()),
                    here=True,
                    path=sandbox.namespace.path,
                )
                sandbox._undo.kernel.push(f"sandbox {sandbox.name!r}: namespace", sandbox.namespace.delete)
                sandbox._rtnl = sockets[0]
                sandbox._undo.kernel.push(f"sandbox {sandbox.name!r}: socket", sandbox._cool)

            def plumb(i: int) -> None:
                """Runs in this thread, as namespaces become ready: sandbox *i*'s interface."""
                sandbox, endpoint, spec = sandboxes[i], endpoints[i], specs[i]
                try:
                    if endpoint is not None and spec is not None:
                        endpoint._plumb(self._rtnl, spec, sandbox, endpoint._join)
                finally:
                    sandbox._cool()  # descriptors stay bounded however many sandboxes

            _pipeline(len(sandboxes), make_namespace, plumb)
            if network is not None and network._rules is not None:
                groups = [(e._forwards(), e._join.kernel) for e in endpoints if e is not None and e.published]
                self._firewall.add_port_forwards_many(network._rules, groups)
        return sandboxes

    @_serialized
    def delete_sandboxes(self, sandboxes: Iterable[Sandbox]) -> None:
        """Delete many sandboxes at once (batched: one wait for the kernel for all).

        Like :meth:`Sandbox.delete` for each; failures are collected and
        raised together, and calling it again retries what is left.
        """
        where = f"host {self.name!r}: delete_sandboxes"
        doomed = [
            _check_child(self, where, "sandbox", s, Sandbox)
            for s in check_collection(where, "sandboxes", sandboxes, "Sandbox objects")
        ]
        raise_collected(f"host {self.name!r}: delete sandboxes", Sandbox._delete_many(doomed, wait=True))

    @_serialized
    def settle(self) -> None:
        """Wait until the kernel has removed the interfaces of every deleted
        sandbox, and give their addresses and host ports back.

        ``sandbox.delete()`` returns as soon as the kernel has been told;
        cnm settles by itself whenever it allocates. Call this to know that
        nothing of the deleted sandboxes is left in the kernel.
        """
        self._check_open()
        raise_collected(f"host {self.name!r}: settle", self._dying.wait())

    # ---- lifecycle ---------------------------------------------------------------

    @uninterruptible
    @_serialized
    def close(self) -> None:
        """Delete everything this host made.

        Goes on past failures and raises them together as one TeardownError;
        calling it again retries whatever is left (and does nothing once all
        is gone). A Ctrl-C while it runs waits until it is done (see
        :mod:`cnm.interrupts`); the owner record goes last (see :mod:`cnm.owner`).

        An isolated host owns every namespace that holds what it made (its
        own, the outside's, its sandboxes'), all carrying its owner mark:
        closing it deletes those namespaces, which takes every link, address,
        route and nftables rule in them along, instead of undoing object by
        object. The machine's own host deletes its sandboxes (namespaces
        first, with one wait for their veths) and then its networks, in
        reverse order.
        """
        if self._closed and not len(self._undo) and not self._children and not self._leftovers and not len(self._dying):
            return
        self._closed = True
        failures: list[Exception] = []
        for owner in [self, self.outside, *self._sandboxes.values()]:
            if owner is not None:
                failures += _collect(owner._stop_processes)
        if self.namespace.owned:
            for sandbox in self._sandboxes.values():
                sandbox._cool()  # an open socket would keep its namespace alive
            gone = self._undo.kernel.unwind()
            if not gone:  # (a failed step stays in the log and is retried by the next close)
                gone = Namespace.sweep(f"cnm-{self.token}-")
            failures += gone
            if not gone:
                self._dying.abandon()
                self._leftovers.clear()
                for child in self._children:
                    child._abandon()
                self._children.clear()
                self._networks.clear()
                self._sandboxes.clear()
        else:
            for leftover in self._leftovers:
                failures += leftover.unwind()
            self._leftovers[:] = [u for u in self._leftovers if len(u)]
            failures += Sandbox._delete_many([c for c in reversed(self._children) if isinstance(c, Sandbox)], wait=True)
            for child in reversed(self._children[:]):
                if isinstance(child, Network):
                    failures += child._teardown(force=True)
            failures += self._dying.wait()  # sandboxes deleted earlier may still hold their veths
        if not self._children and not self._leftovers and not len(self._dying):
            failures += self._undo.unwind()  # the host's sockets (a retry needs them while anything is left)
        raise_collected(f"host {self.name!r}", failures)

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"host {self.name!r} is closed")

    def _sandbox_path(self, name: str) -> str:
        return os.path.join(self._mounts.path, f"sb-{name}")

    def _adopt(self, registry: dict[str, Any], name: str, child: Network | Sandbox, books: UndoLog) -> None:
        registry[name] = child
        self._children.append(child)

        def forget() -> None:
            registry.pop(name, None)
            if child in self._children:
                self._children.remove(child)

        books.push(f"forget {name!r}", forget)

    def _use_forwarding(self, kernel: UndoLog) -> None:
        """Turn IPv4 forwarding on while any routed network needs it.

        In the machine's own namespace the previous value is restored when the
        last network that needed it goes (an isolated host just keeps it on).
        """
        if self._forwarding_users == 0:
            before = self.namespace.read_sysctl("net/ipv4/ip_forward")
            if before != "1":
                self.namespace.write_sysctl("net/ipv4/ip_forward", "1")
            self._forwarding_was = before
        self._forwarding_users += 1

        def release() -> None:
            if self._forwarding_users == 1 and self._forwarding_was not in (None, "1"):
                self.namespace.write_sysctl("net/ipv4/ip_forward", self._forwarding_was or "0")
            self._forwarding_users -= 1

        kernel.push(f"host {self.name!r}: ip_forward", release)


#: How many sandboxes may wait between the two stages of _pipeline, each
#: holding one socket: bounds the descriptors in use whatever the number of
#: sandboxes.
PIPELINE_DEPTH = 16


def _pipeline(count: int, first: Callable[[int], None], second: Callable[[int], None]) -> None:
    """Run ``first(i)`` then ``second(i)`` for every i in range(count), overlapped.

    ``first`` runs on a thread of its own, ``second`` in the calling thread
    as items come out of the first stage. Creating a namespace is mostly
    kernel work outside the RTNL lock, and plumbing a veth mostly work under
    it: one thread on each keeps both cores busy with less contention for
    the lock than two threads each doing whole sandboxes (measured). The
    thread is left inside the namespace it made last (nothing it does
    depends on where it is) and ends with this call.

    Stops at the first failure (no new item starts; items already through
    the first stage are left as they are, their undo registered by
    ``first``); returns when the thread has stopped, also when interrupted,
    so the caller's rollback never races it; raises the first failure, the
    other (if both stages failed) attached as a note.
    """
    ready: queue.Queue[int] = queue.Queue(maxsize=PIPELINE_DEPTH)
    failures: list[BaseException] = []
    stop = threading.Event()

    def produce() -> None:
        try:
            for i in range(count):
                first(i)
                while not stop.is_set():
                    try:
                        ready.put(i, timeout=0.05)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # handed to the caller
            failures.append(exc)
            stop.set()

    thread = threading.Thread(target=produce, name="cnm-namespaces")
    thread.start()
    try:
        done = 0
        while done < count and not stop.is_set():
            try:
                i = ready.get(timeout=0.05)
            except queue.Empty:
                continue
            second(i)
            done += 1
    except BaseException as exc:
        failures.append(exc)
    finally:
        stop.set()
        thread.join()
    if failures:
        for other in failures[1:]:
            failures[0].add_note(f"another sandbox failed too: {other!r}")
        raise failures[0]


def _link_remover(rtnl: Rtnl, index: int) -> Callable[[], None]:
    """An undo step deleting link *index* (already gone is success)."""
    return lambda: rtnl.delete_link(index, f"veth index {index}")


def _collect(step: Callable[[], object]) -> list[Exception]:
    """Run *step*; return its failure as a list (teardown goes on past it)."""
    try:
        step()
    except Exception as exc:  # noqa: BLE001 - collected and reported together
        return [exc]
    return []


def _firewall_factory(name: str) -> FirewallFactory:
    """The firewall backend called *name*, found before a host makes anything."""
    return firewall_backend(check_text("host", "firewall", name))


def _prepare_host_namespace() -> None:
    """Runs inside an isolated host's namespace and its outside's, as they are
    made: loopback up, and IPv6 off for the interfaces to come.

    cnm's networks are IPv4 only for now, as Docker's are without --ipv6.
    Every interface cnm configures is told to make no IPv6 addresses (see
    :meth:`cnm.kernel.Rtnl.configure_interface`), but IPv6 would still give
    each host end of a veth a multicast route: the host's IPv6 routing table
    would grow with the number of sandboxes, and the kernel walks all of it
    on every link change (O(N^2) for N sandboxes, measured). Sandboxes don't
    get this sysctl: a path under /proc/sys/net costs a look-up that grows
    with the number of namespaces on the machine, and a sandbox has one
    interface per network.
    """
    with _open_new_namespace():
        with open("/proc/sys/net/ipv6/conf/default/disable_ipv6", "w") as f:
            f.write("1")


def _open_new_namespace() -> Rtnl:
    """Loopback up in the namespace of the calling thread (new, and made by
    cnm); returns the rtnetlink socket that did it, still open."""
    rtnl = Rtnl(Namespace("new", "/proc/thread-self/ns/net"), here=True)
    try:
        rtnl.loopback_up()
    except BaseException:
        rtnl.close()
        raise
    return rtnl


class Network:
    """A network made by a driver on a host (``host.create_network``)."""

    def __init__(
        self,
        host: Host,
        spec: NetworkSpec,
        driver: NetworkDriver,
        ipam: str,
        pool: AddressPool,
        plumbing: NetworkPlumbing,
        rules: NetworkRules | None,
        labels: dict[str, str],
    ) -> None:
        self.host = host
        self.name = spec.name
        self.id = spec.id
        self.created = _now()
        self._spec = spec
        self._driver = driver
        self._ipam = ipam
        self._pool = pool
        self._plumbing = plumbing
        self._rules = rules
        self._labels = labels
        self._endpoints: dict[str, Endpoint] = {}
        self._undo = Undo()
        self._deleted = False

    def __repr__(self) -> str:
        return f"<Network {self.name!r} {self.subnet} on {self._plumbing.interface}>"

    @property
    def driver(self) -> str:
        return self._driver.name

    @property
    def subnet(self) -> IPv4Network:
        return self._pool.subnet

    @property
    def gateway(self) -> IPv4Address:
        return self._pool.gateway

    @property
    def ip_range(self) -> IPv4Network | None:
        return self._pool.ip_range

    @property
    def internal(self) -> bool:
        return self._spec.internal

    @property
    def interface(self) -> str:
        """The host-side interface of this network (the bridge)."""
        return self._plumbing.interface

    @property
    @_serialized
    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints.values())

    def endpoint(self, name: str) -> Endpoint:
        check_text(f"network {self.name!r}", "endpoint name", name)
        try:
            return self._endpoints[name]
        except KeyError:
            raise NotFoundError(f"network {self.name!r}: no endpoint named {name!r}") from None

    # ---- endpoints ---------------------------------------------------------------

    @_serialized
    def create_endpoint(
        self,
        name: str,
        *,
        ip: str | IPv4Address | None = None,
        mac: str | None = None,
        ports: Iterable[str | PortMapping] = (),
    ) -> Endpoint:
        """An endpoint with an address from this network's pool, not yet joined."""
        self._check_open()
        check_name("endpoint", name)
        if name in self._endpoints:
            raise ConflictError(f"network {self.name!r}: an endpoint named {name!r} already exists")
        mappings = normalize_ports(ports, owner=f"endpoint {name!r}")
        if mappings and self._rules is None:
            raise InvalidArgumentError(f"endpoint {name!r}: network {self.name!r} ({self.driver}) cannot publish ports")
        if mappings and self.internal:
            raise InvalidArgumentError(f"endpoint {name!r}: network {self.name!r} is internal; ports cannot be published")
        address = parse_address(self.name, "ip", ip)
        mac = check_mac(f"endpoint {name!r}", mac)
        dying = self.host._dying
        with transaction() as undo:
            allocated = dying.retrying(lambda: self._pool.allocate(address))
            undo.books.push(
                f"endpoint {name!r}: address {allocated}", lambda: dying.release(lambda: self._pool.release(allocated))
            )
            interface = IPv4Interface(f"{allocated}/{self.subnet.prefixlen}")
            endpoint = Endpoint(self, name, interface, mac or mac_for(allocated), mappings, address is not None)
            self._endpoints[name] = endpoint
            undo.books.push(f"forget endpoint {name!r}", lambda: self._endpoints.pop(name, None))
        endpoint._undo = undo
        return endpoint

    @_serialized
    def connect(
        self,
        sandbox: Sandbox,
        *,
        ip: str | IPv4Address | None = None,
        mac: str | None = None,
        ports: Iterable[str | PortMapping] = (),
        name: str | None = None,
    ) -> Endpoint:
        """Create an endpoint and join *sandbox* to it (``docker network connect``).

        The endpoint belongs to the connection: ``disconnect`` and deleting the
        sandbox delete it.
        """
        self._check_open()
        _check_child(self.host, f"network {self.name!r}: connect", "sandbox", sandbox, Sandbox)
        sandbox._check_open()
        with transaction(keep=self.host._leftovers.append) as undo:
            endpoint = self.create_endpoint(sandbox.name if name is None else name, ip=ip, mac=mac, ports=ports)
            undo.books.push(f"endpoint {endpoint.name!r}", endpoint.delete)
            endpoint.join(sandbox)
        endpoint._owned_by_connection = True
        return endpoint

    @_serialized
    def disconnect(self, sandbox: Sandbox) -> None:
        """Make *sandbox* leave this network (``docker network disconnect``)."""
        _check_child(self.host, f"network {self.name!r}: disconnect", "sandbox", sandbox, Sandbox)
        for endpoint in self._endpoints.values():
            if endpoint.sandbox is sandbox:
                raise_collected(f"endpoint {endpoint.name!r}: disconnect", endpoint._disconnect())
                return
        raise NotFoundError(f"network {self.name!r}: sandbox {sandbox.name!r} is not connected")

    # ---- lifecycle ---------------------------------------------------------------

    @_serialized
    def delete(self, *, force: bool = False) -> None:
        """Delete the network. With endpoints it refuses, unless *force* (then they go too).

        Idempotent; after a failed step, calling it again retries what is left.
        """
        check_flag(f"network {self.name!r}: delete", "force", force)
        if self._endpoints and not force and not self._deleted:
            names = ", ".join(sorted(self._endpoints))
            raise StateError(f"network {self.name!r} has active endpoints ({names}); disconnect them or use force=True")
        raise_collected(f"network {self.name!r}", self._teardown(force=force))

    def _abandon(self) -> None:
        """Forget the undo steps: the host's namespace, and all of this network in it, is gone."""
        for endpoint in self._endpoints.values():
            endpoint._abandon()
        self._endpoints.clear()
        self._undo, self._deleted = Undo(), True

    def _teardown(self, *, force: bool) -> list[Exception]:
        """Endpoints, then the network's own kernel objects; its name and
        subnet are given back only when all of that is gone."""
        self._deleted = True
        failures: list[Exception] = []
        for endpoint in reversed(list(self._endpoints.values())):
            failures += endpoint._teardown()
        # Veths of deleted sandboxes may still be ports of the bridge: the
        # network goes with nothing of its own left in the kernel.
        failures += self.host._dying.wait()
        failures += self._undo.kernel.unwind()
        if not failures:
            failures += self._undo.books.unwind()
        return failures

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete(force=True)

    def _check_open(self) -> None:
        if self._deleted:
            raise ClosedError(f"network {self.name!r} was deleted")
        self.host._check_open()

    @_serialized
    def inspect(self) -> dict[str, Any]:
        """This network in the shape of ``docker network inspect``."""
        containers = {}
        for endpoint in self._endpoints.values():
            if endpoint.sandbox is not None:
                containers[endpoint.sandbox.id] = {
                    "Name": endpoint.sandbox.name,
                    "EndpointID": endpoint.id,
                    "MacAddress": endpoint.mac,
                    "IPv4Address": str(endpoint.address),
                    "IPv6Address": "",
                }
        return {
            "Name": self.name,
            "Id": self.id,
            "Created": self.created,
            "Scope": "local",
            "Driver": self.driver,
            "EnableIPv4": True,
            "EnableIPv6": False,
            "IPAM": {
                "Driver": self._ipam,
                "Options": {},
                "Config": [
                    {
                        "Subnet": str(self.subnet),
                        "IPRange": str(self.ip_range) if self.ip_range else "",
                        "Gateway": str(self.gateway),
                        "AuxiliaryAddresses": {},
                    }
                ],
            },
            "Internal": self.internal,
            "Attachable": False,
            "Ingress": False,
            "ConfigFrom": {"Network": ""},
            "ConfigOnly": False,
            "Containers": containers,
            "Options": dict(self._spec.options),
            "Labels": dict(self._labels),
        }



class Endpoint:
    """An address (and published ports) on a network, joined to at most one sandbox."""

    def __init__(
        self,
        network: Network,
        name: str,
        address: IPv4Interface,
        mac: str,
        ports: list[PortMapping],
        static_ip: bool,
    ) -> None:
        self.network = network
        self.name = name
        self.id = _new_id()
        self.address = address
        self.mac = mac
        self.ports = ports
        self.published: list[PublishedPort] = []
        self.sandbox: Sandbox | None = None
        self.interface: str | None = None
        self._static_ip = static_ip
        self._gives_route = False
        self._undo = Undo()  # the address and the name in the network
        self._join = Undo()  # interface, port forwards; host ports and the sandbox's record
        self._owned_by_connection = False
        self._deleted = False
        #: the links of its last join, if they went with a namespace the kernel may still be dismantling
        self._old_links: frozenset[int] = frozenset()

    def __repr__(self) -> str:
        where = f" in {self.sandbox.name!r}" if self.sandbox else ""
        return f"<Endpoint {self.name!r} {self.address} on {self.network.name!r}{where}>"

    @property
    def ip(self) -> IPv4Address:
        return self.address.ip

    @_serialized
    def join(self, sandbox: Sandbox) -> None:
        """Attach this endpoint to *sandbox*: interface, address, route, published ports."""
        self._check_open()
        network = self.network
        host = network.host
        _check_child(host, f"endpoint {self.name!r}: join", "sandbox", sandbox, Sandbox)
        sandbox._check_open()
        if self.sandbox is not None:
            raise StateError(f"endpoint {self.name!r} is already joined to sandbox {self.sandbox.name!r}")
        for other in sandbox._endpoints:
            if other.network is network:
                raise ConflictError(
                    f"endpoint {self.name!r}: sandbox {sandbox.name!r} is already connected to network {network.name!r}"
                )
        self._check_host_addresses()
        # Its address must not meet its old interface on the bridge.
        raise_collected(f"endpoint {self.name!r}: waiting for its old interface", host._dying.outlive(self._old_links))
        # What an earlier failed join could not roll back is cleaned up first.
        raise_collected(f"endpoint {self.name!r}: cleaning up an earlier join", self._join.unwind())

        def keep(leftover: Undo) -> None:
            self._join = leftover

        with transaction(keep=keep) as undo:
            spec = self._prepare_join(sandbox, undo)
            self._plumb(host._rtnl, spec, sandbox, undo)
            if self.published:
                assert network._rules is not None  # checked in create_endpoint
                host._firewall.add_port_forwards(network._rules, self._forwards(), undo.kernel)
            # Recorded last: if the rollback of a failed join cannot remove
            # everything, the endpoint is not joined and its next join retries.
            self._mark_joined(sandbox, spec, undo)
        self._join = undo

    # The three steps of a join, apart so that Host.create_sandboxes can run
    # the kernel step of many joins in parallel and batch their port forwards.

    def _prepare_join(self, sandbox: Sandbox, undo: Undo) -> EndpointSpec:
        """The bookkeeping of a join: host ports, interface name, the sandbox's record."""
        network = self.network
        host = network.host
        published = self.published = host._dying.retrying(lambda: host._ports.reserve(self.name, self.ports))

        def release() -> None:
            host._dying.release(lambda: host._ports.release(published))
            self.published = []

        undo.books.push(f"endpoint {self.name!r}: host ports", release)
        interface = sandbox._next_interface()
        gives_route = not network.internal and not any(e._gives_route for e in sandbox._endpoints)
        return EndpointSpec(
            name=self.name,
            id=self.id,
            address=self.address,
            mac=self.mac,
            interface=interface,
            gateway=network.gateway if gives_route else None,
        )

    def _mark_joined(self, sandbox: Sandbox, spec: EndpointSpec, undo: Undo) -> None:
        """Record the join on both sides (the sandbox's teardown finds its endpoints there)."""
        self.sandbox, self.interface, self._gives_route = sandbox, spec.interface, spec.gateway is not None
        sandbox._endpoints.append(self)

        def forget() -> None:
            sandbox._endpoints.remove(self)
            self.sandbox, self.interface, self.published, self._gives_route = None, None, [], False

        undo.books.push(f"endpoint {self.name!r}: joined", forget)

    def _plumb(self, rtnl: Rtnl, spec: EndpointSpec, sandbox: Sandbox, undo: Undo) -> None:
        """The kernel side of a join, by the network's driver (thread-safe given its own *rtnl*)."""
        network = self.network
        network._driver.join(rtnl, network._plumbing, spec, sandbox, undo.kernel)

    def _forwards(self) -> list[PortForward]:
        return [PortForward(p.protocol, p.host_ip, p.host_port, self.address.ip, p.container_port) for p in self.published]

    @_serialized
    def leave(self) -> None:
        """Detach from the sandbox: the interface and published ports go; the address stays.

        If this endpoint gave the sandbox its default route, the next network
        that can (not internal) gives it instead, as in Docker.
        """
        if self.sandbox is None:
            raise StateError(f"endpoint {self.name!r} is not joined to a sandbox")
        raise_collected(f"endpoint {self.name!r}: leave", self._leave())

    @_serialized
    def delete(self) -> None:
        """Leave (if joined) and release the address; idempotent.

        After a failed step, calling it again retries what is left; the
        address stays reserved until the interface is really gone.
        """
        raise_collected(f"endpoint {self.name!r}", self._teardown())

    def _leave(self) -> list[Exception]:
        sandbox, gave_route = self.sandbox, self._gives_route
        failures = self._join.unwind()
        if not failures and gave_route and sandbox is not None and sandbox._dying_links is None:
            failures += sandbox._elect_default_route()
        return failures

    def _abandon(self) -> None:
        """Forget the undo steps: everything they would undo is gone with its namespaces."""
        self._undo, self._join, self._deleted = Undo(), Undo(), True
        self.sandbox, self.interface, self.published, self._gives_route = None, None, [], False

    def _teardown(self) -> list[Exception]:
        self._deleted = True
        failures = self._leave()
        if failures:
            return failures  # the address stays reserved while its interface may be there
        # Its last interface may have gone with a namespace the kernel is still dismantling.
        dying = self.network.host._dying
        with dying.holding(dying.pending(self._old_links)):
            return self._undo.unwind()

    def _disconnect(self) -> list[Exception]:
        """Leave (and, for an endpoint made by connect, delete); return the failures."""
        return self._teardown() if self._owned_by_connection else self._leave()

    def _check_host_addresses(self) -> None:
        """A port published on one host address needs that address on the host (Docker fails at bind)."""
        wanted = {m.host_ip for m in self.ports if m.host_ip is not None}
        if not wanted:
            return
        local = {iface.ip for _, iface in self.network.host._rtnl.addresses()}
        for ip in sorted(wanted - local):
            raise InvalidArgumentError(f"endpoint {self.name!r}: cannot publish on {ip}: no such address on the host")

    def _check_open(self) -> None:
        if self._deleted:
            raise ClosedError(f"endpoint {self.name!r} was deleted")
        self.network._check_open()

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    @_serialized
    def settings(self) -> dict[str, Any]:
        """This endpoint in the shape of Docker's EndpointSettings."""
        return {
            "IPAMConfig": {"IPv4Address": str(self.ip)} if self._static_ip else None,
            "Links": None,
            "Aliases": None,
            "MacAddress": self.mac,
            "DriverOpts": None,
            "NetworkID": self.network.id,
            "EndpointID": self.id,
            "Gateway": "" if self.network.internal else str(self.network.gateway),
            "IPAddress": str(self.ip),
            "IPPrefixLen": self.address.network.prefixlen,
            "IPv6Gateway": "",
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "DNSNames": None,
        }


class Sandbox(_InNamespace):
    """A network namespace that endpoints join (a container's network stack)."""

    def __init__(self, host: Host, name: str, namespace: Namespace, rtnl: Rtnl | None = None) -> None:
        self.host = host
        self.name = name
        self.id = _new_id()
        self.namespace = namespace
        #: a socket inside the namespace, kept while this is the host's newest sandbox
        self._rtnl = rtnl
        self._processes = []
        self._endpoints: list[Endpoint] = []
        self._undo = Undo()
        self._deleted = False
        #: set while the namespace is being deleted: links with an end in it go with it
        self._dying_links: list[int] | None = None
        #: links that went with the namespace, whose addresses and ports are not yet released
        self._went_with_namespace: list[int] = []

    def __repr__(self) -> str:
        return f"<Sandbox {self.name!r} {self.namespace.path}>"

    @property
    def key(self) -> str:
        """The namespace's path (Docker's SandboxKey): ``nsenter --net=KEY`` enters it."""
        return self.namespace.path

    @property
    @_serialized
    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints)

    @_serialized
    def address(self, network: Network) -> IPv4Interface:
        """The sandbox's interface address on *network*."""
        _check_child(self.host, f"sandbox {self.name!r}: address", "network", network, Network)
        for endpoint in self._endpoints:
            if endpoint.network is network:
                return endpoint.address
        raise NotFoundError(f"sandbox {self.name!r} is not connected to network {network.name!r}")

    @_serialized
    def inspect(self) -> dict[str, Any]:
        """This sandbox in the shape of a container's ``NetworkSettings``."""
        published = [p for e in self._endpoints for p in e.published]
        return {
            "SandboxID": self.id,
            "SandboxKey": self.key,
            "Ports": docker_ports_view(published),
            "Networks": {e.network.name: e.settings() for e in self._endpoints},
        }

    # ---- the SandboxPort drivers use ---------------------------------------------

    def configure(
        self, interface: str, address: IPv4Interface, gateway: IPv4Address | None, what: str, *, index: int | None = None
    ) -> None:
        if self._rtnl is not None:
            self._rtnl.configure_interface(interface, address, gateway, what, index=index)
        else:
            self._configure(interface, address, gateway, what, index)

    def _cool(self) -> None:
        """Close the kept socket (another sandbox is newer, or this one goes)."""
        if self._rtnl is not None:
            self._rtnl.close()
            self._rtnl = None

    def release_link(self, host: Rtnl, index: int, what: str) -> None:
        if self._dying_links is not None:
            self._dying_links.append(index)  # goes with the namespace (see _delete_many)
        else:
            host.delete_link(index, what)

    def _next_interface(self) -> str:
        used = {e.interface for e in self._endpoints}
        n = 0
        while f"eth{n}" in used:
            n += 1
        return f"eth{n}"

    def _elect_default_route(self) -> list[Exception]:
        """Give the default route to the first endpoint that can, if none has it."""
        if any(e._gives_route for e in self._endpoints):
            return []
        for endpoint in self._endpoints:
            if not endpoint.network.internal and endpoint.interface is not None:
                interface, gateway = endpoint.interface, endpoint.network.gateway
                what = f"sandbox {self.name!r}: default route"

                def inside() -> None:
                    with Rtnl(self.namespace, here=True) as rtnl:
                        rtnl.add_route(IPv4Network("0.0.0.0/0"), gateway, what, oif=rtnl.link_index(interface))

                try:
                    self.namespace.quick(inside)
                except Exception as exc:  # noqa: BLE001 - reported with the leave
                    return [exc]
                endpoint._gives_route = True  # the route goes with its interface; leave resets the flag
                return []
        return []

    # ---- lifecycle ---------------------------------------------------------------

    @_serialized
    def delete(self) -> None:
        """Delete the sandbox: its processes, its namespace and its interfaces.

        Endpoints made by ``network.connect`` are deleted; endpoints that were
        created separately and joined are left (they keep their address).
        Idempotent; after a failed step, calling it again retries what is left.

        Returns once the kernel has been told: it removes the sandbox's
        interfaces a little later, and until it has, their addresses and
        host ports are not given to anyone else (:meth:`Host.settle` waits).
        """
        raise_collected(f"sandbox {self.name!r}", Sandbox._delete_many([self], wait=False))

    @staticmethod
    def _delete_many(sandboxes: Sequence[Sandbox], *, wait: bool) -> list[Exception]:
        """Delete sandboxes, namespaces first; return the failures.

        Deleting a veth by itself costs ~16 ms (an RCU grace period each);
        deleting the namespace takes the sandbox end, and so the pair, for a
        fraction of that, but the kernel does it later, on its own. So every
        namespace goes first, and the veths, with the addresses and host
        ports they hold, are handed to the host's :class:`~cnm.dying.DyingLinks`:
        those are given back once the kernel has removed the veths. With
        *wait*, this returns only then (one wait for all of them); without,
        as soon as the kernel has been told.
        """
        failures: list[Exception] = []
        hosts: set[Host] = set()
        # The published ports of all of them go in one firewall transaction.
        for host in {sandbox.host for sandbox in sandboxes}:
            host._firewall.undo_together(
                step for sandbox in sandboxes for endpoint in sandbox._endpoints for step in endpoint._join.kernel.steps()
            )
        for sandbox in sandboxes:
            if sandbox._deleted and not len(sandbox._undo) and not sandbox._endpoints:
                continue  # already gone
            sandbox._deleted = True
            host = sandbox.host
            hosts.add(host)
            # Straight into the sandbox's own list: an interruption loses none of them.
            sandbox._dying_links = sandbox._went_with_namespace
            known = len(sandbox._dying_links)
            try:
                failures += _collect(sandbox._stop_processes)
                for endpoint in reversed(sandbox._endpoints):
                    failures += endpoint._join.kernel.unwind()  # port forwards; veths join _dying_links
                failures += sandbox._undo.kernel.unwind()  # its socket, then its namespace
            finally:
                sandbox._dying_links = None
            if len(sandbox._undo.kernel):
                # The namespace is still there: its veths will not go by
                # themselves. Deleting the sandbox again deletes them first.
                for index in sandbox._went_with_namespace[known:]:
                    sandbox._undo.kernel.push(f"sandbox {sandbox.name!r}: veth {index}", _link_remover(host._rtnl, index))
                continue
            for endpoint in sandbox._endpoints:  # if it joins again, or is deleted by itself
                endpoint._old_links = frozenset(sandbox._went_with_namespace)
            if any(len(e._join.kernel) for e in sandbox._endpoints):
                continue  # a port forward is still there: everything stays held until it goes
            # Names are given back now; addresses and host ports once the veths are gone.
            with host._dying.holding(sandbox._went_with_namespace):
                for endpoint in reversed(sandbox._endpoints[:]):
                    failures += endpoint._join.books.unwind()
                    if endpoint._owned_by_connection:
                        failures += endpoint._teardown()
                failures += sandbox._undo.books.unwind()
            sandbox._went_with_namespace = []
        if wait:
            for host in hosts:
                failures += host._dying.wait()
        return failures

    def _abandon(self) -> None:
        """Forget the undo steps: the namespace, and everything in it, is gone."""
        self._undo, self._deleted = Undo(), True
        self._endpoints.clear()

    def _check_open(self) -> None:
        if self._deleted:
            raise ClosedError(f"sandbox {self.name!r} was deleted")
        self.host._check_open()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()
