"""The host: a network namespace in which cnm builds networks, with sandboxes beside it.

Every public operation follows one pattern: validate everything that can be
validated without the kernel (raising a typed error before any change), then
make the changes inside :func:`cnm.undo.transaction`, where each change
registers its inverse as it succeeds. On failure the transaction unwinds and
the kernel is as it was; on success the undo log is handed to the record of
the object just made, and deleting that object replays it.

Ownership: a host owns its networks and sandboxes; a network owns its
endpoints; an endpoint joined to a sandbox holds a second log (the join) that
``leave()`` unwinds. Closing a host deletes its children in reverse creation
order, collects every failure, and raises them together as one
:class:`~cnm.errors.TeardownError`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from typing import TYPE_CHECKING

from .._checks import check_collection, check_name, check_text, describe
from ..drivers import NetworkDriver
from ..errors import ConflictError, ExhaustedError, InvalidArgumentError, NotFoundError
from ..firewall import FirewallFactory, firewall_backend
from ..interrupts import deferred_interrupts, uninterruptible
from ..facade import Kernel
from ..netns import Namespace
from ..owner import OwnerRecord
from ..undo import Undo, raise_collected, transaction
from . import bulk, isolated, modes, teardown
from . import network as networks
from ._common import InNamespace, collect
from ._records import NetworkRecord, Processes, SandboxRecord, stop_all
from ._services import Services, serialized
from .network import AddressArgument, Network
from .sandbox import Sandbox

if TYPE_CHECKING:
    from ..ports import PortMapping
    from .bulk import SandboxRequest
    from .isolated import Outside, Underlay

__all__ = ["Host"]


class Host(InNamespace):
    """A network namespace in which cnm builds networks, with sandboxes beside it.

    ``Host()`` is the machine's own namespace, for container runtimes.
    ``Host.isolated()`` makes a fresh one (plus an "outside" namespace playing
    the internet), for tests, demos and experiments; closing it removes all.
    What a host's process could not remove because it died, :func:`cnm.gc`
    removes (see :mod:`cnm.leftovers`).
    """

    outside: Outside | None

    def __init__(
        self,
        *,
        firewall: str = "nftables",
        kernel: Kernel | None = None,
        drivers: Mapping[str, Callable[[], NetworkDriver]] | None = None,
    ) -> None:
        """The machine's own namespace. *kernel* replaces the real kernel
        (:class:`cnm.facade.Kernel`), for tests of the orchestration.
        *drivers* are network drivers of this host's own, by name (a
        zero-argument factory each), found before :data:`cnm.drivers.DRIVERS`."""
        factory = firewall_factory(firewall)
        kernel = check_kernel(kernel)
        own = check_drivers("host", drivers)
        namespace = kernel.current_namespace()
        record = claim_token(kernel, "machine", namespace.path, firewall)
        with transaction() as undo:
            undo.books.push(f"host {namespace.name!r}: owner record", record.remove)
            # Before anything is made there, and removed after all of it: for
            # gc to find the namespace if this process dies (see cnm.leftovers).
            pin = kernel.pin_namespace(record.token, namespace)
            undo.books.push(f"host {namespace.name!r}: namespace pin", pin.delete)
            self._setup(kernel, namespace, namespace.name, factory, record.token, undo)
            self._services.seed = kernel.machine_id()
            self._services.drivers = own
        kernel.watch(self, record, f"host {self.name!r}")

    def _setup(
        self, kernel: Kernel, namespace: Namespace, name: str, firewall: FirewallFactory, token: str, undo: Undo
    ) -> None:
        self.namespace = namespace
        self.outside = None
        #: its addresses on the uplink (isolated hosts only)
        self._uplink: tuple[IPv4Interface, IPv6Interface] | None = None
        #: its address on a lab's data plane, and the namespace it is in (a lab's hosts only)
        self._tunnel_address: IPv4Interface | None = None
        self._tunnels: Namespace | None = None
        self.name = name
        self.token = token
        self._processes = Processes(token)
        self._outside_processes: Processes | None = None
        self._undo = undo
        services = self._services = Services(self, kernel, name, namespace, token)
        rtnl = kernel.rtnl(namespace)
        undo.books.push(f"host {name!r}: rtnetlink socket", rtnl.close)
        # Where this host's sandboxes are mounted (see cnm.netns for why not /run/netns).
        mounts = kernel.mount_dir(token)
        undo.kernel.push(f"host {name!r}: sandbox namespace directory", lambda: mounts.delete())
        backend = firewall(namespace, token)
        undo.books.push(f"host {name!r}: firewall", backend.close)
        diag = kernel.sock_diag(namespace)
        undo.books.push(f"host {name!r}: sock_diag socket", diag.close)
        services.attach(rtnl, mounts, backend, diag)
        modes.add_predefined(services, self)

    @classmethod
    def isolated(
        cls,
        name: str | None = None,
        *,
        firewall: str = "nftables",
        kernel: Kernel | None = None,
        drivers: Mapping[str, Callable[[], NetworkDriver]] | None = None,
    ) -> Host:
        """A fresh host namespace, with ``host.outside`` linked to it by a veth.

        The host has ``address`` 198.18.0.2/24 on its ``eth0``, the outside has
        ``outside_address`` 198.18.0.1/24 and is the host's default gateway
        (addresses with their prefix, as :class:`ipaddress.IPv4Interface`:
        ``host.address.ip`` is the bare address).
        *kernel* and *drivers* are as for ``Host()``.
        """
        return cls.on_underlay(None, name, firewall=firewall, kernel=kernel, drivers=drivers)

    @classmethod
    def on_underlay(
        cls,
        underlay: Underlay | None,
        name: str | None = None,
        *,
        firewall: str = "nftables",
        kernel: Kernel | None = None,
        drivers: Mapping[str, Callable[[], NetworkDriver]] | None = None,
    ) -> Host:
        """An isolated host whose uplink is a port of *underlay*'s bridge, with
        no outside of its own (what :class:`cnm.Lab` makes its hosts with); with
        None, ``Host.isolated``."""
        label = check_name("host", name) if name is not None else "host"
        factory = firewall_factory(firewall)
        kernel = check_kernel(kernel)
        own = check_drivers(f"host {label!r}", drivers)
        record = claim_token(kernel, "isolated", kernel.current_namespace().path, firewall)
        token = record.token
        host = cls.__new__(cls)
        try:
            with transaction() as undo:
                undo.books.push(f"host {label!r}: owner record", record.remove)
                host_ns, outside_ns = isolated.make_namespaces(kernel, token, name, label, undo.kernel, outside=underlay is None)
                host._setup(kernel, host_ns, label, factory, token, undo)
                host._services.drivers = own
                host._outside_processes = Processes(token)
                if underlay is None:
                    assert outside_ns is not None
                    host._uplink = (isolated.HOST_ADDRESS, isolated.HOST_ADDRESS6)
                else:
                    outside_ns = underlay.namespace
                    host._uplink = (underlay.address, underlay.address6)
                    host._tunnel_address = underlay.tunnel_address
                    host._tunnels = isolated.make_tunnels(kernel, token, label, underlay, undo.kernel)
                host.outside = isolated.Outside(outside_ns, host._outside_processes, host._services)
                isolated.wire_uplink(host._services, host.outside, underlay)
        except BaseException:
            with deferred_interrupts():
                # Whatever the rollback could not remove carries the token: sweep it.
                if not kernel.sweep(f"cnm-{token}-") + collect(lambda: kernel.remove_mount_dir(token)):
                    collect(record.remove)
            raise
        kernel.watch(host, record, f"host {label!r}")
        return host


    # ---- properties ------------------------------------------------------------

    # The addresses below are interfaces (address and prefix: 198.18.0.2/24),
    # as ``sandbox.address(network)`` and ``endpoint.address`` are, and as
    # Docker's inspect writes an endpoint's address (172.17.0.2/16): an
    # address on a link always comes with its subnet. ``.ip`` is the bare
    # address, to connect to.

    @property
    def address(self) -> IPv4Interface | None:
        """The host's address on its uplink, with its prefix (isolated hosts
        only): ``host.address.ip`` to connect to."""
        return self._uplink[0] if self._uplink is not None else None

    @property
    def uplink(self) -> str | None:
        """The name of the host's uplink towards its outside (isolated hosts
        only): the parent for macvlan and ipvlan networks, on 198.18.0.0/24."""
        return isolated.UPLINK if self.outside is not None else None

    @property
    def tunnel_address(self) -> IPv4Interface | None:
        """The host's address on its lab's data plane, where its overlay
        tunnels start (a :class:`cnm.Lab`'s hosts only; 198.18.1.0/24)."""
        return self._tunnel_address

    @property
    def tunnels(self) -> Namespace | None:
        """The namespace of the host's tunnel end (a :class:`cnm.Lab`'s hosts
        only): its data link and its overlays' VXLAN sockets, apart from the
        host's own namespace so that nothing there can reach the other hosts'."""
        return self._tunnels

    @property
    def outside_address(self) -> IPv4Interface | None:
        """The outside's address on the uplink, the host's default gateway (isolated hosts only)."""
        return self.outside.address if self.outside is not None else None

    @property
    def address6(self) -> IPv6Interface | None:
        """The host's IPv6 address on its uplink, with its prefix (isolated hosts only)."""
        return self._uplink[1] if self._uplink is not None else None

    @property
    def outside_address6(self) -> IPv6Interface | None:
        """The outside's IPv6 address on the uplink (isolated hosts only)."""
        return self.outside.address6 if self.outside is not None else None

    @property
    @serialized
    def networks(self) -> list[Network]:
        return [r.handle for r in self._services.networks.values()]

    @property
    @serialized
    def sandboxes(self) -> list[Sandbox]:
        return [r.handle for r in self._services.sandboxes.values()]

    def network(self, name: str) -> Network:
        check_text(f"host {self.name!r}", "network name", name)
        try:
            return self._services.networks[name].handle
        except KeyError:
            raise NotFoundError(f"host {self.name!r}: no network named {name!r}") from None

    def sandbox(self, name: str) -> Sandbox:
        check_text(f"host {self.name!r}", "sandbox name", name)
        try:
            return self._services.sandboxes[name].handle
        except KeyError:
            raise NotFoundError(f"host {self.name!r}: no sandbox named {name!r}") from None

    @property
    def closed(self) -> bool:
        return self._services.closed

    def __repr__(self) -> str:
        return f"<Host {self.name!r} {self.namespace.name}{' closed' if self._services.closed else ''}>"

    # ---- networks and sandboxes ------------------------------------------------------

    @serialized
    def create_network(
        self,
        name: str,
        driver: str = "bridge",
        *,
        subnet: AddressArgument = None,
        gateway: AddressArgument = None,
        ip_range: AddressArgument = None,
        internal: bool = False,
        options: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        ipam: str = "default",
        ipv4: bool = True,
        ipv6: bool = False,
    ) -> Network:
        """Create a network (like ``docker network create``).

        *ipv6* adds IPv6 (``--ipv6``); ``ipv4=False`` makes an IPv6-only network
        (``--ipv4=false``). *subnet*, *gateway* and *ip_range* each take one
        value or one per family (``subnet=["10.1.0.0/24", "fd00:1::/64"]``),
        as Docker takes ``--subnet`` twice.

        A family with no *subnet* gets one from IPAM: for IPv4 the next free
        pool of Docker's default list that overlaps no network or route of
        this host; for IPv6 the next free /64 of a unique local /48 derived
        from the host (for ``Host()``, from the machine's id, so that it stays
        the same across restarts).
        """
        self._check_open()
        record = networks.create(
            self._services, self, name, driver, subnet=subnet, gateway=gateway, ip_range=ip_range,
            internal=internal, options=options, labels=labels, ipam=ipam, ipv4=ipv4, ipv6=ipv6,
        )  # fmt: skip
        return record.handle

    @serialized
    def create_sandbox(
        self,
        name: str,
        network_mode: str | Network | Sandbox | None = None,
        *,
        ip: str | IPv4Address | None = None,
        ip6: str | IPv6Address | None = None,
        mac: str | None = None,
        ports: Iterable[str | PortMapping] | str = (),
    ) -> Sandbox:
        """A sandbox: a network namespace with loopback up, by default its own.

        *network_mode* is Docker's ``--network`` (see :mod:`cnm.api.modes`):
        a network (or its name) to connect to in the same call, with *ip*,
        *ip6*, *mac* and *ports* as for :meth:`Network.connect`; ``"host"``,
        the host's own namespace; ``"none"``, loopback only for good;
        ``"container:NAME"`` or a Sandbox, that sandbox's namespace, shared.
        """
        self._check_open()
        return modes.create_sandbox(
            self._services, self, name, network_mode, ip=ip, ip6=ip6, mac=mac, ports=ports
        ).handle

    @serialized
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
        target = self._services.network(where, network) if network is not None else None
        return [r.handle for r in bulk.create_sandboxes(self._services, self, requests, target)]

    @serialized
    def delete_sandboxes(self, sandboxes: Iterable[Sandbox]) -> None:
        """Delete many sandboxes at once (batched: one wait for the kernel for all).

        Like :meth:`Sandbox.delete` for each; failures are collected and
        raised together, and calling it again retries what is left.
        """
        services = self._services
        where = f"host {self.name!r}: delete_sandboxes"
        doomed = [services.sandbox(where, s, gone=True) for s in check_collection(where, "sandboxes", sandboxes, "Sandbox objects")]
        records = [r for r in doomed if r is not None]
        for record in records:
            modes.check_deletable(record, records)
        records.sort(key=lambda r: r.shares is None)  # sharers before the namespaces they share
        raise_collected(f"host {self.name!r}: delete sandboxes", teardown.delete_sandboxes(services, records, wait=True))

    @serialized
    def settle(self) -> None:
        """Wait until the kernel has removed the interfaces of every deleted
        sandbox, and give their addresses and host ports back.

        ``sandbox.delete()`` returns as soon as the kernel has been told;
        cnm settles by itself whenever it allocates. Call this to know that
        nothing of the deleted sandboxes is left in the kernel.
        """
        self._check_open()
        raise_collected(f"host {self.name!r}: settle", self._services.dying.wait())

    # ---- lifecycle ---------------------------------------------------------------

    @uninterruptible
    @serialized
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
        services = self._services
        if services.closed and not len(self._undo) and not services.children and not services.leftovers and not len(services.dying):
            return
        services.closed = True
        failures: list[Exception] = []
        outside = [self._outside_processes] if self._outside_processes is not None else []
        # One grace period for all of them (see stop_all).
        failures += collect(lambda: stop_all([self._processes, *outside, *(s.processes for s in services.sandboxes.values())]))
        if self.namespace.owned:
            # A network that spans hosts is deleted properly, so that the
            # other hosts forget this one (after the sandboxes, in one batch:
            # their endpoints one by one would cost a veth deletion each);
            # the rest goes with the namespaces.
            spanning = [
                c for c in services.children
                if isinstance(c, NetworkRecord) and c.driver.capabilities.spans_hosts and not c.deleted
            ]  # fmt: skip
            if spanning:
                doomed = [c for c in reversed(services.children) if isinstance(c, SandboxRecord)]
                failures += teardown.delete_sandboxes(services, doomed, wait=True)
                for network in reversed(spanning):
                    failures += networks.teardown(services, network)
            for sandbox in services.sandboxes.values():
                sandbox.cool()  # an open socket would keep its namespace alive
            gone = self._undo.kernel.unwind()
            if not gone:  # (a failed step stays in the log and is retried by the next close)
                gone = services.kernel.sweep(f"cnm-{self.token}-")
            failures += gone
            if not gone:
                services.dying.abandon()
                services.leftovers.clear()
                for child in services.children:
                    if isinstance(child, NetworkRecord):
                        networks.abandon(child)
                    else:
                        teardown.abandon(child)
                services.children.clear()
                services.networks.clear()
                services.sandboxes.clear()
        else:
            for leftover in services.leftovers:
                failures += leftover.unwind()
            services.leftovers[:] = [u for u in services.leftovers if len(u)]
            doomed = [c for c in reversed(services.children) if isinstance(c, SandboxRecord)]
            failures += teardown.delete_sandboxes(services, doomed, wait=True)
            for child in reversed(services.children[:]):
                if isinstance(child, NetworkRecord):
                    failures += networks.teardown(services, child)
            failures += services.dying.wait()  # sandboxes deleted earlier may still hold their veths
        if not services.children and not services.leftovers and not len(services.dying):
            failures += self._undo.unwind()  # the host's sockets (a retry needs them while anything is left)
        raise_collected(f"host {self.name!r}", failures)

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        self._services.check_open()


def claim_token(kernel: Kernel, kind: str, netns_path: str, firewall: str) -> OwnerRecord:
    """A fresh host token, recorded as this process's before anything is made
    (the record goes after everything went; see cnm.owner). A token that is
    taken (by a live host, or a dead one gc has not collected) is drawn again."""
    for _ in range(8):
        try:
            return kernel.claim_owner(secrets.token_hex(3), kind, netns_path, firewall)
        except ConflictError:
            continue
    raise ExhaustedError("cnm: no free host token after 8 draws (run cnm.gc() to collect dead hosts' records)")


def check_drivers(where: str, drivers: object) -> dict[str, Callable[[], NetworkDriver]]:
    """A host's own drivers, checked: names (strings) to zero-argument factories."""
    if drivers is None:
        return {}
    if not isinstance(drivers, Mapping):
        raise InvalidArgumentError(f"{where}: drivers must be a mapping of names to driver factories, not {describe(drivers)}")
    for name, factory in drivers.items():
        check_text(where, "driver name", name)
        if not callable(factory):
            raise InvalidArgumentError(f"{where}: driver {name!r} must be a zero-argument factory, not {describe(factory)}")
    return dict(drivers)


def check_kernel(kernel: Kernel | None) -> Kernel:
    """The kernel facade a host talks to: the real one unless another is given."""
    return Kernel() if kernel is None else kernel


def firewall_factory(name: str) -> FirewallFactory:
    """The firewall backend called *name*, found before a host makes anything."""
    return firewall_backend(check_text("host", "firewall", name))

