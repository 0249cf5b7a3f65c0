"""The ``"nftables"`` firewall backend: nfnetlink batches, no ``nft`` process.

:class:`NftablesFirewall` is the backend; the package is split by job:

:mod:`.ruleset`
    the policy: the tables, chains, sets, maps and rules networks and port
    forwards mean (its documentation shows them in nft syntax);
:mod:`.expressions`
    the nf_tables expressions those rules are made of, for either address
    family (:class:`~.expressions.AddressFamily`);
:mod:`.batch`
    the transport: one nfnetlink transaction per change, and its outcome;
:mod:`.backend`
    the state: what is installed, counted per family, and the undo of each call;
:mod:`._pyroute2`
    pyroute2's message classes, corrected where they are wrong.
"""

from __future__ import annotations

import socket

from ...netlink import Netlink
from ...netns import Namespace
from ._pyroute2 import marshal
from .backend import NETLINK_NETFILTER, NftablesFirewall
from .batch import everything_listed

__all__ = ["NETLINK_NETFILTER", "NftablesFirewall", "ruleset_state"]


def ruleset_state(namespace: Namespace) -> list[tuple[tuple[int, str, str, str, str], int]]:
    """Every nftables table, rule and set element in *namespace*, whoever
    made them (see :func:`.batch.everything_listed`): for "nothing changed"
    checks such as :func:`cnm.testing.kernel_state`'s."""
    sock = namespace.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        nl = Netlink(sock, marshal())
    except BaseException:
        sock.close()
        raise
    try:
        return everything_listed(nl)
    finally:
        nl.close()
