"""The ``"nftables"`` firewall backend: nfnetlink batches, no ``nft`` process.

What it installs, in nft syntax (``OWNER`` is the host's token; the ``output``
chain's priority is -100, which nft prints as a number there)::

    table ip cnm-OWNER {
      map ports       { type inet_proto . inet_service : ipv4_addr . inet_service }
      map ports_addr  { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service }
      set bridges     { type ifname; elements = { "BRIDGE", ... } }                 # each network
      set same_bridge { type ifname . ifname; elements = { "BRIDGE" . "BRIDGE", ... } }
      set guarded     { type ifname; elements = { "BRIDGE", ... } }                 # each network
      chain loopback    { type filter hook prerouting priority raw; policy accept;
                          iifname != "lo" ip daddr 127.0.0.0/8 drop }
      chain prerouting  { type nat hook prerouting priority dstnat; policy accept;
                          fib daddr type local jump published }
      chain output      { type nat hook output priority -100; policy accept;
                          fib daddr type local jump published }
      chain published   { dnat ip to ip daddr . meta l4proto . th dport map @ports_addr
                          dnat ip to meta l4proto . th dport map @ports }
      chain postrouting { type nat hook postrouting priority srcnat; policy accept;
                          # each network not internal:
                          ip saddr SUBNET oifname != "BRIDGE" masquerade comment "NAME"
                          # each network:
                          ct status dnat ip saddr SUBNET oifname "BRIDGE" masquerade comment "NAME"
                          ip saddr 127.0.0.0/8 oifname "BRIDGE" masquerade comment "NAME" }
      chain forward     { type filter hook forward priority filter; policy accept;
                          iifname @bridges oifname @bridges iifname . oifname != @same_bridge jump isolation
                          oifname @guarded iifname . oifname != @same_bridge jump direct
                          # each internal network:
                          iifname "BRIDGE" oifname != "BRIDGE" drop comment "NAME"
                          oifname "BRIDGE" iifname != "BRIDGE" drop comment "NAME" }
      chain isolation   { ct status dnat return
                          drop }
      chain direct      { ct state established,related return
                          ct status dnat return
                          drop }
    }

Published ports are map elements, not rules: a packet costs two hash
lookups however many ports are published, and publishing or withdrawing a
port touches one element. A forward on a specific host address is looked up
first, so it wins over one on every address.

Networks are isolated from each other (what Docker's DOCKER-ISOLATION
chains do) the same way: a network's bridge is an element of ``bridges``,
and the host forwards nothing from one such bridge to another, so a sandbox
cannot reach a sandbox of another network through the host. One rule serves
every network: a forwarded packet costs at most three hash lookups however
many networks there are, and a network's part of the isolation is two
elements, not rules. The exceptions:

* traffic the host sends back into the bridge it came from (``same_bridge``
  holds each bridge paired with itself; nft cannot compare ``iifname`` with
  ``oifname`` directly). With ``br_netfilter`` loaded, that is every packet
  between two sandboxes of one network, and a host route can force it too;
* connections to a published port (``ct status dnat``): a sandbox reaches a
  port published by another network's sandbox through a host address, as in
  Docker. The test sits in its own chain so that a packet without conntrack
  state (invalid, untracked), for which ``ct status`` matches nothing, is
  dropped rather than let through. Internal networks keep their own drop
  rules, which refuse published-port traffic from other interfaces too.

Two guards close the ways in that routing alone would open:

* ``loopback``: the bridges have ``route_localnet`` on (this backend sets
  it, see ``_route_localnet``), so that the host's
  own connections to a port published on 127.0.0.1 can be DNATed out of
  them. The kernel then also accepts, on a bridge, a packet addressed to
  127.0.0.1: a sandbox that is root inside its namespace (and so may route
  127.0.0.0/8 via its gateway) would reach every service the host binds to
  loopback (the CVE-2020-8558 class). Nothing with a loopback destination
  is accepted from any interface but ``lo``. The chain runs at the raw
  priority, before conntrack: a reply to the host's own connection through
  127.0.0.1 arrives addressed to the bridge's gateway (it was masqueraded)
  and is only turned back into 127.0.0.1 after this check. (IPv6 needs no
  such rule: the kernel drops ``::1`` arriving on any interface but
  ``lo``, and has no ``route_localnet`` for it.)
* ``direct``: a neighbour on the uplink that routes a network's subnet via
  the host would otherwise reach every port of every sandbox, published or
  not (Docker 28 drops such "direct routing" too). Into a bridge in
  ``guarded``, from any interface but itself, only replies, traffic of
  connections the sandboxes opened, and published-port connections (DNAT)
  are forwarded. A network's membership in ``guarded`` is the one place that
  decides (:attr:`cnm.firewall.NetworkRules.direct_access` leaves it out).

How a change reaches the kernel
-------------------------------

Every call builds one nfnetlink batch (``BATCH_BEGIN``, the messages,
``BATCH_END``) and sends it in one write on a socket opened inside the host's
namespace. The kernel applies the batch as one transaction: if any message
fails, nothing changes. It answers only what it must: an error for each
message that failed (messages that asked for an ack get one even when the
batch as a whole was aborted, so acks prove nothing), and, on commit, an
echo of each rule sent with ``NLM_F_ECHO``. To know when the answer is
complete, a ``GETGEN`` request follows in a second write (a fence, see
:meth:`cnm.netlink.Netlink.fenced`); everything the batch caused arrives
before its reply.

Rules are removed by handle. Each network rule is sent with ``NLM_F_ECHO``;
the kernel echoes it back with the handle it assigned, and the undo step
deletes exactly those handles (handles are never reused within a table).
Set and map elements are removed by key. Elements are created with
``NLM_F_EXCL``, so publishing a key that is already in a map fails with
``EEXIST``, and so does a second network on a bridge already in ``bridges``.

"Already gone" on removal: a delete batch naming one missing rule or element
fails as a whole with ``ENOENT``; the backend then lists what is still there
and deletes only that (one more batch), so someone else's partial cleanup
does not stop the undo. (Linux 6.3's ``DESTROY`` messages would do this in
the kernel; using ``DEL`` keeps older kernels working.)

A lost answer (the batch was written but the exchange failed afterwards, so
it may or may not have been committed) is the one case where the kernel
cannot tell us what happened. The backend then removes whatever the batch
may have installed before raising: the table, if the batch created it;
otherwise the rules carrying the network's comment, or the set and map keys
of the call, that belong to no call still outstanding (the backend remembers
the handles and keys of those). So even then the call changes nothing.

pyroute2 supplies the message classes. Some of its definitions are wrong for
what is sent here and are corrected in subclasses: the ``fib`` expression's
result is an enum, not a flag set, and its flags are a flag set, not an
enum; a rule's user data is a list of type-length-value items, not a
length-prefixed string (a set's user data is sent as raw bytes too).
"""

from __future__ import annotations

import errno
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Network
from typing import TYPE_CHECKING, Any

from pyroute2.netlink import NLM_F_APPEND, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_ERROR
from pyroute2.netlink.marshal import Marshal
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES
from pyroute2.netlink.nfnetlink import nftsocket as nft

from ..errors import ALREADY_GONE, ClosedError, InvalidArgumentError, KernelError, kernel_error
from ..netlink import Netlink, NetlinkReply, next_seq, nla, nla_string
from . import NetworkRules, PortForward

if TYPE_CHECKING:
    from ..netns import Namespace
    from ..undo import UndoLog

__all__ = ["NETLINK_NETFILTER", "NftablesFirewall"]

NETLINK_NETFILTER = 12

# nfnetlink framing
_BATCH_BEGIN = 0x10
_BATCH_END = 0x11
_NFPROTO_IPV4 = 2
_NFPROTO_UNSPEC = 0

# nf_tables message types
_NEWTABLE, _DELTABLE = 0, 2
_NEWCHAIN = 3
_NEWRULE, _GETRULE, _DELRULE = 6, 7, 8
_NEWSET = 9
_NEWSETELEM, _GETSETELEM, _DELSETELEM = 12, 13, 14
_GETGEN = 16

# netfilter hooks, registers, verdicts and expression constants
_HOOK_PREROUTING, _HOOK_FORWARD, _HOOK_OUTPUT, _HOOK_POSTROUTING = 0, 2, 3, 4
_PRIORITY_RAW, _PRIORITY_DSTNAT, _PRIORITY_FILTER, _PRIORITY_SRCNAT = -300, -100, 0, 100
_NF_DROP, _NF_ACCEPT, _NFT_JUMP, _NFT_RETURN = 0, 1, -3, -5
_REG_VERDICT, _REG_1, _REG_2, _REG32_01, _REG32_02 = 0, 1, 2, 9, 10
_CMP_EQ, _CMP_NEQ = 0, 1
_PAYLOAD_NETWORK, _PAYLOAD_TRANSPORT = 1, 2
_META_IIFNAME, _META_OIFNAME, _META_L4PROTO = 6, 7, 16
_CT_STATE, _CT_STATUS = 0, 2
_CT_ESTABLISHED, _CT_RELATED = 1 << 1, 1 << 2
_IPS_DST_NAT = 0x20
_FIB_RESULT_ADDRTYPE, _FIB_F_DADDR = 3, 1 << 1
_RTN_LOCAL = 2
_NAT_DNAT = 1
_UDATA_RULE_COMMENT = 0
_UDATA_SET_KEYBYTEORDER, _BYTEORDER_HOST = 0, 1
_IFNAMSIZ = 16

# nft's data type numbers; a concatenation's type packs them 6 bits apart.
_TYPE_IPADDR, _TYPE_INET_PROTO, _TYPE_INET_SERVICE, _TYPE_IFNAME = 7, 12, 13, 41
_PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132}

_SETS: dict[str, tuple[tuple[int, ...], int, tuple[int, ...] | None, int]] = {
    # name: (key types, key length, data types, data length); a plain set has
    # no data. Each field of a concatenation takes whole 4-byte registers.
    "ports": ((_TYPE_INET_PROTO, _TYPE_INET_SERVICE), 8, (_TYPE_IPADDR, _TYPE_INET_SERVICE), 8),
    "ports_addr": ((_TYPE_IPADDR, _TYPE_INET_PROTO, _TYPE_INET_SERVICE), 12, (_TYPE_IPADDR, _TYPE_INET_SERVICE), 8),
    "bridges": ((_TYPE_IFNAME,), _IFNAMSIZ, None, 0),
    "same_bridge": ((_TYPE_IFNAME, _TYPE_IFNAME), 2 * _IFNAMSIZ, None, 0),
    "guarded": ((_TYPE_IFNAME,), _IFNAMSIZ, None, 0),
}
_PORT_MAPS = ("ports", "ports_addr")
_BRIDGE_SETS = ("bridges", "same_bridge", "guarded")
_LOCALHOST = IPv4Network("127.0.0.0/8")
_OWNER = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ATTR = struct.Struct("=HH")
_HEADER = struct.Struct("=IHHII")
_RULE_HANDLE = 3  # NFTA_RULE_HANDLE


# ---- message classes (pyroute2's, corrected where they are wrong) ----------------


class _rule_msg(nft.nft_rule_msg):  # type: ignore[misc]  # pyroute2 is untyped
    # NFTA_RULE_USERDATA is a TLV list (libnftnl's nftnl_udata); pyroute2 packs
    # it as a length-prefixed string. Send it as raw bytes built by _udata().
    nla_map = tuple(
        (name, "cdata") if name == "NFTA_RULE_USERDATA" else (name, kind) for name, kind in nft.nft_rule_msg.nla_map
    )

    class nft_expr(nft.nft_rule_msg.nft_expr):  # type: ignore[misc]
        class nft_fib(nft.nft_regs):  # type: ignore[misc]
            # pyroute2 encodes the result as a flag set and the flags as an enum:
            # both backwards. The kernel wants plain 32-bit numbers.
            nla_map = (
                ("NFTA_FIB_UNSPEC", "none"),
                ("NFTA_FIB_DREG", "be32"),
                ("NFTA_FIB_RESULT", "be32"),
                ("NFTA_FIB_FLAGS", "be32"),
            )


class _set_msg(nft.nft_set_msg):  # type: ignore[misc]  # pyroute2 is untyped
    # NFTA_SET_USERDATA is a TLV list too; sent as raw bytes built by _set_udata().
    nla_map = tuple(
        (name, "cdata") if name == "NFTA_SET_USERDATA" else (name, kind) for name, kind in nft.nft_set_msg.nla_map
    )


def _marshal() -> Marshal:
    marshal = Marshal()
    for mtype, cls in nft.AsyncNFTSocket.policy.items():
        marshal.msg_map[mtype | NFNL_SUBSYS_NFTABLES << 8] = cls
    # listed rules carry their user data as raw bytes, comparable with _udata()
    marshal.msg_map[_NEWRULE | NFNL_SUBSYS_NFTABLES << 8] = _rule_msg
    return marshal


# ---- expressions -----------------------------------------------------------------

Expr = dict[str, Any]


def _expr(name: str, **attrs: object) -> Expr:
    prefix = f"NFTA_{name.upper()}_"
    data = [(prefix + key.upper(), value) for key, value in attrs.items()]
    return {"attrs": [("NFTA_EXPR_NAME", name), ("NFTA_EXPR_DATA", {"attrs": data})]}


def _data(value: bytes) -> dict[str, Any]:
    return {"attrs": [("NFTA_DATA_VALUE", value)]}


def _verdict(code: int, chain: str | None = None) -> Expr:
    verdict: list[tuple[str, object]] = [("NFTA_VERDICT_CODE", code)]
    if chain is not None:
        verdict.append(("NFTA_VERDICT_CHAIN", chain))
    return _expr("immediate", dreg=_REG_VERDICT, data={"attrs": [("NFTA_DATA_VERDICT", {"attrs": verdict})]})


def _ip_saddr_in(subnet: IPv4Network) -> list[Expr]:
    """``ip saddr SUBNET``, as nft encodes it (a shorter load for whole-byte prefixes)."""
    prefix = subnet.prefixlen
    if prefix == 0:
        return []
    network = subnet.network_address.packed
    if prefix % 8 == 0:
        return [
            _expr("payload", dreg=_REG_1, base=_PAYLOAD_NETWORK, offset=12, len=prefix // 8),
            _expr("cmp", sreg=_REG_1, op=_CMP_EQ, data=_data(network[: prefix // 8])),
        ]
    return [
        _expr("payload", dreg=_REG_1, base=_PAYLOAD_NETWORK, offset=12, len=4),
        _expr(
            "bitwise",
            sreg=_REG_1,
            dreg=_REG_1,
            len=4,
            mask=_data(subnet.netmask.packed),
            xor=_data(bytes(4)),
        ),
        _expr("cmp", sreg=_REG_1, op=_CMP_EQ, data=_data(network)),
    ]


def _ifname_bytes(name: str) -> bytes:
    """An interface name as the kernel stores it: NUL-padded to 16 bytes."""
    return name.encode().ljust(_IFNAMSIZ, b"\0")


def _ifname(key: int, op: int, name: str) -> list[Expr]:
    """``iifname``/``oifname`` ``==``/``!=`` *name*."""
    return [
        _expr("meta", key=key, dreg=_REG_1),
        _expr("cmp", sreg=_REG_1, op=op, data=_data(_ifname_bytes(name))),
    ]


def _ifname_in(key: int, set_name: str) -> list[Expr]:
    """``iifname``/``oifname`` ``@SET``."""
    return [_expr("meta", key=key, dreg=_REG_1), _expr("lookup", set=set_name, sreg=_REG_1)]


def _ifname_pair_not_in(set_name: str) -> list[Expr]:
    """``iifname . oifname != @SET``: each name fills a whole 16-byte register."""
    return [
        _expr("meta", key=_META_IIFNAME, dreg=_REG_1),
        _expr("meta", key=_META_OIFNAME, dreg=_REG_2),
        _expr("lookup", set=set_name, sreg=_REG_1, flags=frozenset({"NFT_LOOKUP_F_INV"})),
    ]


def _ct_bits(key: int, bits: int) -> list[Expr]:
    """``ct status``/``ct state`` has any of *bits* (both are host-endian bit fields)."""
    return [
        _expr("ct", key=key, dreg=_REG_1),
        _expr("bitwise", sreg=_REG_1, dreg=_REG_1, len=4, mask=_data(struct.pack("=I", bits)), xor=_data(bytes(4))),
        _expr("cmp", sreg=_REG_1, op=_CMP_NEQ, data=_data(bytes(4))),
    ]


def _ct_status_dnat() -> list[Expr]:
    return _ct_bits(_CT_STATUS, _IPS_DST_NAT)


def _ip_daddr_loopback_not_from_lo() -> list[Expr]:
    """``iifname != "lo" ip daddr 127.0.0.0/8``."""
    return _ifname(_META_IIFNAME, _CMP_NEQ, "lo") + [
        _expr("payload", dreg=_REG_1, base=_PAYLOAD_NETWORK, offset=16, len=1),
        _expr("cmp", sreg=_REG_1, op=_CMP_EQ, data=_data(_LOCALHOST.network_address.packed[:1])),
    ]


def _fib_daddr_type_local() -> list[Expr]:
    return [
        _expr("fib", dreg=_REG_1, result=_FIB_RESULT_ADDRTYPE, flags=_FIB_F_DADDR),
        _expr("cmp", sreg=_REG_1, op=_CMP_EQ, data=_data(struct.pack("=I", _RTN_LOCAL))),
    ]


def _dnat_through(map_name: str, with_daddr: bool) -> list[Expr]:
    """``dnat ip to [ip daddr .] meta l4proto . th dport map @MAP``.

    The key is built in consecutive 4-byte registers; the lookup overwrites
    them with the address (first register) and port (second).
    """
    key: list[Expr] = []
    proto_reg, port_reg = _REG_1, _REG32_01
    if with_daddr:
        key.append(_expr("payload", dreg=_REG_1, base=_PAYLOAD_NETWORK, offset=16, len=4))
        proto_reg, port_reg = _REG32_01, _REG32_02
    key.append(_expr("meta", key=_META_L4PROTO, dreg=proto_reg))
    key.append(_expr("payload", dreg=port_reg, base=_PAYLOAD_TRANSPORT, offset=2, len=2))
    return key + [
        _expr("lookup", set=map_name, sreg=_REG_1, dreg=_REG_1),
        _expr("nat", type=_NAT_DNAT, family=_NFPROTO_IPV4, reg_addr_min=_REG_1, reg_proto_min=_REG32_01),
    ]


def _masquerade() -> Expr:
    return _expr("masq")


def _set_udata() -> bytes:
    """A set's user data saying its key is in host byte order.

    Only ``nft list`` reads it: without it, nft takes a single-field key as
    big-endian and prints an interface name as ``""`` (concatenations and
    maps carry their fields' own byte order and need none).
    """
    return struct.pack("=BBI", _UDATA_SET_KEYBYTEORDER, 4, _BYTEORDER_HOST)


def _udata(comment: str) -> bytes:
    text = comment.encode()[:127] + b"\0"
    return struct.pack("BB", _UDATA_RULE_COMMENT, len(text)) + text


# ---- map keys --------------------------------------------------------------------


def _proto_port(protocol: str, port: int) -> bytes:
    return struct.pack("B3x", _PROTOCOL_NUMBERS[protocol]) + struct.pack(">H2x", port)


def _map_entry(forward: PortForward) -> tuple[str, bytes, bytes]:
    """(map, key, data) of one forward."""
    target = forward.container_ip.packed + struct.pack(">H2x", forward.container_port)
    key = _proto_port(forward.protocol, forward.host_port)
    if forward.host_ip is None:
        return "ports", key, target
    return "ports_addr", forward.host_ip.packed + key, target


def _concat_type(types: Sequence[int]) -> int:
    value = 0
    for kind in types:
        value = value << 6 | kind
    return value


# ---- batches ---------------------------------------------------------------------


#: the skeleton's messages (type, flags, body, label) per length of table name
_SKELETONS: dict[int, list[tuple[int, int, bytes, str]]] = {}


class _Batch:
    """The messages of one nfnetlink transaction, each with a label for errors."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.messages: list[tuple[int, bytes]] = []
        self.labels: dict[int, str] = {}
        self.echoed: list[int] = []
        self.creates_table = False
        self.deletes_table = False

    def __len__(self) -> int:
        return len(self.messages)

    def _add(self, msg: Any, mtype: int, flags: int, label: str, family: int = _NFPROTO_IPV4) -> int:
        msg["nfgen_family"] = family
        seq, data = Netlink.encode(msg, mtype | NFNL_SUBSYS_NFTABLES << 8, flags)
        self.messages.append((seq, data))
        self.labels[seq] = label
        return seq

    def add_skeleton(self) -> None:
        """What :func:`_skeleton` adds, at the start of this batch, from a cache.

        The skeleton is the same for every table but for its name: it is
        encoded once (by pyroute2, ~1 ms a message) for a placeholder name
        of the same length, which is then replaced in the bytes.
        """
        assert not self.messages  # the sets' NFTA_SET_ID count from the batch's start
        placeholder, name = "#" * len(self.table), self.table
        cached = _SKELETONS.get(len(name))
        if cached is None:
            template = _Batch(placeholder)
            _skeleton(template)
            cached = []
            for seq, data in template.messages:
                _length, mtype, flags, _seq, _pid = _HEADER.unpack_from(data)
                body = data[16:]
                if body.count(placeholder.encode()) != 1:  # the name must be findable, once
                    _skeleton(self)
                    return
                cached.append((mtype, flags, body, template.labels[seq]))
            _SKELETONS[len(name)] = cached
        for mtype, flags, body, label in cached:
            seq = next_seq()
            body = body.replace(placeholder.encode(), name.encode())
            self.messages.append((seq, _HEADER.pack(16 + len(body), mtype, flags, seq, 0) + body))
            self.labels[seq] = label.replace(placeholder, name)
        self.creates_table = True

    def table_add(self) -> None:
        msg = nft.nft_table_msg()
        msg["attrs"] = [("NFTA_TABLE_NAME", self.table)]
        self._add(msg, _NEWTABLE, NLM_F_CREATE | NLM_F_EXCL, f"create table ip {self.table}")
        self.creates_table = True

    def table_delete(self) -> None:
        msg = nft.nft_table_msg()
        msg["attrs"] = [("NFTA_TABLE_NAME", self.table)]
        self._add(msg, _DELTABLE, 0, f"delete table ip {self.table}")
        self.deletes_table = True

    def set_add(self, name: str) -> None:
        key_types, key_len, data_types, data_len = _SETS[name]
        msg = _set_msg()
        attrs: list[tuple[str, object]] = [
            ("NFTA_SET_TABLE", self.table),
            ("NFTA_SET_NAME", name),
            ("NFTA_SET_FLAGS", frozenset() if data_types is None else frozenset({"NFT_SET_MAP"})),
            ("NFTA_SET_KEY_TYPE", _concat_type(key_types)),
            ("NFTA_SET_KEY_LEN", key_len),
        ]
        if data_types is not None:
            attrs += [("NFTA_SET_DATA_TYPE", _concat_type(data_types)), ("NFTA_SET_DATA_LEN", data_len)]
        attrs.append(("NFTA_SET_ID", len(self.messages) + 1))
        if key_types == (_TYPE_IFNAME,):
            attrs.append(("NFTA_SET_USERDATA", _set_udata()))
        msg["attrs"] = attrs
        self._add(msg, _NEWSET, NLM_F_CREATE | NLM_F_EXCL, f"create {'set' if data_types is None else 'map'} {name}")

    def chain_add(self, name: str, hook: tuple[int, int, str] | None = None) -> None:
        msg = nft.nft_chain_msg()
        attrs: list[tuple[str, object]] = [("NFTA_CHAIN_TABLE", self.table), ("NFTA_CHAIN_NAME", name)]
        if hook is not None:
            number, priority, kind = hook
            attrs += [
                ("NFTA_CHAIN_HOOK", {"attrs": [("NFTA_HOOK_HOOKNUM", number), ("NFTA_HOOK_PRIORITY", priority)]}),
                ("NFTA_CHAIN_POLICY", _NF_ACCEPT),
                ("NFTA_CHAIN_TYPE", kind),
            ]
        msg["attrs"] = attrs
        self._add(msg, _NEWCHAIN, NLM_F_CREATE | NLM_F_EXCL, f"create chain {name}")

    def rule_add(self, chain: str, exprs: list[Expr], label: str, comment: str | None = None, echo: bool = False) -> int:
        msg = _rule_msg()
        attrs: list[tuple[str, object]] = [
            ("NFTA_RULE_TABLE", self.table),
            ("NFTA_RULE_CHAIN", chain),
            ("NFTA_RULE_EXPRESSIONS", exprs),
        ]
        if comment is not None:
            attrs.append(("NFTA_RULE_USERDATA", _udata(comment)))
        msg["attrs"] = attrs
        seq = self._add(
            msg, _NEWRULE, NLM_F_CREATE | NLM_F_APPEND | (NLM_F_ECHO if echo else 0), f"add rule to {chain}: {label}"
        )
        if echo:
            self.echoed.append(seq)
        return seq

    def rule_delete(self, chain: str, handle: int, label: str) -> None:
        msg = nft.nft_rule_msg()
        msg["attrs"] = [("NFTA_RULE_TABLE", self.table), ("NFTA_RULE_CHAIN", chain), ("NFTA_RULE_HANDLE", handle)]
        self._add(msg, _DELRULE, 0, f"delete rule {handle} from {chain}: {label}")

    def element(self, adding: bool, map_name: str, key: bytes, data: bytes, label: str) -> None:
        """Publish or withdraw one port forward: an element of map *map_name*."""
        self._element(adding, map_name, key, data, f"publish {label}" if adding else f"withdraw {label}")

    def member(self, adding: bool, set_name: str, key: bytes, label: str) -> None:
        """Add *key* to the plain set *set_name*, or remove it."""
        self._element(adding, set_name, key, None, label)

    def _element(self, adding: bool, set_name: str, key: bytes, data: bytes | None, label: str) -> None:
        # Packed by hand: this is the per-port hot path, and pyroute2's encoder
        # cost several times the kernel's work (tests/unit/test_nft_pack.py
        # checks the bytes against pyroute2's encoding).
        seq = next_seq()
        body = _element_body(self.table, set_name, key, data if adding else None)
        if adding:
            self._add_packed(seq, _NEWSETELEM, NLM_F_CREATE | NLM_F_EXCL, body, label)
        else:
            self._add_packed(seq, _DELSETELEM, 0, body, label)

    def _add_packed(self, seq: int, mtype: int, flags: int, body: bytes, label: str) -> None:
        header = _HEADER.pack(16 + len(body), mtype | NFNL_SUBSYS_NFTABLES << 8, flags | NLM_F_REQUEST, seq, 0)
        self.messages.append((seq, header + body))
        self.labels[seq] = label

    def framed(self) -> list[tuple[int, bytes]]:
        """The messages between BATCH_BEGIN and BATCH_END."""
        marker = _nfgen(_NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES)
        first, last = next_seq(), next_seq()
        begin = (first, _HEADER.pack(16 + len(marker), _BATCH_BEGIN, NLM_F_REQUEST, first, 0) + marker)
        end = (last, _HEADER.pack(16 + len(marker), _BATCH_END, NLM_F_REQUEST, last, 0) + marker)
        # A failed commit is reported against BATCH_BEGIN.
        self.labels[first] = "commit"
        self.labels[last] = "commit"
        return [begin, *self.messages, end]


_NFTA_LIST_ELEM, _NFTA_DATA_VALUE = 1, 1
_NFTA_SET_ELEM_LIST_TABLE, _NFTA_SET_ELEM_LIST_SET, _NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
_NFTA_SET_ELEM_KEY, _NFTA_SET_ELEM_DATA = 1, 2


def _nfgen(family: int, res_id: int = 0) -> bytes:
    """struct nfgenmsg: family, version 0, resource id (big-endian)."""
    return struct.pack("!BBH", family, 0, res_id)


def _element_body(table: str, map_name: str, key: bytes, data: bytes | None) -> bytes:
    """NEWSETELEM / DELSETELEM body for one element of map *map_name*."""
    element = nla(_NFTA_SET_ELEM_KEY, nla(_NFTA_DATA_VALUE, key))
    if data is not None:
        element += nla(_NFTA_SET_ELEM_DATA, nla(_NFTA_DATA_VALUE, data))
    return (
        _nfgen(_NFPROTO_IPV4)
        + nla_string(_NFTA_SET_ELEM_LIST_TABLE, table)
        + nla_string(_NFTA_SET_ELEM_LIST_SET, map_name)
        + nla(_NFTA_SET_ELEM_LIST_ELEMENTS, nla(_NFTA_LIST_ELEM, element))
    )


# ---- the rules of one network ----------------------------------------------------


_RuleSpec = tuple[str, list[Expr], str]  # chain, expressions, label


def _network_rules(rules: NetworkRules) -> list[_RuleSpec]:
    bridge, subnet = rules.bridge, rules.subnet
    out: list[_RuleSpec] = []
    if not rules.internal:
        out.append(
            (
                "postrouting",
                _ip_saddr_in(subnet) + _ifname(_META_OIFNAME, _CMP_NEQ, bridge) + [_masquerade()],
                f"masquerade traffic from {subnet} leaving by any interface but {bridge}",
            )
        )
    out.append(
        (
            "postrouting",
            _ct_status_dnat() + _ip_saddr_in(subnet) + _ifname(_META_OIFNAME, _CMP_EQ, bridge) + [_masquerade()],
            f"masquerade published-port traffic from {subnet} back into {bridge} (hairpin)",
        )
    )
    out.append(
        (
            "postrouting",
            _ip_saddr_in(_LOCALHOST) + _ifname(_META_OIFNAME, _CMP_EQ, bridge) + [_masquerade()],
            f"masquerade traffic from 127.0.0.0/8 into {bridge}",
        )
    )
    if rules.internal:
        out.append(
            (
                "forward",
                _ifname(_META_IIFNAME, _CMP_EQ, bridge) + _ifname(_META_OIFNAME, _CMP_NEQ, bridge) + [_verdict(_NF_DROP)],
                f"drop traffic from {bridge} to other interfaces",
            )
        )
        out.append(
            (
                "forward",
                _ifname(_META_OIFNAME, _CMP_EQ, bridge) + _ifname(_META_IIFNAME, _CMP_NEQ, bridge) + [_verdict(_NF_DROP)],
                f"drop traffic from other interfaces to {bridge}",
            )
        )
    return out


_Member = tuple[str, bytes, str]  # set, key, the key in nft syntax


def _network_members(rules: NetworkRules) -> list[_Member]:
    """The set elements of one network: what puts its bridge under the isolation
    rule and, unless it allows direct access, under the direct-access guard."""
    name = _ifname_bytes(rules.bridge)
    text = f'"{rules.bridge}"'
    members = [("bridges", name, text), ("same_bridge", name + name, f"{text} . {text}")]
    if not rules.direct_access:
        members.append(("guarded", name, text))
    return members


def _member_label(adding: bool, member: _Member) -> str:
    set_name, _, text = member
    return f"add {text} to set {set_name}" if adding else f"remove {text} from set {set_name}"


# ---- the backend -----------------------------------------------------------------


class _UnknownOutcome(KernelError):
    """A batch was sent but its answer was lost: it may or may not have been committed."""


def _skeleton(batch: _Batch) -> None:
    """The table with its sets, maps, chains and the rules every network shares."""
    batch.table_add()
    for name in _SETS:
        batch.set_add(name)
    batch.chain_add("prerouting", (_HOOK_PREROUTING, _PRIORITY_DSTNAT, "nat"))
    batch.chain_add("output", (_HOOK_OUTPUT, _PRIORITY_DSTNAT, "nat"))
    batch.chain_add("published")
    batch.chain_add("postrouting", (_HOOK_POSTROUTING, _PRIORITY_SRCNAT, "nat"))
    batch.chain_add("forward", (_HOOK_FORWARD, _PRIORITY_FILTER, "filter"))
    batch.chain_add("isolation")
    batch.chain_add("direct")
    batch.chain_add("loopback", (_HOOK_PREROUTING, _PRIORITY_RAW, "filter"))
    batch.rule_add(
        "loopback", _ip_daddr_loopback_not_from_lo() + [_verdict(_NF_DROP)], "drop loopback destinations from outside lo"
    )
    jump = _fib_daddr_type_local() + [_verdict(_NFT_JUMP, "published")]
    batch.rule_add("prerouting", jump, "send traffic to local addresses to published")
    batch.rule_add("output", jump, "send traffic to local addresses to published")
    batch.rule_add("published", _dnat_through("ports_addr", True), "forward ports published on one address")
    batch.rule_add("published", _dnat_through("ports", False), "forward ports published on every address")
    between_bridges = (
        _ifname_in(_META_IIFNAME, "bridges")
        + _ifname_in(_META_OIFNAME, "bridges")
        + _ifname_pair_not_in("same_bridge")
    )
    batch.rule_add(
        "forward", between_bridges + [_verdict(_NFT_JUMP, "isolation")], "send traffic between bridges to isolation"
    )
    batch.rule_add("isolation", _ct_status_dnat() + [_verdict(_NFT_RETURN)], "let published-port traffic pass")
    batch.rule_add("isolation", [_verdict(_NF_DROP)], "drop the rest of the traffic between bridges")
    into_guarded = _ifname_in(_META_OIFNAME, "guarded") + _ifname_pair_not_in("same_bridge")
    batch.rule_add("forward", into_guarded + [_verdict(_NFT_JUMP, "direct")], "send traffic into guarded bridges to direct")
    batch.rule_add(
        "direct", _ct_bits(_CT_STATE, _CT_ESTABLISHED | _CT_RELATED) + [_verdict(_NFT_RETURN)], "let replies pass"
    )
    batch.rule_add("direct", _ct_status_dnat() + [_verdict(_NFT_RETURN)], "let published-port traffic pass")
    batch.rule_add("direct", [_verdict(_NF_DROP)], "drop new connections not made through a published port")


class NftablesFirewall:
    """A :class:`~cnm.firewall.FirewallBackend` keeping its rules in table ``ip cnm-<owner>``.

    Opens one nfnetlink socket inside *namespace* for its whole life; every
    call is one batch on it. Thread-safe: calls are serialised.
    """

    name = "nftables"

    def __init__(self, namespace: Namespace, owner: str) -> None:
        if not _OWNER.fullmatch(owner):
            raise InvalidArgumentError(f"firewall: owner token {owner!r} must be 1-64 letters, digits, '_' or '-'")
        self.namespace = namespace
        self.table = f"cnm-{owner}"
        try:
            sock = namespace.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as exc:
            raise kernel_error(exc, f"firewall {self.table}: open nfnetlink socket in namespace {namespace.name!r}") from exc
        try:
            self._nl: Netlink | None = Netlink(sock, _marshal())
        except BaseException:
            sock.close()
            raise
        self._lock = threading.Lock()
        # Calls whose undo has not run yet; the table exists exactly while > 0.
        self._users = 0
        # What the calls not yet undone installed: rule handles and map keys.
        # Lets the cleanup after a lost answer tell this call's objects from theirs.
        self._live_rules: set[int] = set()
        self._live_elements: set[tuple[str, bytes]] = set()

    def __repr__(self) -> str:
        return f"NftablesFirewall({self.namespace.name!r}, table={self.table!r})"

    # ---- the contract ----------------------------------------------------------

    def add_network(self, rules: NetworkRules, undo: UndoLog) -> None:
        what = f"firewall {self.table}: network {rules.name!r}"
        specs = _network_rules(rules)
        members = _network_members(rules)
        keys = {(set_name, key) for set_name, key, _ in members}
        comment = _udata(rules.name)

        def drop_strays(batch: _Batch) -> None:
            for chain, handle, udata in self._rules_listed():
                if udata == comment and handle not in self._live_rules:
                    batch.rule_delete(chain, handle, "stray")
            # An element that belongs to no live call can only be this batch's.
            listed = self._elements_listed(_BRIDGE_SETS)
            for member in members:
                set_name, key, _ = member
                if (set_name, key) in listed and (set_name, key) not in self._live_elements:
                    batch.member(False, set_name, key, _member_label(False, member))

        with self._lock:
            batch = self._batch_creating()
            seqs = [batch.rule_add(chain, exprs, label, comment=rules.name, echo=True) for chain, exprs, label in specs]
            for member in members:
                batch.member(True, member[0], member[1], _member_label(True, member))
            echoes = self._apply(batch, what, drop_strays)
            handles = [(chain, echoes[seq], label) for seq, (chain, _, label) in zip(seqs, specs)]
            self._live_rules.update(handle for _, handle, _ in handles)
            self._live_elements.update(keys)
            self._users += 1

        def fill(batch: _Batch, still_there: tuple[set[int], set[tuple[str, bytes]]] | None) -> None:
            for chain, handle, label in handles:
                if still_there is None or handle in still_there[0]:
                    batch.rule_delete(chain, handle, label)
            for member in members:
                set_name, key, _ = member
                if still_there is None or (set_name, key) in still_there[1]:
                    batch.member(False, set_name, key, _member_label(False, member))

        def forget() -> None:
            self._live_rules.difference_update(handle for _, handle, _ in handles)
            self._live_elements.difference_update(keys)

        def present() -> tuple[set[int], set[tuple[str, bytes]]]:
            rules_there = {handle for _, handle, _ in self._rules_listed()}
            return rules_there, self._elements_listed(_BRIDGE_SETS)

        undo.push(f"{what}: remove firewall rules", _Remover(self, what, fill, present, forget))
        self._route_localnet(rules.bridge, what, undo)

    def _route_localnet(self, bridge: str, what: str, undo: UndoLog) -> None:
        """Let the bridge route loopback sources (the host's own connections to
        a port published on 127.0.0.1, DNATed into the bridge), now that the
        ``loopback`` chain drops loopback destinations from it.

        This backend sets it, not the driver, so that a host without these
        rules (the "none" backend) never has it on. It is turned off again
        before the rules go, so a bridge that outlives them has it off. A
        bridge that is not there yet (rules may come first) is left alone.
        """
        key = f"net/ipv4/conf/{bridge}/route_localnet"

        def write(value: str) -> bool:
            try:
                self.namespace.write_sysctl(key, value)
            except KernelError as exc:
                if exc.errno not in ALREADY_GONE:
                    raise
                return False
            return True

        if write("1"):
            undo.push(f"{what}: route_localnet off", lambda: write("0"))

    def add_port_forwards(self, rules: NetworkRules, forwards: Sequence[PortForward], undo: UndoLog) -> None:
        self.add_port_forwards_many(rules, [(forwards, undo)])

    def add_port_forwards_many(
        self, rules: NetworkRules, groups: Sequence[tuple[Sequence[PortForward], UndoLog]]
    ) -> None:
        groups = [(forwards, undo) for forwards, undo in groups if forwards]
        if not groups:
            return
        what = f"firewall {self.table}: network {rules.name!r}"
        entries = [[(*_map_entry(f), str(f)) for f in forwards] for forwards, _ in groups]

        def drop_strays(batch: _Batch) -> None:
            # A key that is in a map but belongs to no live call can only be this batch's.
            listed = self._elements_listed()
            for group in entries:
                for map_name, key, data, label in group:
                    if (map_name, key) in listed and (map_name, key) not in self._live_elements:
                        batch.element(False, map_name, key, data, label)

        with self._lock:
            batch = self._batch_creating()
            for group in entries:
                for map_name, key, data, label in group:
                    batch.element(True, map_name, key, data, label)
            self._apply(batch, what, drop_strays)
            for group in entries:
                self._live_elements.update((map_name, key) for map_name, key, _, _ in group)
            self._users += len(groups)
        for group, (_, undo) in zip(entries, groups):
            undo.push(f"{what}: withdraw published ports", self._forwards_remover(what, group))

    def _forwards_remover(self, what: str, entries: list[tuple[str, bytes, bytes, str]]) -> Callable[[], None]:
        keys = {(map_name, key) for map_name, key, _, _ in entries}

        def fill(batch: _Batch, still_there: set[tuple[str, bytes]] | None) -> None:
            for map_name, key, data, label in entries:
                if still_there is None or (map_name, key) in still_there:
                    batch.element(False, map_name, key, data, label)

        def forget() -> None:
            self._live_elements.difference_update(keys)

        return _Remover(self, what, fill, self._elements_listed, forget)

    @classmethod
    def sweep(cls, namespace: Namespace, owner: str) -> list[str]:
        """Delete table ``ip cnm-OWNER`` in *namespace*, left by a host that is gone.

        For :func:`cnm.gc`: the backend's whole state is that one table, so
        one transaction removes it. Returns what was removed (nothing if the
        table is not there).
        """
        backend = cls(namespace, owner)
        try:
            batch = _Batch(backend.table)
            batch.table_delete()
            try:
                backend._commit(batch, f"firewall {backend.table}: remove what a dead host left")
            except KernelError as exc:
                if exc.errno == errno.ENOENT and not isinstance(exc, _UnknownOutcome):
                    return []
                raise
            return [f"nftables table ip {backend.table}"]
        finally:
            backend.close()

    def close(self) -> None:
        with self._lock:
            nl, self._nl = self._nl, None
        if nl is not None:
            nl.close()

    # ---- internals ---------------------------------------------------------------

    def _link(self) -> Netlink:
        if self._nl is None:
            raise ClosedError(f"firewall {self.table}: the backend is closed")
        return self._nl

    def _batch_creating(self) -> _Batch:
        """A new batch; if nothing is installed yet, it starts by creating the table."""
        self._link()
        batch = _Batch(self.table)
        if self._users == 0:
            batch.add_skeleton()
        return batch



    def _apply(self, batch: _Batch, what: str, strays: Callable[[_Batch], object]) -> dict[int, int]:
        """Commit an adding *batch*; if its answer is lost, remove whatever it may have installed.

        *strays(batch)* adds to *batch* the deletion of the objects this batch
        would have added that are installed but belong to no live call. A
        batch that created the table is cleaned up by deleting the table.
        """
        try:
            return self._commit(batch, what)
        except _UnknownOutcome as exc:
            try:
                cleanup = _Batch(self.table)
                if batch.creates_table:
                    cleanup.table_delete()
                else:
                    strays(cleanup)
                if len(cleanup):
                    self._commit(cleanup, f"{what}: clean up", gone_ok=True)
            except Exception as failure:
                exc.add_note(f"removing what it may have installed also failed: {failure!r}")
            else:
                exc.add_note("whatever it may have installed has been removed again")
            raise

    def _commit(self, batch: _Batch, what: str, gone_ok: bool = False) -> dict[int, int]:
        """Send *batch* as one transaction; return ``{seq: rule handle}`` of echoed rules.

        Raises :class:`KernelError` naming the first message the kernel
        refused (nothing changed), or :class:`_UnknownOutcome` if the answer
        was lost. With *gone_ok*, a refusal with ENOENT of a batch that only
        deletes the table counts as success (the table is already gone).
        """
        nl = self._link()
        fence = nft.nft_gen_msg()
        fence["nfgen_family"] = _NFPROTO_UNSPEC
        framed = batch.framed()
        try:
            replies = nl.fenced(framed, Netlink.encode(fence, _GETGEN | NFNL_SUBSYS_NFTABLES << 8, 0))
        except OSError as exc:
            raise _UnknownOutcome(exc.errno or errno.EIO, f"{what}: no answer from the kernel ({exc})") from exc
        failures: list[tuple[int, NetlinkReply]] = []
        handles: dict[int, int] = {}
        for raw in replies:
            _length, mtype, _flags, seq, _pid = _HEADER.unpack_from(raw)
            if mtype == NLMSG_ERROR:
                failures += [(s, r) for s, r in Netlink._acks(raw) if r.error]
            elif seq in batch.echoed and mtype == _NEWRULE | NFNL_SUBSYS_NFTABLES << 8:
                # The commit's NEWGEN notice can carry the same sequence number.
                handle = _rule_handle(raw)
                if handle is not None:
                    handles[seq] = handle
        if failures:
            seq, reply = failures[0]
            if gone_ok and reply.error == errno.ENOENT and batch.deletes_table:
                return handles
            refused = kernel_error(OSError(reply.error, reply.message), f"{what}: {batch.labels.get(seq, 'batch')}")
            for other_seq, other in failures[1:]:
                refused.add_note(f"also refused: {batch.labels.get(other_seq, 'batch')}: {other.message or other.error}")
            refused.add_note("the transaction was aborted: nothing was changed")
            raise refused
        if any(seq not in handles for seq in batch.echoed):
            # Committed, but without the handles the rules could not be removed later.
            raise _UnknownOutcome(errno.EPROTO, f"{what}: the kernel did not echo the new rules back")
        return handles

    def undo_together(self, steps: Iterable[Callable[[], object]]) -> None:
        """Do what several of this backend's undo steps would do, in one transaction.

        For bulk deletion (:meth:`cnm.Host.delete_sandboxes`). Steps that are
        not this backend's, or already done, are ignored. On success the steps
        are done (running them does nothing); if the kernel refuses, nothing
        changed and nothing is raised: the steps, when run, then commit one by
        one and report their own failures.
        """
        ours = [s for s in steps if isinstance(s, _Remover) and s.backend is self and not s.done]
        if len(ours) < 2:
            return
        with self._lock:
            if self._nl is None:
                return
            batch = _Batch(self.table)
            if self._users == len(ours):
                batch.table_delete()
            else:
                for step in ours:
                    step.fill(batch, None)
            try:
                self._commit(batch, f"firewall {self.table}: {len(ours)} removals", gone_ok=True)
            except KernelError:
                return
            for step in ours:
                step.forget()
                step.done = True
            self._users -= len(ours)


    def _rules_listed(self) -> list[tuple[str, int, bytes | None]]:
        """(chain, handle, user data) of every rule in the table."""
        msg = _rule_msg()
        msg["nfgen_family"] = _NFPROTO_IPV4
        msg["attrs"] = [("NFTA_RULE_TABLE", self.table)]
        return [
            (m.get_attr("NFTA_RULE_CHAIN"), m.get_attr("NFTA_RULE_HANDLE"), m.get_attr("NFTA_RULE_USERDATA"))
            for m in self._dump(msg, _GETRULE)
        ]

    def _elements_listed(self, names: Iterable[str] = _PORT_MAPS) -> set[tuple[str, bytes]]:
        """(set, key) of every element in the table's sets or maps *names*."""
        keys: set[tuple[str, bytes]] = set()
        for name in names:
            msg = nft.nft_set_elem_list_msg()
            msg["nfgen_family"] = _NFPROTO_IPV4
            msg["attrs"] = [("NFTA_SET_ELEM_LIST_TABLE", self.table), ("NFTA_SET_ELEM_LIST_SET", name)]
            for reply in self._dump(msg, _GETSETELEM):
                for element in reply.get_attr("NFTA_SET_ELEM_LIST_ELEMENTS") or ():
                    key = element.get_attr("NFTA_SET_ELEM_KEY")
                    if key is not None:
                        keys.add((name, bytes(key.get_attr("NFTA_DATA_VALUE"))))
        return keys

    def _dump(self, msg: Any, mtype: int) -> Iterable[Any]:
        try:
            return self._link().dump(msg, mtype | NFNL_SUBSYS_NFTABLES << 8)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return []  # the table (or map) is gone, and what was in it
            raise kernel_error(exc, f"firewall {self.table}: list") from exc


class _Remover:
    """The undo step of one :class:`NftablesFirewall` call: one batch deleting what the call added.

    *fill(batch, still_there)* adds the deletions to *batch*: all of them
    when *still_there* is None, else only those in it (*present()* lists what
    is installed). The undo of the last outstanding call deletes the whole
    table instead. Running the step again does nothing. A class, so that
    :meth:`NftablesFirewall.undo_together` can recognise and batch it.
    """

    __slots__ = ("backend", "what", "fill", "present", "forget", "done")

    def __init__(
        self,
        backend: NftablesFirewall,
        what: str,
        fill: Callable[[_Batch, Any], None],
        present: Callable[[], Any],
        forget: Callable[[], None],
    ) -> None:
        self.backend, self.what, self.fill, self.present, self.forget = backend, what, fill, present, forget
        self.done = False

    def __call__(self) -> None:
        backend = self.backend
        with backend._lock:
            if self.done:
                return
            backend._link()
            batch = _Batch(backend.table)
            if backend._users == 1:
                batch.table_delete()
                backend._commit(batch, self.what, gone_ok=True)
            else:
                self.fill(batch, None)
                try:
                    backend._commit(batch, self.what)
                except KernelError as exc:
                    if exc.errno != errno.ENOENT or isinstance(exc, _UnknownOutcome):
                        raise
                    # One missing object aborts the whole batch: delete only what is left.
                    batch = _Batch(backend.table)
                    self.fill(batch, self.present())
                    if len(batch):
                        backend._commit(batch, self.what)
            self.forget()
            backend._users -= 1
            self.done = True


def _rule_handle(raw: bytes) -> int | None:
    """NFTA_RULE_HANDLE of one raw NEWRULE message (skipping the nfgenmsg header)."""
    offset = 16 + 4
    while offset + 4 <= len(raw):
        length, kind = _ATTR.unpack_from(raw, offset)
        if length < 4:
            break
        if kind & 0x3FFF == _RULE_HANDLE and length >= 12:
            (handle,) = struct.unpack_from(">Q", raw, offset + 4)
            return int(handle)
        offset += (length + 3) & ~3
    return None
