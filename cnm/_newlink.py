"""The creation request of :meth:`cnm.kernel.Rtnl.add_link`, the link verb
for any kind, and what its refusal means.

:func:`request` checks the arguments and encodes one RTM_NEWLINK (the
kind's own settings through pyroute2's attribute tables) without sending
anything; :func:`creation_error` turns the kernel's refusal of a creation
into the typed error, naming the module a missing link kind lives in;
:func:`index_of` and :func:`peer_index_of` read the kernel's description of
a link (its echo of a creation, or a look-up's answer). The sending,
marking and undoing stay with :class:`~cnm.kernel.Rtnl`.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import attrs

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from . import rtmsg as pack
from ._links import Peer, check_ifname, check_mac, random_mac
from .errors import InterfaceExistsError, InvalidArgumentError, KernelError, MissingKernelFeatureError, kernel_error
from .netlink import Netlink, NetlinkReply
from .netns import Namespace

__all__ = ["NewLink", "creation_error", "index_of", "info_data", "peer_index_of", "request"]

_ALIAS_MAX = 255  # IFALIASZ - 1

#: The kernel module behind each link kind whose module is not named after it.
_MODULES = {
    "vlan": "8021q",
    "bond": "bonding",
    "gre": "ip_gre",
    "gretap": "ip_gre",
    "ip6gre": "ip6_gre",
    "ip6gretap": "ip6_gre",
    "ip6tnl": "ip6_tunnel",
    "vti": "ip_vti",
    "vti6": "ip6_vti",
    "xfrm": "xfrm_interface",
}
#: Names cnm accepts for the values of attributes pyroute2 only takes as numbers.
_VALUE_NAMES: dict[str, dict[str, int]] = {"IFLA_IPVLAN_MODE": {"l2": 0, "l3": 1, "l3s": 2}}


@attrs.frozen
class NewLink:
    """An encoded creation request: the (seq, bytes) to send, the *mac* the
    link is made with (how a half-made one is recognised as ours), the
    *namespace* it is made in (None: the requester's) and the label *what*
    for errors."""

    create: tuple[int, bytes]
    mac: str
    namespace: Namespace | None
    what: str


@contextmanager
def request(
    kind: str,
    name: str,
    *,
    here: Namespace,
    data: Mapping[str, Any] | None,
    parent: int | None,
    namespace: Namespace | None,
    peer: Peer | None,
    mac: str | None,
    mtu: int | None,
    alias: str | None,
    master: int | None,
    parent_mac: str | None = None,
    group: int = 0,
    port: Collection[str] = (),
) -> Iterator[NewLink]:
    """The RTM_NEWLINK creating a link as :meth:`cnm.kernel.Rtnl.add_link`
    documents it, from a socket in namespace *here*.

    A request into another namespace carries descriptors of it, which the
    kernel resolves when it reads the request: they stay open until the
    ``with`` block ends, so send it inside. Bad arguments raise
    :class:`~cnm.errors.InvalidArgumentError` before anything is opened or
    sent.
    """
    what = f"link {name!r} ({kind})"
    check_ifname(name, what)
    # With *parent_mac*, the kernel gives the link its parent's MAC (an
    # ipvlan, a macvlan in passthru mode): none is asked for, that one is expected.
    send_mac = parent_mac is None
    mac = parent_mac if parent_mac is not None else check_mac(mac, what) if mac is not None else random_mac()
    if alias is not None and (not isinstance(alias, str) or len(alias.encode()) > _ALIAS_MAX):
        raise InvalidArgumentError(f"{what}: alias {alias!r} is longer than the kernel keeps ({_ALIAS_MAX} bytes)")
    if (peer is not None) != (kind == "veth"):
        raise InvalidArgumentError(f"{what}: a peer is given for a veth, and only for a veth")
    if isinstance(group, bool) or not isinstance(group, int) or not 0 <= group < 2**32:
        raise InvalidArgumentError(f"{what}: group {group!r} is not a device group (0 to 2**32-1)")
    flags = list(port) if isinstance(port, Collection) and not isinstance(port, str) else None
    if flags is None or any(not isinstance(f, str) or f not in pack.BRIDGE_PORT_FLAGS for f in flags) or (flags and master is None):
        raise InvalidArgumentError(
            f"{what}: bridge port settings {port!r}: only {sorted(pack.BRIDGE_PORT_FLAGS)}, for a link with a master"
        )
    if namespace is not None and namespace.path == here.path:
        namespace = None
    info: list[tuple[str, Any]] = [("IFLA_INFO_KIND", kind)]
    fds: list[int] = []
    try:
        attrs_: list[tuple[str, Any]] = [("IFLA_IFNAME", name)] + ([("IFLA_ADDRESS", mac)] if send_mac else [])
        if mtu is not None:
            attrs_.append(("IFLA_MTU", mtu))
        if parent is not None:
            attrs_.append(("IFLA_LINK", parent))
        if master is not None:
            attrs_.append(("IFLA_MASTER", master))
        if group:
            attrs_.append(("IFLA_GROUP", group))
        if namespace is not None:
            fds.append(os.open(namespace.path, os.O_RDONLY | os.O_CLOEXEC))
            attrs_.append(("IFLA_NET_NS_FD", fds[-1]))
        settings = info_data(kind, data, what)
        if peer is not None:
            check_ifname(peer.name, f"{what}: peer")
            end: list[tuple[str, Any]] = [("IFLA_IFNAME", peer.name)]
            if peer.mac is not None:
                end.append(("IFLA_ADDRESS", check_mac(peer.mac, f"{what}: peer")))
            if mtu is not None:
                end.append(("IFLA_MTU", mtu))
            if peer.namespace is not None:
                fds.append(os.open(peer.namespace.path, os.O_RDONLY | os.O_CLOEXEC))
                end.append(("IFLA_NET_NS_FD", fds[-1]))
            settings.append(("VETH_INFO_PEER", {"attrs": end}))
        if settings:
            info.append(("IFLA_INFO_DATA", {"attrs": settings}))
        attrs_.append(("IFLA_LINKINFO", {"attrs": info}))
        msg = ifinfmsg()
        msg["index"] = msg["flags"] = msg["change"] = 0
        msg["attrs"] = attrs_
        try:
            create = Netlink.encode(msg, pack.RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK | NLM_F_ECHO)
        except Exception as exc:  # pyroute2 refusing a value: bad input, nothing sent
            raise InvalidArgumentError(f"{what}: cannot encode its settings: {exc}") from exc
        yield NewLink(create, mac, namespace, what)
    finally:
        for fd in fds:
            os.close(fd)


def info_data(kind: str, data: Mapping[str, Any] | None, what: str) -> list[tuple[str, Any]]:
    """*data* as pyroute2's IFLA_INFO_DATA attribute list for *kind*."""
    if not data:
        return []
    spec = ifinfmsg.ifinfo.data_map.get(kind)
    if spec is None:
        raise InvalidArgumentError(f"{what}: no settings are known for links of kind {kind!r}")
    prefix = getattr(spec, "prefix", None) or "IFLA_"
    names = {}
    for entry in spec.nla_map:
        full = entry[-2]
        names[full.upper()] = full
        names[full[len(prefix) :].upper() if full.startswith(prefix) else full.upper()] = full
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        full = names.get(str(key).upper())
        if full is None or full.endswith("_UNSPEC"):
            raise InvalidArgumentError(f"{what}: {key!r} is not a setting of {kind} links")
        if isinstance(value, str) and full in _VALUE_NAMES:
            if value.lower() not in _VALUE_NAMES[full]:
                choices = ", ".join(_VALUE_NAMES[full])
                raise InvalidArgumentError(f"{what}: {key} {value!r} is not one of {choices}")
            value = _VALUE_NAMES[full][value.lower()]
        out.append((full, value))
    return out


def creation_error(exc: OSError, kind: str, what: str) -> KernelError:
    """The typed error for the kernel's refusal *exc* to create *what*, a link of *kind*."""
    if exc.errno == errno.EOPNOTSUPP:
        module = _MODULES.get(kind, kind)
        return MissingKernelFeatureError(
            exc.errno, f"{what}: this kernel has no {kind!r} link type (module {module!r} not available)"
        )
    if exc.errno == errno.EEXIST:
        return InterfaceExistsError(exc.errno, f"{what}: create: an interface of that name exists")
    return kernel_error(exc, f"{what}: create")


def index_of(reply: NetlinkReply) -> int:
    """The ifindex in an RTM_NEWLINK answer (ifinfomsg.ifi_index)."""
    assert reply.data is not None
    return int(struct.unpack_from("=i", reply.data, 16 + 4)[0])


def peer_index_of(reply: NetlinkReply) -> int | None:
    """IFLA_LINK of an RTM_NEWLINK answer: for a veth, the other end's index
    (in the other end's namespace)."""
    data = reply.data
    assert data is not None
    offset, end = 32, min(len(data), struct.unpack_from("=I", data, 0)[0])
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        if kind & 0x3FFF == 5 and length >= 8:  # IFLA_LINK
            return int(struct.unpack_from("=I", data, offset + 4)[0])
        offset += (length + 3) & ~3
    return None
