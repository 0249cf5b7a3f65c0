"""A small synchronous netlink transport shared by ``kernel`` and ``firewall``.

pyroute2 supplies the message classes (encoding and decoding); this module
supplies the socket handling, because pyroute2 0.9's socket objects are
thread-bound and open lazily, which can silently put a socket meant for one
namespace into another (:ref:`fact-pyroute2-sockets`, in the docs'
explanation page). Here the caller hands in a raw socket that
was created inside the right namespace, and every request goes through it.

Requests are *pipelined*: :meth:`Netlink.transact` writes many messages in one
``sendmsg`` and then collects one acknowledgement per message, so N changes
cost one system call each way instead of N round trips. rtnetlink has no
transactions: each message succeeds or fails on its own, and the caller gets
one result per message to register undo steps for exactly the ones that took.
nfnetlink batches (BATCH_BEGIN ... BATCH_END) are atomic in the kernel; the
firewall uses :meth:`Netlink.transact` with the batch markers included.
"""

from __future__ import annotations

import errno
import functools
import itertools
import os
import socket
import struct
import threading
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from pyroute2.netlink.marshal import Marshal

F = TypeVar("F", bound=Any)

__all__ = ["Netlink", "NetlinkReply", "next_seq", "nla", "nla_string"]

_HEADER = struct.Struct("=IHHII")
_RCVBUF = 1 << 20
_sequence = itertools.count(1)


def next_seq() -> int:
    """A fresh netlink sequence number: one counter for every message cnm sends,
    whether pyroute2 encodes it or cnm packs it by hand."""
    return next(_sequence) & 0xFFFFFFFF


def nla(kind: int, payload: bytes) -> bytes:
    """One netlink attribute (type-length-value), padded to 4 bytes.

    For the few messages cnm packs by hand on hot paths, where pyroute2's
    generic encoder costs more than the kernel's work.
    """
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def nla_string(kind: int, value: str) -> bytes:
    """A NUL-terminated string attribute."""
    return nla(kind, value.encode() + b"\0")


class NetlinkReply:
    """The outcome of one request: ``error`` is 0 or a positive errno.

    For a request answered by a message rather than an acknowledgement (a
    GET), ``data`` holds that message's raw bytes.
    """

    __slots__ = ("error", "message", "data")

    def __init__(self, error: int, message: str | None, data: bytes | None = None) -> None:
        self.error = error
        self.message = message
        self.data = data

    def raise_for(self) -> None:
        """Raise OSError(errno, the kernel's own text or strerror) if this is an error."""
        if self.error:
            raise OSError(self.error, self.message or os.strerror(self.error))


_buffers = threading.local()


def _receive(sock: socket.socket) -> bytes:
    """One datagram from *sock*, received into this thread's reusable buffer.

    ``sock.recv(1 MiB)`` would allocate a fresh megabyte per call and shrink
    it afterwards; the kernel's unmapping of the rest costs a TLB flush on
    every core each time, which measured as several percent of building a
    sandbox (:ref:`fact-recv-buffer` in the docs' explanation page).
    """
    buffer: bytearray | None = getattr(_buffers, "buffer", None)
    if buffer is None:
        buffer = _buffers.buffer = bytearray(_RCVBUF)
    size = sock.recv_into(buffer)
    return bytes(memoryview(buffer)[:size])


def _exclusive(method: F) -> F:
    """Run *method* holding its socket's lock (see Netlink.__init__)."""

    @functools.wraps(method)
    def locked(self: Netlink, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)

    return locked  # type: ignore[return-value]


class Netlink:
    """One netlink socket bound inside one namespace."""

    def __init__(self, sock: socket.socket, marshal: Marshal) -> None:
        self.sock = sock
        self.marshal = marshal
        # One exchange at a time: an answer read by another thread's exchange
        # (which drops sequence numbers it does not wait for) would be lost,
        # and this one would wait for it for ever. A host's socket can be
        # used by another host's thread (an overlay's peers, cnm.drivers.overlay).
        self.lock = threading.RLock()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        # Extended acks carry the kernel's text reason ("Nexthop has invalid gateway").
        try:
            sock.setsockopt(270, 11, 1)  # SOL_NETLINK, NETLINK_EXT_ACK
        except OSError:
            pass
        sock.bind((0, 0))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def encode(msg: Any, mtype: int, flags: int) -> tuple[int, bytes]:
        """Encode a pyroute2 message with a fresh sequence number; return (seq, bytes)."""
        seq = next_seq()
        msg["header"]["type"] = mtype
        msg["header"]["flags"] = flags | NLM_F_REQUEST
        msg["header"]["sequence_number"] = seq
        msg["header"]["pid"] = 0
        msg.reset()
        msg.encode()
        return seq, bytes(msg.data)

    @_exclusive
    def transact(self, requests: Sequence[tuple[int, bytes]], echoed: Iterable[int] = ()) -> dict[int, NetlinkReply]:
        """Send pre-encoded requests in one write; wait for their answers.

        Each request is answered by an acknowledgement, or for a GET by its
        reply message. Requests in *echoed* were sent with ``NLM_F_ECHO``: their
        answer is the acknowledgement, and the echoed message (the kernel's
        description of what it made) is kept as its ``data``. Returns
        ``{seq: NetlinkReply}``.
        """
        waiting = set(seq for seq, _ in requests)
        echoes = set(echoed)
        kept: dict[int, bytes | None] = {}
        self.sock.sendall(b"".join(data for _, data in requests))
        replies: dict[int, NetlinkReply] = {}
        while waiting:
            data = _receive(self.sock)
            for seq, reply in self.acks(data):
                if seq not in waiting:
                    continue
                if seq in echoes:
                    if reply.data is not None:
                        kept[seq] = reply.data
                        continue
                    reply.data = kept.get(seq)
                waiting.discard(seq)
                replies[seq] = reply
        return replies

    @_exclusive
    def dump(self, msg: Any, mtype: int, flags: int = 0) -> list[Any]:
        """Run a dump request and return the decoded messages."""
        seq, data = self.encode(msg, mtype, flags | NLM_F_DUMP)
        self.sock.sendall(data)
        out: list[Any] = []
        while True:
            chunk = _receive(self.sock)
            for m in self.marshal.parse(chunk):
                if m["header"]["sequence_number"] != seq:
                    continue
                mt = m["header"]["type"]
                if mt == NLMSG_DONE:
                    return out
                if mt == NLMSG_ERROR:
                    err = m["header"].get("error")
                    code = abs(getattr(err, "code", 0) or m.get("error", 0) or errno.EIO)
                    raise OSError(code, os.strerror(code))
                out.append(m)

    @_exclusive
    def dump_raw(self, seq: int, request: bytes) -> list[bytes]:
        """Run a dump packed by the caller (sequence number *seq*); return each
        answer's raw bytes, one netlink message each, for the caller to read."""
        self.sock.sendall(request)
        out: list[bytes] = []
        while True:
            data = _receive(self.sock)
            offset = 0
            while offset + 16 <= len(data):
                length, mtype, _flags, got, _pid = _HEADER.unpack_from(data, offset)
                if length < 16:
                    break
                if got == seq:
                    if mtype == NLMSG_DONE:
                        return out
                    if mtype == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", data, offset + 16)
                        raise OSError(-code or errno.EIO, os.strerror(-code or errno.EIO))
                    out.append(data[offset : offset + length])
                offset += (length + 3) & ~3

    @_exclusive
    def get(self, msg: Any, mtype: int) -> Any | None:
        """One GET request answered by one message; None when the object does not exist."""
        seq, data = self.encode(msg, mtype, 0)
        self.sock.sendall(data)
        while True:
            chunk = _receive(self.sock)
            for m in self.marshal.parse(chunk):
                if m["header"]["sequence_number"] != seq:
                    continue
                if m["header"]["type"] == NLMSG_ERROR:
                    err = m["header"].get("error")
                    code = abs(getattr(err, "code", 0) or 0)
                    if code in (errno.ENODEV, errno.ENOENT):
                        return None
                    raise OSError(code or errno.EIO, os.strerror(code or errno.EIO))
                return m

    @_exclusive
    def fenced(self, requests: Sequence[tuple[int, bytes]], fence: tuple[int, bytes], timeout: float = 30.0) -> list[bytes]:
        """Send *requests* in one write and *fence* in a second; return what the requests caused.

        For exchanges where the kernel sends an unknown number of replies
        (possibly none), such as an nfnetlink batch: errors only for the
        messages that failed, acks only for those that asked, echoes only on
        commit. The kernel handles each write synchronously, so by the time
        the *fence* (a request that always gets exactly one answer, such as
        ``NFT_MSG_GETGEN``) is answered, every reply to *requests* is already
        queued ahead of it. The fence must be a separate write: nfnetlink
        ignores whatever follows ``BATCH_END`` in the same write (see
        :ref:`fact-batch-end` in the docs' explanation page).

        Returns every message (raw bytes, one netlink message each) whose
        sequence number is one of *requests*', in arrival order. Raises
        ``OSError(ETIMEDOUT)`` if the fence is not answered in *timeout* seconds.
        """
        import select  # local: keeps this addition self-contained

        wanted = {seq for seq, _ in requests}
        fence_seq, fence_data = fence
        self.sock.sendall(b"".join(data for _, data in requests))
        self.sock.sendall(fence_data)
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        out: list[bytes] = []
        while True:
            if not poller.poll(int(timeout * 1000)):
                raise OSError(errno.ETIMEDOUT, "no answer from the kernel to the fence request")
            data = _receive(self.sock)
            offset = 0
            while offset + 16 <= len(data):
                length, _mtype, _flags, seq, _pid = _HEADER.unpack_from(data, offset)
                if length < 16:
                    break
                if seq == fence_seq:
                    return out
                if seq in wanted:
                    out.append(data[offset : offset + length])
                offset += (length + 3) & ~3

    @staticmethod
    def acks(data: bytes) -> Iterable[tuple[int, NetlinkReply]]:
        """Yield (seq, reply) for every message in *data*: acknowledgements
        (NLMSG_ERROR) and answers."""
        offset = 0
        while offset + 16 <= len(data):
            length, mtype, flags, seq, _pid = _HEADER.unpack_from(data, offset)
            if length < 16:
                break
            if mtype == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, offset + 16)
                yield seq, NetlinkReply(-code, _ext_ack_message(data, offset, length, flags) if code else None)
            elif mtype != NLMSG_DONE:
                yield seq, NetlinkReply(0, None, data[offset : offset + length])
            offset += (length + 3) & ~3


def _ext_ack_message(data: bytes, offset: int, length: int, flags: int) -> str | None:
    """The NLMSGERR_ATTR_MSG text of an extended ack, if the kernel sent one."""
    NLM_F_CAPPED, NLM_F_ACK_TLVS, NLMSGERR_ATTR_MSG = 0x100, 0x200, 1
    if not flags & NLM_F_ACK_TLVS:
        return None
    if flags & NLM_F_CAPPED:
        pos = offset + 20 + 16
    else:
        (inner_len,) = struct.unpack_from("=I", data, offset + 20)
        pos = offset + 20 + ((inner_len + 3) & ~3)
    end = offset + length
    while pos + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, pos)
        if alen < 4:
            break
        if atype == NLMSGERR_ATTR_MSG:
            return data[pos + 4 : pos + alen].rstrip(b"\0").decode(errors="replace")
        pos += (alen + 3) & ~3
    return None
