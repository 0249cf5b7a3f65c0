"""The forwarding-database verbs of :class:`cnm.kernel.Rtnl`: a VXLAN device's
entries, which tell it the remote tunnel end behind a MAC (or, for the all-zero
MAC, every end that broadcasts, unknown and multicast frames go to).

:class:`ForwardingEntries` is a part of :class:`~cnm.kernel.Rtnl` (it
inherits it) kept in a module of its own: the kernel's dump of these entries
has a quirk worth its own words (see :meth:`ForwardingEntries.fdb_to`).
"""

from __future__ import annotations

from pyroute2.netlink import NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE
from pyroute2.netlink import rtnl as rt
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from . import rtmsg as pack
from ._ip import IPAddress
from .errors import ALREADY_GONE, KernelError, kernel_error
from .netlink import Netlink

__all__ = ["ForwardingEntries"]


class ForwardingEntries:
    """VXLAN forwarding entries: added, found by their tunnel end, removed."""

    _nl: Netlink

    def _apply(self, requests: list[tuple[int, int, bytes, str]], what: str) -> None:
        raise NotImplementedError  # Rtnl's

    def add_fdb(self, index: int, mac: str, destination: IPAddress, what: str) -> None:
        """Append a forwarding entry on vxlan *index*: frames to *mac* (all zeros: every broadcast, unknown
        and multicast frame) also go to the tunnel end *destination*. Entries of one MAC to several ends add up."""
        body, flags = pack.fdb(index, mac, destination), NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK
        self._apply([(pack.RTM_NEWNEIGH, flags, body, f"add fdb {mac} dst {destination}")], what)

    def fdb_to(self, index: int, destination: IPAddress, what: str = "vxlan") -> list[str]:
        """The MACs whose forwarding entries on vxlan *index* send to *destination* (learned ones too).

        The kernel filters a dump of forwarding entries by device only when
        the request's header is a ``struct ifinfomsg`` (``ifi_index``: the
        device), not the ``struct ndmsg`` of the entries themselves, unless
        the socket asked for strict checking; sent an ``ndmsg``, it answers
        with every entry of every device (measured: see the docs'
        explanation page). So the request is an ``ifinfomsg``, and the
        answer is still checked against *index*.
        """
        msg = ifinfmsg()
        msg["family"], msg["index"] = pack.AF_BRIDGE, index
        try:
            dump = self._nl.dump(msg, rt.RTM_GETNEIGH)
        except OSError as exc:
            raise kernel_error(exc, f"{what}: list fdb entries to {destination}") from exc
        return [m.get_attr("NDA_LLADDR") for m in dump if m["ifindex"] == index and m.get_attr("NDA_DST") == str(destination)]

    def delete_fdb(self, index: int, mac: str, destination: IPAddress, what: str) -> None:
        """Remove the entry :meth:`add_fdb` made; one already gone is success."""
        try:
            self._apply([(pack.RTM_DELNEIGH, NLM_F_ACK, pack.fdb(index, mac, destination), f"delete fdb {mac} dst {destination}")], what)
        except KernelError as exc:
            if exc.errno not in ALREADY_GONE:
                raise
