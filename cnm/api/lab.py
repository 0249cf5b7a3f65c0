"""A lab: several isolated hosts on one underlay network, with one outside, in one process.

For test harnesses that simulate a cluster: ``cnm.Lab(["h1", "h2", "h3"])``
makes an outside namespace holding a bridge, the underlay, with the
outside's addresses 198.18.0.1/24 and 2001:2::1/64, and one isolated host
per name whose uplink (``host.uplink``) is a port of that bridge, with the
addresses 198.18.0.2, .3, ... (and 2001:2::2, ::3, ...) in order. Each host
is a full :class:`~cnm.Host`: its networks, sandboxes, NAT and published
ports work as on a host of its own, and hosts reach each other and the
outside over the underlay (a macvlan network on ``host.uplink`` puts
sandboxes of several hosts on one wire).

Overlay networks (``lab.create_network``) do not cross the underlay but a
data plane of their own: a bridge in the namespace ``lab.dataplane``, on
which each host has a tunnel namespace (``host.tunnels``) holding its data
link ``eth1`` (``host.tunnel_address``: 198.18.1.2/24, .3, ... in order; the
data plane's port of the host at .N is ``dp-N``). The VXLAN sockets live
there, so neither the outside nor any sandbox with a namespace of its own
can reach a tunnel end (see :mod:`cnm.drivers.overlay`), as a cluster keeps
its data-path network apart (Docker swarm's ``--data-path-addr``).

Closing the lab closes its hosts, then removes the data plane and the
outside; a host may be closed earlier by itself, which takes it off the
underlay and the data plane. All or nothing:
if any part cannot be made, nothing of the lab is left. Like every host, the
lab has an owner record, so :func:`cnm.gc` removes what a lab's dead process
left.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Interface, IPv6Network, ip_network
from typing import Any

import attrs

from .._checks import check_collection, check_name
from ..drivers import NetworkDriver
from ..drivers.overlay import LocalPeers, OverlayDriver
from ..errors import ClosedError, ConflictError, InvalidArgumentError, NotFoundError
from ..facade import Kernel
from ..ipam.default import ula_prefix
from ..interrupts import deferred_interrupts, uninterruptible
from ..kernel import Rtnl, random_mac
from ..netns import Namespace
from ..undo import raise_collected, transaction
from . import isolated
from ._common import collect
from ._records import Processes
from .host import Host, check_drivers, check_kernel, claim_token, firewall_factory
from .network import Network

__all__ = ["MAX_HOSTS", "Lab"]

#: The underlay is a /24 with the outside at .1: at most this many hosts.
MAX_HOSTS = 200
BRIDGE = "underlay"
DATA_BRIDGE = "dataplane"


class Lab:
    """Isolated hosts on one underlay network, with one outside; see the module documentation."""

    def __init__(
        self,
        hosts: Iterable[str] | int = 2,
        *,
        firewall: str = "nftables",
        kernel: Kernel | None = None,
        drivers: Mapping[str, Callable[[], NetworkDriver]] | None = None,
    ) -> None:
        names = _host_names(hosts)
        firewall_factory(firewall)  # all checked before anything is made
        own_drivers = check_drivers("lab", drivers)
        kernel = check_kernel(kernel)
        record = claim_token(kernel, "isolated", kernel.current_namespace().path, firewall)
        self.token = record.token
        self._hosts: list[Host] = []
        self._closed = False
        self._networks_lock = threading.Lock()
        try:
            with transaction() as undo:
                undo.books.push(f"lab {self.token}: owner record", record.remove)
                namespace, socket = kernel.create_namespace(f"cnm-{self.token}-outside", ipv6_off=True)
                undo.kernel.push(f"lab {self.token}: outside namespace", namespace.delete)
                try:
                    bridge = _make_underlay(socket, namespace, self.token)
                finally:
                    socket.close()
                #: the data plane: the segment the overlay's tunnels cross, with the hosts only on it
                self.dataplane, socket = kernel.create_namespace(f"cnm-{self.token}-dataplane", ipv6_off=True)
                undo.kernel.push(f"lab {self.token}: data plane namespace", self.dataplane.delete)
                try:
                    data_bridge = socket.add_bridge(DATA_BRIDGE, alias=f"cnm:{self.token}:dataplane", mac=random_mac())
                finally:
                    socket.close()
                #: the lab's outside, the "internet" all hosts share
                self._outside_processes = Processes(self.token)
                self.outside = isolated.Outside(namespace, self._outside_processes, _LabServices(self))
                #: which hosts have which overlay network (see cnm.drivers.overlay)
                self.peers = LocalPeers()
                for i, name in enumerate(names):
                    underlay = isolated.Underlay(
                        namespace,
                        bridge,
                        IPv4Interface(f"{isolated.UPLINK_SUBNET[2 + i]}/{isolated.UPLINK_SUBNET.prefixlen}"),
                        IPv6Interface(f"{isolated.UPLINK_SUBNET6[2 + i]}/{isolated.UPLINK_SUBNET6.prefixlen}"),
                        self.dataplane,
                        data_bridge,
                        IPv4Interface(f"{isolated.DATA_SUBNET[2 + i]}/{isolated.DATA_SUBNET.prefixlen}"),
                        f"dp-{2 + i}",
                    )
                    overlay = _OverlayFactory(self.peers, underlay.tunnel_address.ip)
                    own: dict[str, Callable[[], NetworkDriver]] = {"overlay": overlay, **own_drivers}
                    host = Host.on_underlay(underlay, name, firewall=firewall, kernel=kernel, drivers=own)
                    overlay.host = weakref.ref(host)
                    undo.kernel.push(f"lab {self.token}: host {name!r}", host.close)
                    self._hosts.append(host)
        except BaseException:
            with deferred_interrupts():
                # What the rollback could not remove carries a token: the lab's, or a host's.
                left = kernel.sweep(f"cnm-{self.token}-")
                for host in self._hosts:
                    left += kernel.sweep(f"cnm-{host.token}-") + collect(lambda host=host: kernel.remove_mount_dir(host.token))  # type: ignore[misc]
                if not left:
                    collect(record.remove)
            raise
        self._undo = undo
        kernel.watch(self, record, f"lab {self.token}")

    @property
    def hosts(self) -> list[Host]:
        """The hosts, in the order given (their uplink addresses .2, .3, ...)."""
        return list(self._hosts)

    def host(self, name: str) -> Host:
        for host in self._hosts:
            if host.name == name:
                return host
        raise NotFoundError(f"lab {self.token}: no host named {name!r}")

    def create_network(
        self,
        name: str,
        driver: str = "overlay",
        *,
        subnet: str | IPv4Network | IPv6Network | Iterable[str | IPv4Network | IPv6Network] | None = None,
        ipv4: bool = True,
        ipv6: bool = False,
        **kwargs: Any,
    ) -> list[Network]:
        """The overlay network *name* on every host, in host order (``docker
        network create -d overlay``): one network across the lab.

        *subnet* is one subnet or one per family, as for ``create_network``;
        an IPv4 one is needed (unless ``ipv4=False``). With *ipv6* and no
        IPv6 subnet, the lab takes the lowest /64 of its unique local /48
        (:func:`cnm.ipam.default.ula_prefix` of the lab's token) that none of
        its hosts' networks has. Each host gets its own ``ip_range`` of each
        subnet (the first 1/2^k of it to the first host, and so on), so that
        addresses never repeat across hosts; the gateways are the same
        everywhere. *kwargs* are those of ``create_network`` but
        ``ip_range``. All or nothing.
        """
        where = f"lab {self.token}: network {name!r}"
        if driver != "overlay":
            raise InvalidArgumentError(f"{where}: only overlay networks span the lab (create others on each host)")
        if "ip_range" in kwargs:
            raise InvalidArgumentError(f"{where}: ip_range is the lab's to choose")
        for flag, value in (("ipv4", ipv4), ("ipv6", ipv6)):
            if not isinstance(value, bool):
                raise InvalidArgumentError(f"{where}: {flag} must be True or False, not {value!r}")
        subnets = _subnets_by_family(where, subnet)
        if ipv4 and 4 not in subnets:
            raise InvalidArgumentError(f"{where}: an IPv4 subnet is needed (the lab does not pick one; or ipv4=False)")
        with self._networks_lock:  # one network at a time: a /64 picked is taken before the next is picked
            return self._create_network(where, name, driver, subnets, ipv4, ipv6, kwargs)

    def _create_network(
        self, where: str, name: str, driver: str, subnets: dict[int, IPv4Network | IPv6Network], ipv4: bool, ipv6: bool, kwargs: Any
    ) -> list[Network]:
        if ipv6 and 6 not in subnets:
            subnets[6] = self._free_ula()
        families = sorted(subnets)
        ranges = {family: _split(where, subnets[family], len(self._hosts)) for family in families}
        made: list[Network] = []
        try:
            for i, host in enumerate(self._hosts):
                made.append(
                    host.create_network(
                        name,
                        driver,
                        subnet=[str(subnets[f]) for f in families],
                        ip_range=[str(ranges[f][i]) for f in families],
                        ipv4=ipv4,
                        ipv6=ipv6,
                        **kwargs,
                    )
                )
        except BaseException as exc:
            for network in reversed(made):
                for failure in collect(lambda network=network: network.delete(force=True)):  # type: ignore[misc]
                    exc.add_note(f"removing it from host {network.host.name!r} again failed: {failure!r}")
            raise
        return made

    def _free_ula(self) -> IPv6Network:
        """The lowest /64 of the lab's unique local /48 that no network of its hosts overlaps."""
        taken = [n.subnet6 for host in self._hosts for n in host.networks if n.subnet6 is not None]
        for candidate in ula_prefix(f"lab-{self.token}").subnets(new_prefix=64):
            if not any(candidate.overlaps(t) for t in taken):
                return candidate
        raise ConflictError(f"lab {self.token}: no /64 of its unique local /48 is free")  # pragma: no cover - 65536 networks

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return f"<Lab {self.token} {[h.name for h in self._hosts]}{' closed' if self._closed else ''}>"

    @uninterruptible
    def close(self) -> None:
        """Close every host, then remove the outside; failures are raised together. Idempotent."""
        self._closed = True
        failures = collect(self._outside_processes.stop)
        failures += self._undo.unwind()
        raise_collected(f"lab {self.token}", failures)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@attrs.define
class _OverlayFactory:
    """A lab host's overlay driver, once the host (and so its tunnel namespace) exists."""

    peers: LocalPeers
    vtep: IPv4Address
    host: weakref.ref[Host] | None = None  # weak: the host holds this factory

    def __call__(self) -> NetworkDriver:
        host = self.host() if self.host is not None else None
        if host is None or host.tunnels is None:
            raise ClosedError("lab: the host of this overlay driver is gone")
        return OverlayDriver(self.peers, self.vtep, tunnels=host.tunnels, host=host.name)


class _LabServices:
    """What the lab's Outside asks of its owner: whether it is still open."""

    def __init__(self, lab: Lab) -> None:
        self._lab = lab
        self.lock = threading.RLock()

    def check_open(self) -> None:
        if self._lab.closed:
            raise ClosedError(f"lab {self._lab.token} is closed")


def _subnets_by_family(where: str, subnet: object) -> dict[int, IPv4Network | IPv6Network]:
    """*subnet* (None, one, or at most one per family) parsed, by family."""
    if subnet is None:
        return {}
    one = isinstance(subnet, (str, IPv4Network, IPv6Network))  # a network iterates over its addresses
    given = [subnet] if one else check_collection(where, "subnet", subnet, "subnets")
    found: dict[int, IPv4Network | IPv6Network] = {}
    for item in given:
        try:
            if not isinstance(item, (str, IPv4Network, IPv6Network)):
                raise TypeError(type(item).__name__)
            network = ip_network(item)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"{where}: subnet {item!r} is not an IP network") from exc
        if network.version in found:
            raise InvalidArgumentError(f"{where}: more than one IPv{network.version} subnet given")
        found[network.version] = network
    return found


def _split(where: str, subnet: IPv4Network | IPv6Network, hosts: int) -> list[IPv4Network] | list[IPv6Network]:
    """*subnet* cut into one range per host (the fewest equal parts, a power of two)."""
    extra = max(1, math.ceil(math.log2(hosts))) if hosts > 1 else 0
    if subnet.prefixlen + extra > subnet.max_prefixlen - 2:
        raise InvalidArgumentError(f"{where}: subnet {subnet} is too small for {hosts} hosts")
    return list(subnet.subnets(prefixlen_diff=extra)) if extra else [subnet]  # type: ignore[return-value]


def _host_names(hosts: object) -> list[str]:
    if isinstance(hosts, bool) or not isinstance(hosts, (int, Iterable)) or isinstance(hosts, (str, bytes)):
        raise InvalidArgumentError(f"lab: hosts must be a count or a list of host names, not {type(hosts).__name__} {hosts!r}")
    if isinstance(hosts, int):
        names = [f"h{i + 1}" for i in range(hosts)]
    else:
        names = [check_name("host", n) for n in check_collection("lab", "hosts", hosts, "host names")]
    if not 1 <= len(names) <= MAX_HOSTS:
        raise InvalidArgumentError(f"lab: {len(names)} hosts; a lab has 1 to {MAX_HOSTS}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConflictError(f"lab: host name(s) {', '.join(map(repr, twice))} given more than once")
    return names


def _make_underlay(rtnl: Rtnl, namespace: Namespace, token: str) -> int:
    """The underlay bridge in the lab's outside, up, with the outside's addresses; its index."""
    index = rtnl.add_bridge(BRIDGE, alias=f"cnm:{token}:underlay", mac=random_mac(), multicast_snooping=False)
    namespace.write_sysctl(f"net/ipv6/conf/{BRIDGE}/disable_ipv6", "0")
    rtnl.configure_link(
        BRIDGE, [isolated.OUTSIDE_ADDRESS, isolated.OUTSIDE_ADDRESS6], [], f"lab {token}: underlay", index=index
    )
    return index
