"""Which ports the sockets of a namespace hold, asked of the kernel over sock_diag.

A host port cnm publishes is a DNAT rule, not a socket: nothing in the
kernel stops it from being published over a port a host process already
listens on, and from then on the rule, which runs before the socket
look-up, sends that service's traffic to a sandbox. So before publishing,
cnm asks the kernel which ports the host's own sockets hold
(:mod:`cnm.port_books` refuses the clashes).

The kernel answers over ``NETLINK_SOCK_DIAG``: one ``SOCK_DIAG_BY_FAMILY``
dump per (family, protocol) lists every socket of the namespace the netlink
socket was made in, filtered by a bitmask of TCP states. For TCP only
listeners hold a port against a publication (a connected socket's packets
belong to its conntrack entry, which a new DNAT rule does not touch; and a
listener bound later with ``SO_REUSEADDR`` coexists with it); for UDP every
bound socket does, connected or not, as ``bind`` without ``SO_REUSEADDR``
sees it. The request (``struct inet_diag_req_v2``, 56 bytes) and the answers
(``struct inet_diag_msg``, 72 bytes and attributes) are packed and read here
with :mod:`struct`: a host with ten thousand sockets gives ten thousand
answers, which pyroute2's generic decoder would take far longer to read than
the kernel takes to write.

No ``/proc/net`` parsing and no ``ss``: the netlink socket is opened inside
the namespace (:meth:`cnm.netns.Namespace.socket`), so the answer is that
namespace's and no other, whichever thread asks.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address

import attrs
from pyroute2.netlink.marshal import Marshal

from ._ip import Family, IPAddress
from .errors import kernel_error
from .netlink import Netlink, next_seq, nla
from .netns import Namespace

__all__ = ["HostSocket", "SockDiag"]

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_HEADER = struct.Struct("=IHHII")
# struct inet_diag_req_v2: family, protocol, ext, pad, states; then the
# socket id: sport, dport (big-endian), src, dst (16 bytes each), if, cookie.
_REQUEST = struct.Struct("=BBBBI48x")
# struct inet_diag_msg: family, state, timer, retrans; the socket id (sport,
# dport big-endian, src, dst); then, in host order, the id's if and cookie,
# expires, rqueue, wqueue, uid, inode; attributes follow.
_ANSWER = struct.Struct("!BBBBHH16s16s")
_TAIL = struct.Struct("=IQIIIII")
_ANSWER_SIZE = 72
_INET_DIAG_SKV6ONLY = 11
_INET_DIAG_REQ_BYTECODE = 1
_BC_S_GE, _BC_S_LE = 2, 3
_TCP_LISTEN = 10
_ALL_STATES = 0xFFFFFFFF
_PROTOCOL_NUMBERS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}


@attrs.frozen
class HostSocket:
    """One socket of the namespace that holds a port: a TCP (or SCTP)
    listener, or a bound UDP socket.

    *address* is the address it is bound to, ``0.0.0.0`` or ``::`` for every
    address of its family. An IPv6 socket bound to ``::`` without
    ``IPV6_V6ONLY`` (*v6only* false) takes IPv4 traffic too; one bound to an
    IPv4-mapped address (``::ffff:127.0.0.1``) is IPv4 traffic's only. *uid*
    and *inode* say whose it is (``ss -e`` shows the inode; a kernel socket,
    such as a VXLAN device's, has inode 0).
    """

    protocol: str
    family: Family
    address: IPAddress
    port: int
    v6only: bool = False
    uid: int = 0
    inode: int = 0

    def __str__(self) -> str:
        where = f"[{self.address}]" if self.family == 6 else str(self.address)
        owner = "a kernel socket" if self.inode == 0 else f"uid {self.uid}, inode {self.inode}"
        return f"{where}:{self.port}/{self.protocol}, {owner}"


class SockDiag:
    """sock_diag dumps of one namespace, over one netlink socket made inside it."""

    def __init__(self, namespace: Namespace, *, here: bool = False) -> None:
        """``here=True``: the calling thread is inside *namespace* already."""
        self.namespace = namespace
        if here:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG)
        else:
            sock = namespace.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG)
        self._nl = Netlink(sock, Marshal())  # raw dumps only: the marshal is never used

    def close(self) -> None:
        self._nl.close()

    def __enter__(self) -> SockDiag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def holding(
        self, protocols: Iterable[str], families: Iterable[Family], ports: tuple[int, int] = (1, 65535)
    ) -> list[HostSocket]:
        """Every socket of *protocols* and *families* that holds a port in
        *ports* (first, last; both included): one dump per pair.

        The kernel leaves out the sockets outside *ports* itself (a filter
        sent with the request), so a host with many sockets elsewhere costs
        little to ask. A protocol the kernel has no diag module for (SCTP on a kernel
        without ``sctp_diag``) answers ENOENT; there it gives no sockets (on
        this project's kernels SCTP is absent altogether, so none can exist).
        """
        found: list[HostSocket] = []
        for protocol in protocols:
            for family in families:
                found += self._dump(protocol, family, ports)
        return found

    def _dump(self, protocol: str, family: Family, ports: tuple[int, int]) -> list[HostSocket]:
        states = (1 << _TCP_LISTEN) if protocol != "udp" else _ALL_STATES
        seq = next_seq()
        body = _REQUEST.pack(_AF[family], _PROTOCOL_NUMBERS[protocol], 0, 0, states) + _port_filter(*ports)
        request = _HEADER.pack(_HEADER.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0) + body
        try:
            answers = self._nl.dump_raw(seq, request)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return []
            raise kernel_error(exc, f"namespace {self.namespace.name!r}: listing {protocol} sockets") from exc
        return [held for data in answers if (held := _decode(protocol, data)) is not None]


def _port_filter(first: int, last: int) -> bytes:
    """The ``INET_DIAG_REQ_BYTECODE`` attribute that keeps sockets whose local port is in first..last.

    inet_diag's filter is a program of ``struct inet_diag_bc_op`` (code,
    yes, no: the byte offsets to go on at when the test holds or not); a
    port test is followed by a second op that carries the port in ``no``.
    Reaching the end exactly keeps the socket, a jump past it (its length
    plus 4) drops it.
    """
    op = struct.Struct("=BBH")
    program = (
        op.pack(_BC_S_GE, 8, 20) + op.pack(0, 0, first)  # port >= first, else drop
        + op.pack(_BC_S_LE, 8, 12) + op.pack(0, 0, last)  # port <= last: keep, else drop
    )  # fmt: skip
    return nla(_INET_DIAG_REQ_BYTECODE, program)


def _decode(protocol: str, data: bytes) -> HostSocket | None:
    """The socket one answer (a whole netlink message) describes, if it holds a port."""
    offset = _HEADER.size
    af, _state, _timer, _retrans, sport, _dport, src, _dst = _ANSWER.unpack_from(data, offset)
    _if, _cookie, _expires, _rq, _wq, uid, inode = _TAIL.unpack_from(data, offset + 40)
    if sport == 0:
        return None
    family: Family = 4 if af == socket.AF_INET else 6
    address: IPAddress = IPv4Address(src[:4]) if family == 4 else IPv6Address(src)
    v6only = False
    position = offset + _ANSWER_SIZE
    while position + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, position)
        if length < 4:
            break
        if kind & 0x3FFF == _INET_DIAG_SKV6ONLY and length >= 5:
            v6only = bool(data[position + 4])
        position += (length + 3) & ~3
    return HostSocket(protocol, family, address, sport, v6only, uid, inode)
