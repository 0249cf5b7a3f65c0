"""The batch transport: nf_tables messages framed as one transaction, and its outcome.

A :class:`Batch` collects the messages of one change (``BATCH_BEGIN``, the
messages, ``BATCH_END``); :func:`commit` sends it in one write on a socket
opened inside the host's namespace. The kernel applies the batch as one
transaction: if any message fails, nothing changes. One batch may hold the
messages of both families' tables (each message names its family), so a
change that touches ``ip`` and ``ip6`` is still one transaction.

The kernel answers only what it must: an error for each message that failed
(messages that asked for an ack get one even when the batch as a whole was
aborted, so acks prove nothing), and, on commit, an echo of each rule sent
with ``NLM_F_ECHO``. To know when the answer is complete, a ``GETGEN``
request follows in a second write (a fence, see
:meth:`cnm.netlink.Netlink.fenced`); everything the batch caused arrives
before its reply.

A lost answer (the batch was written but the exchange failed afterwards, so
it may or may not have been committed) is raised as :class:`UnknownOutcome`;
what to do about it is the caller's business. What is installed can be
listed (:func:`table_exists`, :func:`rules_listed`, :func:`elements_listed`)
for the undo that finds something already gone.
"""

from __future__ import annotations

import errno
import struct
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import attrs
from pyroute2.netlink import NLM_F_APPEND, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_ERROR
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES
from pyroute2.netlink.nfnetlink import nftsocket as nft

from ...errors import KernelError, kernel_error
from ...netlink import Netlink, NetlinkReply, next_seq, nla, nla_string
from ._pyroute2 import rule_msg, set_msg
from .expressions import NF_ACCEPT, Family, Expr, comment_udata

__all__ = ["Batch", "SetSpec", "UnknownOutcome", "commit", "elements_listed", "rules_listed", "subsystem", "table_exists"]

_BATCH_BEGIN, _BATCH_END = 0x10, 0x11
NFPROTO_UNSPEC = 0
NEWTABLE, GETTABLE, DELTABLE = 0, 1, 2
_NEWCHAIN, GETCHAIN = 3, 4
NEWRULE, GETRULE, _DELRULE = 6, 7, 8
_NEWSET, GETSET = 9, 10
_NEWSETELEM, GETSETELEM, _DELSETELEM = 12, 13, 14
_GETGEN = 16

_UDATA_SET_KEYBYTEORDER, _BYTEORDER_HOST = 0, 1
_NFTA_LIST_ELEM, _NFTA_DATA_VALUE = 1, 1
_NFTA_SET_ELEM_LIST_TABLE, _NFTA_SET_ELEM_LIST_SET, _NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
_NFTA_SET_ELEM_KEY, _NFTA_SET_ELEM_DATA = 1, 2
_NFTA_RULE_HANDLE = 3
_ATTR = struct.Struct("=HH")
HEADER = struct.Struct("=IHHII")


def subsystem(mtype: int) -> int:
    """An nf_tables message type as netlink numbers it."""
    return int(mtype | NFNL_SUBSYS_NFTABLES << 8)


@attrs.frozen
class SetSpec:
    """A set or map as the kernel is told of it."""

    key_type: int
    key_len: int
    data_type: int | None = None  # None: a plain set
    data_len: int = 0
    #: Whether the key is in host byte order (an interface name). Only
    #: ``nft list`` cares: without the hint it takes a single-field key as
    #: big-endian and prints a name as ``""`` (concatenations and maps carry
    #: their fields' own byte order and need none).
    host_order: bool = False


class UnknownOutcome(KernelError):
    """A batch was sent but its answer was lost: it may or may not have been committed."""


class Batch:
    """The messages of one nfnetlink transaction, each with a label for errors."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.messages: list[tuple[int, bytes]] = []
        self.labels: dict[int, str] = {}
        self.echoed: list[int] = []
        #: The families whose table this batch creates, or deletes (seq: family).
        self.creates: set[Family] = set()
        self.deletes: dict[int, Family] = {}

    def __len__(self) -> int:
        return len(self.messages)

    def _add(self, family: Family, msg: Any, mtype: int, flags: int, label: str) -> int:
        msg["nfgen_family"] = family.nfproto
        seq, packed = Netlink.encode(msg, subsystem(mtype), flags)
        self.messages.append((seq, packed))
        self.labels[seq] = label
        return seq

    def packed(self, mtype: int, flags: int, body: bytes, label: str) -> int:
        """Add a message already packed but for its header (*mtype* with the subsystem)."""
        seq = next_seq()
        self.messages.append((seq, HEADER.pack(16 + len(body), mtype, flags | NLM_F_REQUEST, seq, 0) + body))
        self.labels[seq] = label
        return seq

    def table_add(self, family: Family) -> None:
        msg = nft.nft_table_msg()
        msg["attrs"] = [("NFTA_TABLE_NAME", self.table)]
        self._add(family, msg, NEWTABLE, NLM_F_CREATE | NLM_F_EXCL, f"create table {family.keyword} {self.table}")
        self.creates.add(family)

    def table_delete(self, family: Family) -> None:
        msg = nft.nft_table_msg()
        msg["attrs"] = [("NFTA_TABLE_NAME", self.table)]
        seq = self._add(family, msg, DELTABLE, 0, f"delete table {family.keyword} {self.table}")
        self.deletes[seq] = family

    def set_add(self, family: Family, name: str, spec: SetSpec, set_id: int) -> None:
        msg = set_msg()
        attrs_: list[tuple[str, object]] = [
            ("NFTA_SET_TABLE", self.table),
            ("NFTA_SET_NAME", name),
            ("NFTA_SET_FLAGS", frozenset() if spec.data_type is None else frozenset({"NFT_SET_MAP"})),
            ("NFTA_SET_KEY_TYPE", spec.key_type),
            ("NFTA_SET_KEY_LEN", spec.key_len),
        ]
        if spec.data_type is not None:
            attrs_ += [("NFTA_SET_DATA_TYPE", spec.data_type), ("NFTA_SET_DATA_LEN", spec.data_len)]
        attrs_.append(("NFTA_SET_ID", set_id))
        if spec.host_order:
            attrs_.append(("NFTA_SET_USERDATA", struct.pack("=BBI", _UDATA_SET_KEYBYTEORDER, 4, _BYTEORDER_HOST)))
        msg["attrs"] = attrs_
        kind = "set" if spec.data_type is None else "map"
        self._add(family, msg, _NEWSET, NLM_F_CREATE | NLM_F_EXCL, f"create {kind} {family.keyword} {name}")

    def chain_add(self, family: Family, name: str, hook: tuple[int, int, str] | None = None) -> None:
        """A chain; a base chain with *hook* = (hook number, priority, type), policy accept."""
        msg = nft.nft_chain_msg()
        attrs_: list[tuple[str, object]] = [("NFTA_CHAIN_TABLE", self.table), ("NFTA_CHAIN_NAME", name)]
        if hook is not None:
            number, priority, kind = hook
            attrs_ += [
                ("NFTA_CHAIN_HOOK", {"attrs": [("NFTA_HOOK_HOOKNUM", number), ("NFTA_HOOK_PRIORITY", priority)]}),
                ("NFTA_CHAIN_POLICY", NF_ACCEPT),
                ("NFTA_CHAIN_TYPE", kind),
            ]
        msg["attrs"] = attrs_
        self._add(family, msg, _NEWCHAIN, NLM_F_CREATE | NLM_F_EXCL, f"create chain {family.keyword} {name}")

    def rule_add(
        self,
        family: Family,
        chain: str,
        exprs: list[Expr],
        label: str,
        comment: str | None = None,
        echo: bool = False,
    ) -> int:
        """Append a rule; with *echo*, :func:`commit` returns the handle the kernel gave it."""
        msg = rule_msg()
        attrs_: list[tuple[str, object]] = [
            ("NFTA_RULE_TABLE", self.table),
            ("NFTA_RULE_CHAIN", chain),
            ("NFTA_RULE_EXPRESSIONS", exprs),
        ]
        if comment is not None:
            attrs_.append(("NFTA_RULE_USERDATA", comment_udata(comment)))
        msg["attrs"] = attrs_
        flags = NLM_F_CREATE | NLM_F_APPEND | (NLM_F_ECHO if echo else 0)
        seq = self._add(family, msg, NEWRULE, flags, f"add rule to {family.keyword} {chain}: {label}")
        if echo:
            self.echoed.append(seq)
        return seq

    def rule_delete(self, family: Family, chain: str, handle: int, label: str) -> None:
        msg = nft.nft_rule_msg()
        msg["attrs"] = [("NFTA_RULE_TABLE", self.table), ("NFTA_RULE_CHAIN", chain), ("NFTA_RULE_HANDLE", handle)]
        self._add(family, msg, _DELRULE, 0, f"delete rule {handle} from {family.keyword} {chain}: {label}")

    def element(self, adding: bool, family: Family, set_name: str, key: bytes, data: bytes | None, label: str) -> None:
        """Add an element to set or map *set_name* (*data*: a map's value), or remove it.

        Packed by hand: this is the per-port hot path, and pyroute2's encoder
        cost several times the kernel's work (``tests/unit/test_nft_pack.py``
        checks the bytes against pyroute2's encoding). Added with
        ``NLM_F_EXCL``: a key already there is refused with ``EEXIST``.
        """
        element = nla(_NFTA_SET_ELEM_KEY, nla(_NFTA_DATA_VALUE, key))
        if adding and data is not None:
            element += nla(_NFTA_SET_ELEM_DATA, nla(_NFTA_DATA_VALUE, data))
        body = (
            _nfgen(family.nfproto)
            + nla_string(_NFTA_SET_ELEM_LIST_TABLE, self.table)
            + nla_string(_NFTA_SET_ELEM_LIST_SET, set_name)
            + nla(_NFTA_SET_ELEM_LIST_ELEMENTS, nla(_NFTA_LIST_ELEM, element))
        )
        if adding:
            self.packed(subsystem(_NEWSETELEM), NLM_F_CREATE | NLM_F_EXCL, body, label)
        else:
            self.packed(subsystem(_DELSETELEM), 0, body, label)

    def without(self, seqs: set[int]) -> Batch:
        """The same batch less the messages *seqs*."""
        rest = Batch(self.table)
        rest.messages = [(seq, m) for seq, m in self.messages if seq not in seqs]
        rest.labels = {seq: label for seq, label in self.labels.items() if seq not in seqs}
        rest.echoed = [seq for seq in self.echoed if seq not in seqs]
        rest.creates = set(self.creates)
        rest.deletes = {seq: f for seq, f in self.deletes.items() if seq not in seqs}
        return rest

    def framed(self) -> list[tuple[int, bytes]]:
        """The messages between BATCH_BEGIN and BATCH_END."""
        marker = _nfgen(NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES)
        first, last = next_seq(), next_seq()
        begin = (first, HEADER.pack(16 + len(marker), _BATCH_BEGIN, NLM_F_REQUEST, first, 0) + marker)
        end = (last, HEADER.pack(16 + len(marker), _BATCH_END, NLM_F_REQUEST, last, 0) + marker)
        # A failed commit is reported against BATCH_BEGIN.
        self.labels[first] = "commit"
        self.labels[last] = "commit"
        return [begin, *self.messages, end]


def _nfgen(family: int, res_id: int = 0) -> bytes:
    """struct nfgenmsg: family, version 0, resource id (big-endian)."""
    return struct.pack("!BBH", family, 0, res_id)


def commit(nl: Netlink, batch: Batch, what: str, gone_ok: bool = False) -> dict[int, int]:
    """Send *batch* as one transaction; return ``{seq: rule handle}`` of echoed rules.

    Raises :class:`KernelError` naming the first message the kernel refused
    (nothing changed), or :class:`UnknownOutcome` if the answer was lost.
    With *gone_ok*, table deletions refused with ENOENT (the table is gone
    already) count as done: the rest of the batch, which the refusal
    aborted, is sent again without them.
    """
    fence = nft.nft_gen_msg()
    fence["nfgen_family"] = NFPROTO_UNSPEC
    try:
        replies = nl.fenced(batch.framed(), Netlink.encode(fence, subsystem(_GETGEN), 0))
    except OSError as exc:
        raise UnknownOutcome(exc.errno or errno.EIO, f"{what}: no answer from the kernel ({exc})") from exc
    failures: list[tuple[int, NetlinkReply]] = []
    handles: dict[int, int] = {}
    for raw in replies:
        _length, mtype, _flags, seq, _pid = HEADER.unpack_from(raw)
        if mtype == NLMSG_ERROR:
            failures += [(s, r) for s, r in Netlink.acks(raw) if r.error]
        elif seq in batch.echoed and mtype == subsystem(NEWRULE):
            # The commit's NEWGEN notice can carry the same sequence number.
            handle = _rule_handle(raw)
            if handle is not None:
                handles[seq] = handle
    if failures:
        gone = {seq for seq, reply in failures if reply.error == errno.ENOENT and seq in batch.deletes}
        if gone_ok and len(gone) == len(failures):
            rest = batch.without(gone)
            return commit(nl, rest, what, gone_ok) if len(rest) else handles
        seq, reply = failures[0]
        refused = kernel_error(OSError(reply.error, reply.message), f"{what}: {batch.labels.get(seq, 'batch')}")
        for other_seq, other in failures[1:]:
            refused.add_note(f"also refused: {batch.labels.get(other_seq, 'batch')}: {other.message or other.error}")
        refused.add_note("the transaction was aborted: nothing was changed")
        raise refused
    if any(seq not in handles for seq in batch.echoed):
        # Committed, but without the handles the rules could not be removed later.
        raise UnknownOutcome(errno.EPROTO, f"{what}: the kernel did not echo the new rules back")
    return handles


def _rule_handle(raw: bytes) -> int | None:
    """NFTA_RULE_HANDLE of one raw NEWRULE message (skipping the nfgenmsg header)."""
    offset = 16 + 4
    while offset + 4 <= len(raw):
        length, kind = _ATTR.unpack_from(raw, offset)
        if length < 4:
            break
        if kind & 0x3FFF == _NFTA_RULE_HANDLE and length >= 12:
            (handle,) = struct.unpack_from(">Q", raw, offset + 4)
            return int(handle)
        offset += (length + 3) & ~3
    return None


def table_exists(nl: Netlink, table: str, family: Family) -> bool:
    """Whether *family*'s table *table* exists (a dump of a missing table's rules is just empty)."""
    msg = nft.nft_table_msg()
    msg["nfgen_family"] = family.nfproto
    msg["attrs"] = [("NFTA_TABLE_NAME", table)]
    try:
        return nl.get(msg, subsystem(GETTABLE)) is not None
    except OSError as exc:
        raise kernel_error(exc, f"firewall {table}: look up table {family.keyword}") from exc


def rules_listed(nl: Netlink, table: str, family: Family) -> list[tuple[str, int, bytes | None]]:
    """(chain, handle, user data) of every rule in *family*'s table *table*."""
    msg = rule_msg()
    msg["nfgen_family"] = family.nfproto
    msg["attrs"] = [("NFTA_RULE_TABLE", table)]
    return [
        (m.get_attr("NFTA_RULE_CHAIN"), m.get_attr("NFTA_RULE_HANDLE"), m.get_attr("NFTA_RULE_USERDATA"))
        for m in _dump(nl, table, msg, GETRULE)
    ]


def elements_listed(nl: Netlink, table: str, family: Family, names: Iterable[str]) -> set[tuple[str, bytes]]:
    """(set, key) of every element in the sets or maps *names* of *family*'s table *table*."""
    return {(name, key) for name in names for key, _value in _elements(nl, table, family.nfproto, name)}


def _elements(nl: Netlink, table: str, nfproto: int, name: str) -> Iterator[tuple[bytes, bytes | None]]:
    """(key, value: None in a plain set) of each element of set or map *name* in table *table*."""
    msg = nft.nft_set_elem_list_msg()
    msg["nfgen_family"] = nfproto
    msg["attrs"] = [("NFTA_SET_ELEM_LIST_TABLE", table), ("NFTA_SET_ELEM_LIST_SET", name)]
    for reply in _dump(nl, table, msg, GETSETELEM):
        for element in reply.get_attr("NFTA_SET_ELEM_LIST_ELEMENTS") or ():
            key, value = element.get_attr("NFTA_SET_ELEM_KEY"), element.get_attr("NFTA_SET_ELEM_DATA")
            if key is not None:
                data = value.get_attr("NFTA_DATA_VALUE") if value is not None else None
                yield bytes(key.get_attr("NFTA_DATA_VALUE")), bytes(data) if data is not None else None


def everything_listed(nl: Netlink) -> list[tuple[tuple[int, str, str, str, str], int]]:
    """What every nftables table in the socket's namespace holds, whoever made
    it, for "nothing changed" checks: each table ``(family, table, "table",
    "", "")``, chain ``(family, table, "chain", name, "")``, rule ``(family,
    table, "rule", chain, its user data)``, set or map ``(family, table,
    "set", name, "")`` and element ``(family, table, "element", set, key and
    value)``, bytes in hex, with how many there are of it (rules are known
    by their label, which several share); sorted."""
    found: Counter[tuple[int, str, str, str, str]] = Counter()

    def every(msg: Any, mtype: int) -> list[Any]:
        msg["nfgen_family"] = NFPROTO_UNSPEC  # every family's
        return _dump(nl, "*", msg, mtype)

    for m in every(nft.nft_table_msg(), GETTABLE):
        found[m["nfgen_family"], m.get_attr("NFTA_TABLE_NAME"), "table", "", ""] += 1
    for m in every(nft.nft_chain_msg(), GETCHAIN):
        found[m["nfgen_family"], m.get_attr("NFTA_CHAIN_TABLE"), "chain", m.get_attr("NFTA_CHAIN_NAME"), ""] += 1
    for m in every(rule_msg(), GETRULE):
        label = bytes(m.get_attr("NFTA_RULE_USERDATA") or b"").hex()
        found[m["nfgen_family"], m.get_attr("NFTA_RULE_TABLE"), "rule", m.get_attr("NFTA_RULE_CHAIN"), label] += 1
    for m in every(set_msg(), GETSET):
        family, table, name = m["nfgen_family"], m.get_attr("NFTA_SET_TABLE"), m.get_attr("NFTA_SET_NAME")
        found[family, table, "set", name, ""] += 1
        for key, value in _elements(nl, table, family, name):
            found[family, table, "element", name, key.hex() + (":" + value.hex() if value is not None else "")] += 1
    return sorted(found.items())


def _dump(nl: Netlink, table: str, msg: Any, mtype: int) -> list[Any]:
    try:
        return nl.dump(msg, subsystem(mtype))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return []  # the table (or set) is gone, and what was in it
        raise kernel_error(exc, f"firewall {table}: list") from exc
