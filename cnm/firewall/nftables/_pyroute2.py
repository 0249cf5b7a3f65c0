"""pyroute2's nf_tables message classes, corrected where they are wrong for what cnm sends.

pyroute2 supplies the encoders of the messages that are not hot (tables,
chains, sets, rules); the per-element messages are packed by hand in
:mod:`.batch`. Three of its definitions disagree with the kernel (and with
``nft``, which is how the tests find out: they read every rule back with
``nft list ruleset``):

* the ``fib`` expression's result is an enum, not a flag set, and its flags
  are a flag set, not an enum: pyroute2 has them the other way round;
* a rule's user data is a list of type-length-value items (libnftnl's
  ``nftnl_udata``), not a length-prefixed string;
* so is a set's user data.

User data is therefore sent, and read back, as raw bytes.
"""

from __future__ import annotations

from pyroute2.netlink.marshal import Marshal
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES
from pyroute2.netlink.nfnetlink import nftsocket as nft

__all__ = ["marshal", "rule_msg", "set_msg"]

_NEWRULE = 6


class rule_msg(nft.nft_rule_msg):  # type: ignore[misc]  # pyroute2 is untyped
    nla_map = tuple(
        (name, "cdata") if name == "NFTA_RULE_USERDATA" else (name, kind) for name, kind in nft.nft_rule_msg.nla_map
    )

    class nft_expr(nft.nft_rule_msg.nft_expr):  # type: ignore[misc]
        class nft_fib(nft.nft_regs):  # type: ignore[misc]
            # The kernel wants plain 32-bit numbers for both.
            nla_map = (
                ("NFTA_FIB_UNSPEC", "none"),
                ("NFTA_FIB_DREG", "be32"),
                ("NFTA_FIB_RESULT", "be32"),
                ("NFTA_FIB_FLAGS", "be32"),
            )


class set_msg(nft.nft_set_msg):  # type: ignore[misc]  # pyroute2 is untyped
    nla_map = tuple(
        (name, "cdata") if name == "NFTA_SET_USERDATA" else (name, kind) for name, kind in nft.nft_set_msg.nla_map
    )


def marshal() -> Marshal:
    """A parser of nf_tables answers; listed rules carry their user data as raw
    bytes, comparable with what :func:`.expressions.comment_udata` makes."""
    parser = Marshal()
    for mtype, cls in nft.AsyncNFTSocket.policy.items():
        parser.msg_map[mtype | NFNL_SUBSYS_NFTABLES << 8] = cls
    parser.msg_map[_NEWRULE | NFNL_SUBSYS_NFTABLES << 8] = rule_msg
    return parser
