"""pyroute2's own encoding of a message: the reference for cnm's hand-packed ones."""

from __future__ import annotations

from typing import Any


def pyroute2_bytes(msg: Any, mtype: int, flags: int, seq: int) -> bytes:
    """Encode *msg* with pyroute2 as a request of type *mtype* with *flags* and *seq*."""
    msg["header"]["type"] = mtype
    msg["header"]["flags"] = flags | 1  # NLM_F_REQUEST, as cnm always sets it
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = 0
    msg.encode()
    return bytes(msg.data)
