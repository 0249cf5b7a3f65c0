"""The nf_tables expressions cnm's rules are made of, for either address family.

Each builder returns the expressions of one nft phrase (``ip saddr
10.0.0.0/24``, ``oifname != "br0"``, ``dnat ip to ... map @ports``) as
pyroute2 attribute lists, encoded the way ``nft`` itself encodes that phrase,
so that ``nft list ruleset`` prints it back as the same phrase. That
printout is the only check there is that an encoding means what we think (a
wrong offset or register is accepted by the kernel and silently matches
something else), so every builder here is exercised against ``nft list`` by
``tests/integration/test_firewall_nftables.py``.

What differs between IPv4 and IPv6 is gathered in one :class:`AddressFamily`
value (:data:`IPV4`, :data:`IPV6`); the builders take it as a parameter, so
the rules of both families come from the same code. The third table, of the
``bridge`` family (:data:`BRIDGE`, a :class:`Family` without addresses),
sees the frames a bridge passes from port to port.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Network, IPv6Network
from typing import Any, Literal

import attrs

from ..._ip import IPNetwork

__all__ = [
    "BRIDGE",
    "IPV4",
    "IPV6",
    "AddressFamily",
    "Expr",
    "Family",
    "address_family",
    "addr_in",
    "comment_udata",
    "ct_state_established",
    "ct_status_dnat",
    "dnat_through",
    "fib_daddr_local",
    "ifname",
    "ifname_bytes",
    "ifname_in",
    "ifname_pair_not_in",
    "masquerade",
    "meta_is",
    "transport_is",
    "verdict",
]

Expr = dict[str, Any]

IFNAMSIZ = 16

# registers: NFT_REG_1 is 16 bytes, aliased by the 4-byte NFT_REG32_00..03
_REG_VERDICT, REG_1, REG_2, _REG32_00 = 0, 1, 2, 8
CMP_EQ, CMP_NEQ = 0, 1
_PAYLOAD_NETWORK, _PAYLOAD_TRANSPORT = 1, 2
META_PROTOCOL, META_IIFNAME, META_OIFNAME, META_L4PROTO, META_IIFGROUP, META_OIFGROUP = 1, 6, 7, 16, 21, 22
_CT_STATE, _CT_STATUS = 0, 2
_CT_ESTABLISHED, _CT_RELATED = 1 << 1, 1 << 2
_IPS_DST_NAT = 0x20
_FIB_RESULT_ADDRTYPE, _FIB_F_DADDR = 3, 1 << 1
_RTN_LOCAL = 2
_NAT_DNAT = 1
_UDATA_RULE_COMMENT = 0
NF_DROP, NF_ACCEPT, NFT_JUMP, NFT_RETURN = 0, 1, -3, -5

# nft's data type numbers (key and data types of sets and maps)
TYPE_IPADDR, TYPE_IP6ADDR, TYPE_INET_PROTO, TYPE_INET_SERVICE, TYPE_IFNAME = 7, 8, 12, 13, 41


@attrs.frozen(eq=False)
class Family:
    """An nf_tables family cnm has a table in: what every message names.

    There are three, :data:`IPV4`, :data:`IPV6` and :data:`BRIDGE`,
    compared and hashed by identity: they key the backend's per-family state
    on the per-port path, where hashing nine fields each time would show.
    """

    #: 4 or 6, as ``ipaddress`` numbers it; 0 for the bridge family.
    version: int
    #: nft's name of the family, and of its tables: ``ip``, ``ip6`` or ``bridge``.
    keyword: Literal["ip", "ip6", "bridge"]
    #: NFPROTO_IPV4, NFPROTO_IPV6 or NFPROTO_BRIDGE (nfgenmsg's family, the
    #: nat expression's).
    nfproto: int


@attrs.frozen(eq=False)
class AddressFamily(Family):
    """Everything the rules of one address family differ in: :data:`IPV4` or :data:`IPV6`."""

    #: Offsets of the source and destination addresses in the network header.
    saddr: int
    daddr: int
    #: Address length in bytes.
    addr_len: int
    #: nft's data type of an address, for set and map key/data types.
    addr_type: int
    #: The loopback destinations no interface but ``lo`` may bring in.
    loopback: IPNetwork
    #: Whether the bridges route loopback sources (``route_localnet``, IPv4
    #: only), so that the host's own connections to a loopback address can be
    #: DNATed into them and must be masqueraded there.
    routes_loopback: bool

    @property
    def registers(self) -> int:
        """How many 4-byte registers an address fills."""
        return self.addr_len // 4


IPV4 = AddressFamily(4, "ip", 2, 12, 16, 4, TYPE_IPADDR, IPv4Network("127.0.0.0/8"), True)
IPV6 = AddressFamily(6, "ip6", 10, 8, 24, 16, TYPE_IP6ADDR, IPv6Network("::1/128"), False)
BRIDGE = Family(0, "bridge", 7)


def address_family(version: int) -> AddressFamily:
    """:data:`IPV4` or :data:`IPV6`."""
    return IPV4 if version == 4 else IPV6


def expr(name: str, **attrs: object) -> Expr:
    """One expression: *name* and its ``NFTA_<NAME>_<KEY>`` attributes."""
    prefix = f"NFTA_{name.upper()}_"
    data = [(prefix + key.upper(), value) for key, value in attrs.items()]
    return {"attrs": [("NFTA_EXPR_NAME", name), ("NFTA_EXPR_DATA", {"attrs": data})]}


def data(value: bytes) -> dict[str, Any]:
    return {"attrs": [("NFTA_DATA_VALUE", value)]}


def verdict(code: int, chain: str | None = None) -> Expr:
    """``drop``, ``return``, ``jump CHAIN``..."""
    attrs_: list[tuple[str, object]] = [("NFTA_VERDICT_CODE", code)]
    if chain is not None:
        attrs_.append(("NFTA_VERDICT_CHAIN", chain))
    return expr("immediate", dreg=_REG_VERDICT, data={"attrs": [("NFTA_DATA_VERDICT", {"attrs": attrs_})]})


def addr_in(family: AddressFamily, field: Literal["saddr", "daddr"], network: IPNetwork) -> list[Expr]:
    """``ip saddr NETWORK`` (or ``ip6``, or ``daddr``), as nft encodes it: a
    whole-byte prefix loads only its bytes; any other is masked."""
    prefix = network.prefixlen
    if prefix == 0:
        return []
    offset = family.saddr if field == "saddr" else family.daddr
    packed = network.network_address.packed
    if prefix % 8 == 0:
        return [
            expr("payload", dreg=REG_1, base=_PAYLOAD_NETWORK, offset=offset, len=prefix // 8),
            expr("cmp", sreg=REG_1, op=CMP_EQ, data=data(packed[: prefix // 8])),
        ]
    length = family.addr_len
    return [
        expr("payload", dreg=REG_1, base=_PAYLOAD_NETWORK, offset=offset, len=length),
        expr("bitwise", sreg=REG_1, dreg=REG_1, len=length, mask=data(network.netmask.packed), xor=data(bytes(length))),
        expr("cmp", sreg=REG_1, op=CMP_EQ, data=data(packed)),
    ]


def ifname_bytes(name: str) -> bytes:
    """An interface name as the kernel stores it: NUL-padded to 16 bytes."""
    return name.encode().ljust(IFNAMSIZ, b"\0")


def ifname(key: int, op: int, name: str) -> list[Expr]:
    """``iifname``/``oifname`` ``==``/``!=`` *name*."""
    return [expr("meta", key=key, dreg=REG_1), expr("cmp", sreg=REG_1, op=op, data=data(ifname_bytes(name)))]


def ifname_in(key: int, set_name: str) -> list[Expr]:
    """``iifname``/``oifname`` ``@SET``."""
    return [expr("meta", key=key, dreg=REG_1), expr("lookup", set=set_name, sreg=REG_1)]


def ifname_pair_not_in(set_name: str) -> list[Expr]:
    """``iifname . oifname != @SET``: each name fills a whole 16-byte register."""
    return [
        expr("meta", key=META_IIFNAME, dreg=REG_1),
        expr("meta", key=META_OIFNAME, dreg=REG_2),
        expr("lookup", set=set_name, sreg=REG_1, flags=frozenset({"NFT_LOOKUP_F_INV"})),
    ]


def meta_is(key: int, value: bytes) -> list[Expr]:
    """``meta KEY VALUE`` (``meta protocol ip6``, ``meta l4proto udp``,
    ``meta iifgroup N``): *value* as the kernel stores the key, in its length."""
    return [expr("meta", key=key, dreg=REG_1), expr("cmp", sreg=REG_1, op=CMP_EQ, data=data(value))]


def transport_is(offset: int, value: bytes) -> list[Expr]:
    """The transport header holds *value* at *offset* (``icmpv6 type``,
    ``udp sport``, once ``meta l4proto`` has said which header it is)."""
    return [
        expr("payload", dreg=REG_1, base=_PAYLOAD_TRANSPORT, offset=offset, len=len(value)),
        expr("cmp", sreg=REG_1, op=CMP_EQ, data=data(value)),
    ]


def _ct_bits(key: int, bits: int) -> list[Expr]:
    """``ct status``/``ct state`` has any of *bits* (both are host-endian bit fields)."""
    return [
        expr("ct", key=key, dreg=REG_1),
        expr("bitwise", sreg=REG_1, dreg=REG_1, len=4, mask=data(struct.pack("=I", bits)), xor=data(bytes(4))),
        expr("cmp", sreg=REG_1, op=CMP_NEQ, data=data(bytes(4))),
    ]


def ct_status_dnat() -> list[Expr]:
    """``ct status dnat``: a connection to a published port."""
    return _ct_bits(_CT_STATUS, _IPS_DST_NAT)


def ct_state_established() -> list[Expr]:
    """``ct state established,related``."""
    return _ct_bits(_CT_STATE, _CT_ESTABLISHED | _CT_RELATED)


def fib_daddr_local() -> list[Expr]:
    """``fib daddr type local``: the same in both families (the fib expression
    takes its family from the table's)."""
    return [
        expr("fib", dreg=REG_1, result=_FIB_RESULT_ADDRTYPE, flags=_FIB_F_DADDR),
        expr("cmp", sreg=REG_1, op=CMP_EQ, data=data(struct.pack("=I", _RTN_LOCAL))),
    ]


def dnat_through(family: AddressFamily, map_name: str, with_daddr: bool) -> list[Expr]:
    """``dnat ip to [ip daddr .] meta l4proto . th dport map @MAP`` (or ``ip6``).

    The key is built in consecutive 4-byte registers (an IPv6 address takes
    four); the lookup overwrites them with the address (first registers) and
    the port (the register after the address).
    """
    key: list[Expr] = []
    proto_reg = _REG32_00
    if with_daddr:
        key.append(expr("payload", dreg=REG_1, base=_PAYLOAD_NETWORK, offset=family.daddr, len=family.addr_len))
        proto_reg += family.registers
    key.append(expr("meta", key=META_L4PROTO, dreg=proto_reg))
    key.append(expr("payload", dreg=proto_reg + 1, base=_PAYLOAD_TRANSPORT, offset=2, len=2))
    return key + [
        expr("lookup", set=map_name, sreg=REG_1, dreg=REG_1),
        expr(
            "nat",
            type=_NAT_DNAT,
            family=family.nfproto,
            reg_addr_min=REG_1,
            reg_proto_min=_REG32_00 + family.registers,
        ),
    ]


def masquerade() -> Expr:
    return expr("masq")


def comment_udata(comment: str) -> bytes:
    """A rule's user data holding *comment* (what ``nft`` prints as ``comment "..."``)."""
    text = comment.encode()[:127] + b"\0"
    return struct.pack("BB", _UDATA_RULE_COMMENT, len(text)) + text
