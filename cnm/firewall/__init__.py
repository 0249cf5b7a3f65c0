"""The firewall contract: what a backend must do for networks and published ports.

A *firewall backend* owns the packet-filtering side of cnm on one host (one
network namespace): outbound NAT for each network, the isolation of networks
from each other (and of an internal network from everything), and the port
forwards that publish a sandbox's port on the host. Network drivers build
links; the backend only writes rules.

Two backends ship with cnm:

``"nftables"``
    :class:`~cnm.firewall.nftables.NftablesFirewall`: talks nfnetlink
    directly (no ``nft`` process), one kernel transaction per call.
``"none"``
    :class:`~cnm.firewall.none.NoFirewall`: does nothing at all, for hosts
    whose firewall is managed by someone else, and for tests of the rest.

Third-party backends register under the entry-point group ``cnm.firewall``
(name = factory) and are found by :func:`firewall_backend` exactly like the
built-ins. A backend subclasses nothing: it is any object with the
:class:`FirewallBackend` methods.

The contract
------------

Every method that changes the kernel is **one atomic change**:

* it either applies completely or changes nothing (for nftables: one
  nfnetlink batch, which the kernel commits or aborts as a whole);
* on success it pushes **exactly one** step on the given :class:`~cnm.undo.UndoLog`,
  and that step removes exactly what the call added, again as one atomic
  change, treating "already gone" as success (so it may run twice, or after
  someone else removed the rules);
* on failure it raises (a :class:`~cnm.errors.KernelError` when the kernel
  refused, naming what failed and the kernel's reason) and pushes nothing.

Backends create what they need **lazily**: the first call creates the shared
structures (for nftables: the table, its chains and maps) in the same atomic
change as its own rules, and the undo of the last outstanding call removes
them in the same atomic change as its own rules. So a host with no networks
has nothing installed at all, and a first call that fails leaves nothing
behind. Backends keep that count in memory; it is not shared between
processes.

Everything a backend installs is marked with the *owner* token it was made
with (for nftables: the tables ``ip cnm-<owner>`` and ``ip6 cnm-<owner>``),
and a backend never reads or changes anything not so marked. Two cnm hosts in the same namespace, or cnm
next to Docker or firewalld, do not see each other's rules.

Conflicts between port forwards (the same protocol and host port published
twice) are refused by the caller before they reach the backend; a backend
may refuse them again (nftables does, with ``EEXIST``) but need not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from .._ip import IPAddress, IPNetwork, family_name
from .._plugins import Registry
from .._transport import PROTOCOLS, address_text, check_not_ipv6_loopback, check_port, check_protocol
from ..errors import InvalidArgumentError

if TYPE_CHECKING:
    from ..netns import Namespace
    from ..undo import UndoLog

__all__ = [
    "FIREWALL_BACKENDS",
    "FirewallBackend",
    "FirewallFactory",
    "NetworkRules",
    "SANDBOX_PORT_GROUP",
    "TUNNEL_PORT_GROUP",
    "PortForward",
    "firewall_backend",
]

#: The device group (``ip link set ... group``) of the host end of every
#: sandbox's veth on a bridge network. Frames a bridge passes on never reach
#: the ``ip``/``ip6`` hooks, and this kernel's nftables cannot name the bridge
#: a frame entered (``meta ibrname`` needs ``CONFIG_NFT_BRIDGE_META``), so a
#: backend that filters what sandboxes send their neighbours (router
#: advertisements) recognises their ports by this group: one attribute set
#: in the request that makes the veth, no rule or set element per sandbox.
#: A host's own bridges keep the default group 0 and are left alone.
SANDBOX_PORT_GROUP = 0x636E6D  # "cnm"
#: The device group of a tunnel that is a port of a network's bridge (an
#: overlay's VXLAN device). Such a network's gateway is on every host's
#: bridge with one MAC (an anycast gateway), so nothing the host itself sends
#: into the bridge may leave by the tunnel: a peer would take a frame from
#: its own gateway MAC (and drop it, and learn that MAC on the tunnel), and
#: the replies of a remote sandbox to that MAC end at its own host's
#: gateway. A backend drops what the host sends out of such ports, and what
#: they bring the host.
TUNNEL_PORT_GROUP = 0x636E74  # "cnt"

_IFNAMSIZ = 16  # the kernel's limit on interface names, including the NUL


def _check_bridge(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value or len(value.encode()) >= _IFNAMSIZ or "/" in value or value.strip() != value:
        raise InvalidArgumentError(f"firewall: {value!r} is not a valid interface name")


def _check_protocol(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    check_protocol("port forward: protocol", value)


def _check_port(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    check_port(f"port forward: {attribute.name}", value)


def _check_subnets(instance: NetworkRules, attribute: attrs.Attribute[tuple[IPNetwork, ...]], value: object) -> None:
    name = getattr(instance, "name", "?")
    if not isinstance(value, tuple) or not all(isinstance(s, (IPv4Network, IPv6Network)) for s in value):
        raise InvalidArgumentError(f"network {name!r}: subnets {value!r} must be a tuple of IPv4Network/IPv6Network")
    versions = [s.version for s in value]
    if not value or len(set(versions)) != len(versions):
        raise InvalidArgumentError(
            f"network {name!r}: subnets {', '.join(map(str, value)) or '()'} must be one or two, at most one per family"
        )


def _check_address(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, (IPv4Address, IPv6Address)):
        raise InvalidArgumentError(f"port forward: {attribute.name} {value!r} is not an IPv4Address or IPv6Address")


def _check_host_ip(instance: PortForward, attribute: attrs.Attribute[IPAddress | None], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, (IPv4Address, IPv6Address)):
        raise InvalidArgumentError(f"port forward: host_ip {value!r} is not an IPv4Address, IPv6Address or None")
    check_not_ipv6_loopback("port forward: host_ip", value)


@attrs.frozen
class NetworkRules:
    """What the firewall needs to know about one network.

    The backend derives every rule from these fields; it is handed the
    same value again with each :meth:`FirewallBackend.add_port_forwards` call
    for the network.
    """

    #: The network's name. Used in error messages and rule comments only;
    #: two networks may not share a name on one host, but the backend does
    #: not rely on that.
    name: str

    #: Interface name of the network's bridge in the host namespace. Traffic
    #: is matched by name, so the rules may be installed before the bridge
    #: exists and survive its being re-created. A bridge belongs to one
    #: network: a backend may refuse a second one on it (nftables does).
    bridge: str = attrs.field(validator=_check_bridge)

    #: The network's subnets, one or two, at most one per family (an
    #: IPv6-only network has just an IPv6 one). Sources in them are
    #: masqueraded on the way out; each family's rules exist only for a
    #: network with a subnet of that family.
    subnets: tuple[IPNetwork, ...] = attrs.field(validator=_check_subnets)

    #: An internal network has no outbound NAT, and nothing is forwarded
    #: between its bridge and any other interface, in either direction.
    #: Sandboxes on it reach each other and the host's address on the bridge;
    #: its published ports (if any) are reachable from the host only.
    internal: bool = False

    #: Whether other interfaces than the bridge (the uplink, say) may open
    #: connections straight to sandbox addresses. ``False`` (the default, as
    #: in Docker 28) forwards into the bridge only replies, connections the
    #: sandboxes opened, and connections to published ports; ``True`` is
    #: what Docker's ``gateway_mode_ipv4`` ``nat-unprotected`` and ``routed``
    #: allow.
    direct_access: bool = False

    def subnet_for(self, family: int) -> IPNetwork | None:
        """The network's subnet of *family* (4 or 6), or None."""
        for subnet in self.subnets:
            if subnet.version == family:
                return subnet
        return None

    def check_forwards(self, forwards: Iterable[PortForward]) -> None:
        """Refuse, before any change, a forward of a family the network has no subnet of.

        Every backend calls it first in :meth:`FirewallBackend.add_port_forwards`
        and :meth:`~FirewallBackend.add_port_forwards_many`.
        """
        if len(self.subnets) == 2:
            return  # both families (on the per-port path: kept short)
        version = self.subnets[0].version
        for forward in forwards:
            family = forward.container_ip.version
            if family != version:
                raise InvalidArgumentError(
                    f"network {self.name!r}: port forward {forward}: the network has no {family_name(family)} subnet"
                )


@attrs.frozen
class PortForward:
    """One published port: traffic to the host's port goes to a sandbox's port.

    The forward applies to traffic addressed to the host (any of its local
    addresses, or only *host_ip*), whether it comes from outside, from a
    sandbox on any network (hairpin), or from the host itself (including
    ``127.0.0.1``: a backend that forwards those must turn the bridge's
    ``net.ipv4.conf.<bridge>.route_localnet`` on itself, and then drop
    loopback destinations arriving on any interface but ``lo``, as the
    nftables backend does).

    A forward belongs to one family, that of :attr:`container_ip`. IPv6 has
    no ``route_localnet``: the kernel drops a packet from ``::1`` leaving by
    any interface but ``lo``, so the host's own connections to ``[::1]``
    cannot be forwarded to a sandbox, and a forward on host address ``::1``
    is refused. (Those to the host's other IPv6 addresses are forwarded.)
    """

    #: ``"tcp"``, ``"udp"`` or ``"sctp"``.
    protocol: str = attrs.field(validator=_check_protocol)

    #: The host address the port is published on; ``None`` means every local
    #: address of the host of the forward's family. A forward on a specific
    #: address wins over one on every address for the same protocol and port.
    #: It must be of the family of :attr:`container_ip`; the unspecified
    #: address of the family (``0.0.0.0``, ``::``) is stored as ``None``.
    host_ip: IPAddress | None = attrs.field(validator=_check_host_ip)

    #: The port on the host (1-65535).
    host_port: int = attrs.field(validator=_check_port)

    #: The sandbox's address on the network the forward belongs to; its
    #: version is the forward's family.
    container_ip: IPAddress = attrs.field(validator=_check_address)

    #: The port inside the sandbox (1-65535).
    container_port: int = attrs.field(validator=_check_port)

    def __attrs_post_init__(self) -> None:
        if self.host_ip is None:
            return
        if self.host_ip.version != self.container_ip.version:
            raise InvalidArgumentError(
                f"port forward: host_ip {self.host_ip} and container_ip {self.container_ip} are of different families"
            )
        if self.host_ip.is_unspecified:
            # One spelling of "every address of the family", so that equal forwards compare equal.
            object.__setattr__(self, "host_ip", None)

    @property
    def family(self) -> int:
        """4 or 6: the version of :attr:`container_ip`."""
        return self.container_ip.version

    def __str__(self) -> str:
        # On the per-port path (labels of batch messages): kept short.
        family = self.container_ip.version
        host, container = address_text(self.host_ip, family), address_text(self.container_ip, family)
        return f"{self.protocol} {host}:{self.host_port} -> {container}:{self.container_port}"


@runtime_checkable
class FirewallBackend(Protocol):
    """The firewall of one host. Made by a :data:`FirewallFactory`.

    Methods are called from one thread at a time per host, but a backend
    must not assume which thread. See the module documentation for the
    atomicity, undo and laziness rules every method follows.
    """

    #: The registry name of the backend, e.g. ``"nftables"``.
    name: str

    def add_network(self, rules: NetworkRules, undo: UndoLog) -> None:
        """Install a network's rules: outbound NAT (unless internal), hairpin
        NAT, isolation from the other networks' bridges (nothing is forwarded
        between two networks, except connections to a published port), and
        for an internal network the rules that keep its traffic on its bridge;
        all of it in each family the network has a subnet of.

        One atomic change (for a dual-stack network too); the first call on a host also creates the shared
        structures. Pushes one undo step removing exactly these rules (and
        the shared structures, if nothing else is left).
        """
        ...

    def add_port_forwards(self, rules: NetworkRules, forwards: Sequence[PortForward], undo: UndoLog) -> None:
        """Publish *forwards* (for sandboxes on the network described by *rules*).

        All forwards of the call go in in one atomic change, whatever their
        families: if any one is refused, none is installed. A forward of a
        family the network has no subnet of is refused first
        (:meth:`NetworkRules.check_forwards`). Pushes one undo step removing exactly
        these forwards. An empty *forwards* changes nothing and pushes nothing.
        A call does not require :meth:`add_network` first, but normally follows it.
        """
        ...

    def add_port_forwards_many(
        self, rules: NetworkRules, groups: Sequence[tuple[Sequence[PortForward], UndoLog]]
    ) -> None:
        """Publish several groups of forwards (one group per endpoint) in one atomic change.

        For bulk creation (:meth:`cnm.Host.create_sandboxes`): the same as one
        :meth:`add_port_forwards` call per group, but one kernel transaction
        for all. On success it pushes one undo step per non-empty group, on
        that group's own log, removing exactly that group's forwards; on
        failure nothing is installed and nothing is pushed.
        """
        ...

    def undo_together(self, steps: Iterable[Callable[[], object]]) -> None:
        """Do what several undo steps this backend handed out would do, in one atomic change.

        For bulk teardown (:meth:`cnm.Host.delete_sandboxes`). *steps* may
        hold anything; the backend picks out its own steps that are not done
        yet. On success those steps are done, and running them later does
        nothing. On failure nothing changes and nothing is raised: the steps
        then run one by one as usual and report their own failures. Doing
        nothing at all is a correct implementation.
        """
        ...

    def close(self) -> None:
        """Release what the backend holds open (sockets). Does not remove rules.

        Closing twice does nothing. After closing, the other methods and the
        undo steps already handed out raise :class:`~cnm.errors.ClosedError`;
        so run the undo steps before closing.
        """
        ...


#: Makes the backend of one host: ``factory(namespace, owner)``. *namespace*
#: is the host's network namespace (all kernel access happens inside it);
#: *owner* is a short token unique to the host (e.g. ``"a1b2c3"``), which the
#: backend uses to mark what it installs (nftables: tables ``cnm-<owner>``).
#:
#: A factory may also have a ``sweep(namespace, owner) -> list[str]``
#: callable: it removes everything marked with *owner* in *namespace*, left
#: there by a host whose process died, and returns a description of each thing
#: removed (nothing there is success). :func:`cnm.gc` calls it for hosts in
#: an existing namespace (an isolated host's rules go with its namespace). A
#: backend without one leaves its rules to its own cleanup.
FirewallFactory = Callable[["Namespace", str], FirewallBackend]


def firewall_backend(name: str) -> FirewallFactory:
    """The factory of the backend called *name* (see :data:`FIREWALL_BACKENDS`).

    Raises :class:`~cnm.errors.NotFoundError` naming the known backends.
    """
    return FIREWALL_BACKENDS.lookup(name)


def _builtin() -> dict[str, FirewallFactory]:
    return {"nftables": NftablesFirewall, "none": NoFirewall}


#: The firewall backends by name (factories, see :data:`FirewallFactory`):
#: the built-ins, then the ``cnm.firewall`` entry points (see
#: :class:`cnm._plugins.Registry`).
FIREWALL_BACKENDS: Registry[FirewallFactory] = Registry("firewall backend", "cnm.firewall", _builtin)


# The backends import the types above, so they come last.
from .nftables import NftablesFirewall  # noqa: E402
from .none import NoFirewall  # noqa: E402
