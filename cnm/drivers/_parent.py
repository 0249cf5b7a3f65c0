"""The parent link of a macvlan or ipvlan network: found, or made with the network.

Docker's ``-o parent=NAME`` names an interface of the host. ``NAME.VLAN``
(``eth0.10``) is an 802.1q sub-interface of NAME, made with the network if
it is not there and removed with it. Without a parent the network is
internal (no gateway) and sits on a dummy link of its own, ``dm-`` and 12
hex digits of the network's id, as in Docker.
"""

from __future__ import annotations

import errno

import attrs

from .._ip import IPAddress
from .._links import IFNAME_RULE, valid_ifname
from ..errors import InvalidArgumentError, KernelError, NotFoundError
from ..kernel import Rtnl
from ..undo import UndoLog
from . import Capabilities, EndpointSpec, NetworkPlumbing, NetworkSpec, SandboxPort

__all__ = ["OPT_PARENT", "OnParent", "Parent", "check_parent", "make_parent"]

OPT_PARENT = "parent"


@attrs.frozen
class Parent:
    """What the options say the parent is."""

    #: the interface's name ("dm-..." when none was given)
    name: str
    #: the 802.1q VLAN id when *name* is ``BASE.VLAN``, else None
    vlan: int | None
    #: made with the network (no parent given): a dummy link
    dummy: bool


def check_parent(spec: NetworkSpec, driver: str) -> Parent:
    """The parent the options name, checked without the kernel."""
    given = spec.options.get(OPT_PARENT)
    if given is None:
        return Parent(f"dm-{spec.id[:12]}", None, dummy=True)
    if not valid_ifname(given):
        raise InvalidArgumentError(f"network {spec.name!r}: {driver} parent {given!r} is not an interface name ({IFNAME_RULE})")
    base, dot, tag = given.rpartition(".")
    if dot and base and tag.isascii() and tag.isdigit():
        if not 1 <= int(tag) <= 4094:
            raise InvalidArgumentError(f"network {spec.name!r}: {driver} parent {given!r}: VLAN id {tag} is not in 1..4094")
        return Parent(given, int(tag), dummy=False)
    return Parent(given, None, dummy=False)


def make_parent(host: Rtnl, spec: NetworkSpec, driver: str, undo: UndoLog) -> NetworkPlumbing:
    """Find the parent, or make the VLAN sub-interface or dummy link it
    stands for (up, with its undo step on *undo*); the network's plumbing."""
    parent = check_parent(spec, driver)
    where = f"network {spec.name!r}: {driver} parent {parent.name!r}"
    alias = f"cnm:{spec.owner}:network/{spec.name}"
    index = host.link_index(parent.name)
    if index is None and parent.dummy:
        made = host.add_link("dummy", parent.name, alias=alias, up=True).index
        undo.push(where, lambda: host.delete_link(made, where))
        index = made
    elif index is None and parent.vlan is not None:
        base = parent.name.rpartition(".")[0]
        base_index = host.link_index(base)
        if base_index is None:
            raise NotFoundError(f"{where}: the host has no interface {base!r} to make the VLAN on")
        made = host.add_link("vlan", parent.name, data={"vlan_id": parent.vlan}, parent=base_index, alias=alias, up=True).index
        undo.push(where, lambda: host.delete_link(made, where))
        index = made
    elif index is None:
        names = ", ".join(sorted(link.name for link in host.links()))
        raise NotFoundError(f"{where}: the host has no such interface (it has {names})")
    # An interface that was there is used as it is (Docker also brings it
    # up; cnm changes nothing of the host's own that it would not undo).
    gateways = () if spec.internal or parent.dummy else spec.gateways
    return NetworkPlumbing(interface=parent.name, index=index, owner=spec.owner, gateways=gateways)


class OnParent:
    """What macvlan and ipvlan share: options ``parent`` and ``<name>_mode``
    (the first of *modes* by default), checked; the parent, made or found."""

    name: str
    #: the modes the kind takes, the default first
    modes: tuple[str, ...]
    capabilities = Capabilities(families=frozenset({4, 6}), routed=False)

    @property
    def mode_option(self) -> str:
        return f"{self.name}_mode"

    def validate(self, spec: NetworkSpec) -> None:
        unknown = sorted(set(spec.options) - {OPT_PARENT, self.mode_option})
        if unknown:
            raise InvalidArgumentError(
                f"network {spec.name!r}: unknown {self.name} option(s) {', '.join(unknown)} "
                f"(known: {self.mode_option}, {OPT_PARENT})"
            )
        mode = spec.options.get(self.mode_option, self.modes[0])
        if mode not in self.modes:
            raise InvalidArgumentError(
                f"network {spec.name!r}: {self.mode_option} {mode!r} is not one of {', '.join(self.modes)}"
            )
        check_parent(spec, self.name)

    def create_network(self, host: Rtnl, spec: NetworkSpec, undo: UndoLog) -> NetworkPlumbing:
        plumbing = make_parent(host, spec, self.name, undo)
        mode = spec.options.get(self.mode_option, self.modes[0])
        return attrs.evolve(plumbing, mode=mode, gateways=self.gateways(mode, plumbing.gateways))

    def add_sandbox_link(
        self, host: Rtnl, network: NetworkPlumbing, endpoint: EndpointSpec, sandbox: SandboxPort, undo: UndoLog,
        *, mac: str | None,
    ) -> int:  # fmt: skip
        """The endpoint's link of this kind on the parent, made straight inside
        the sandbox (with its undo step); its index there. With *mac* None,
        the kernel gives it the parent's (ipvlan, macvlan passthru)."""
        what = f"endpoint {endpoint.name!r}: {self.name} on {network.interface!r}"
        inherit = mac is None
        if inherit:
            parent = host.link(index=network.index)
            mac = parent.mac if parent is not None else None
            if mac is None:
                raise KernelError(errno.ENODEV, f"{what}: the parent is gone")
        link = host.add_link(
            self.name,
            endpoint.interface,
            data={self.mode_option: network.mode},
            parent=network.index,
            namespace=sandbox.namespace,
            mac=mac,
            alias=f"cnm:{network.owner}:endpoint/{endpoint.name}",
            inherit_mac=inherit,
        )
        undo.push(what, lambda: sandbox.release_link(link.index, what, inside=True))
        return link.index

    def gateways(self, mode: str, offered: tuple[IPAddress, ...]) -> tuple[IPAddress, ...]:
        """The next hops the joins of a network in *mode* offer (those of its subnets by default)."""
        return offered
