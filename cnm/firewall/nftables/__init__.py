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

from .backend import NETLINK_NETFILTER, NftablesFirewall

__all__ = ["NETLINK_NETFILTER", "NftablesFirewall"]
