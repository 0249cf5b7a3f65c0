"""The nftables messages packed by hand match pyroute2's encoding byte for byte."""

from __future__ import annotations

import pytest
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES, nfgen_msg
from pyroute2.netlink.nfnetlink import nftsocket as nft

from cnm.firewall.nftables.batch import Batch
from cnm.firewall.nftables.expressions import BRIDGE, IPV4, IPV6
from cnm.firewall.nftables.ruleset import add_skeleton, make_skeleton
from tests.unit.encoding import pyroute2_bytes


@pytest.mark.parametrize("adding", [True, False])
@pytest.mark.parametrize(
    "family, map_name, key, data",
    [
        (IPV4, "ports", bytes([6, 0, 0, 0, 0x1F, 0x90, 0, 0]), bytes([10, 0, 0, 2, 0, 80, 0, 0])),
        (IPV4, "ports_addr", bytes(12), bytes([10, 0, 0, 2, 0, 80, 0, 0])),
        (IPV6, "ports", bytes([6, 0, 0, 0, 0x1F, 0x90, 0, 0]), bytes(range(16)) + bytes([0, 80, 0, 0])),
        (IPV6, "ports_addr", bytes(24), bytes(range(16)) + bytes([0, 80, 0, 0])),
        (IPV6, "bridges", b"br-web".ljust(16, b"\0"), None),
    ],
)
def test_element_messages(adding, family, map_name, key, data):
    batch = Batch("cnm-abc123")
    batch.element(adding, family, map_name, key, data, "label")
    ((seq, packed),) = batch.messages
    element = [("NFTA_SET_ELEM_KEY", {"attrs": [("NFTA_DATA_VALUE", key)]})]
    if adding and data is not None:
        element.append(("NFTA_SET_ELEM_DATA", {"attrs": [("NFTA_DATA_VALUE", data)]}))
    msg = nft.nft_set_elem_list_msg()
    msg["nfgen_family"] = family.nfproto
    msg["attrs"] = [
        ("NFTA_SET_ELEM_LIST_TABLE", "cnm-abc123"),
        ("NFTA_SET_ELEM_LIST_SET", map_name),
        ("NFTA_SET_ELEM_LIST_ELEMENTS", [{"attrs": element}]),
    ]
    mtype = (12 if adding else 14) | NFNL_SUBSYS_NFTABLES << 8
    flags = 0x600 if adding else 0
    assert packed == pyroute2_bytes(msg, mtype, flags, seq)
    assert batch.labels[seq] == "label"


def test_batch_markers():
    batch = Batch("cnm-abc123")
    begin, end = batch.framed()
    for (seq, packed), mtype in ((begin, 0x10), (end, 0x11)):
        marker = nfgen_msg()
        marker["nfgen_family"] = 0
        marker["res_id"] = NFNL_SUBSYS_NFTABLES
        assert packed == pyroute2_bytes(marker, mtype, 0, seq)


@pytest.mark.parametrize("family", [IPV4, IPV6, BRIDGE], ids=["ip", "ip6", "bridge"])
@pytest.mark.parametrize("tables", [["cnm-abc123", "cnm-ffffff"], ["cnm-x", "cnm-y"], ["cnm-" + "a" * 64]])
def test_the_cached_skeleton_is_what_encoding_it_gives(family, tables):
    for table in tables:  # the first one of each length fills the cache, the next one uses it
        cached, direct = Batch(table), Batch(table)
        add_skeleton(cached, family)
        make_skeleton(direct, family)
        assert cached.creates == direct.creates == {family} and len(cached) == len(direct) > 5
        # The same bytes but for the sequence numbers (header bytes 8..12).
        assert [m[:8] + m[12:] for _, m in cached.messages] == [m[:8] + m[12:] for _, m in direct.messages]
        assert list(cached.labels.values()) == list(direct.labels.values())
        assert all(table.encode() in m for _, m in cached.messages)
        # Every message is of the family's table (nfgenmsg's family, first byte after the header).
        assert {m[16] for _, m in cached.messages} == {family.nfproto}


def test_both_skeletons_in_one_batch_have_distinct_set_ids():
    """A first dual-stack call creates the three tables in one batch."""
    batch = Batch("cnm-abc123")
    add_skeleton(batch, IPV4)
    add_skeleton(batch, IPV6)
    add_skeleton(batch, BRIDGE)
    assert batch.creates == {IPV4, IPV6, BRIDGE}
    sets = [m for _, m in batch.messages if m[4] == 9]  # NFT_MSG_NEWSET (type's low byte)
    assert len(sets) == 12  # the bridge table has none
    marker = b"\x08\x00\x0a\x00"  # NFTA_SET_ID: a 4-byte attribute of type 10
    ids = [m[m.index(marker) + 4 : m.index(marker) + 8] for m in sets]
    assert len(set(ids)) == 12


def test_a_batch_without_some_messages_keeps_the_rest():
    batch = Batch("cnm-abc123")
    batch.table_delete(IPV4)
    batch.table_delete(IPV6)
    (first, _), (second, _) = batch.messages
    rest = batch.without({first})
    assert [seq for seq, _ in rest.messages] == [second]
    assert rest.deletes == {second: IPV6}
    assert first in batch.deletes  # the original is unchanged
