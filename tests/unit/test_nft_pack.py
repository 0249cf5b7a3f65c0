"""The nftables messages packed by hand match pyroute2's encoding byte for byte."""

from __future__ import annotations

import pytest
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES, nfgen_msg
from pyroute2.netlink.nfnetlink import nftsocket as nft

from cnm.firewall.nftables import _Batch
from tests.unit.encoding import pyroute2_bytes


@pytest.mark.parametrize("adding", [True, False])
@pytest.mark.parametrize("map_name, key", [("ports", bytes([6, 0, 0, 0, 0x1F, 0x90, 0, 0])), ("ports_addr", bytes(12))])
def test_element_messages(adding, map_name, key):
    data = bytes([10, 0, 0, 2, 0, 80, 0, 0])
    batch = _Batch("cnm-abc123")
    batch.element(adding, map_name, key, data, "label")
    ((seq, packed),) = batch.messages
    element = [("NFTA_SET_ELEM_KEY", {"attrs": [("NFTA_DATA_VALUE", key)]})]
    if adding:
        element.append(("NFTA_SET_ELEM_DATA", {"attrs": [("NFTA_DATA_VALUE", data)]}))
    msg = nft.nft_set_elem_list_msg()
    msg["nfgen_family"] = 2
    msg["attrs"] = [
        ("NFTA_SET_ELEM_LIST_TABLE", "cnm-abc123"),
        ("NFTA_SET_ELEM_LIST_SET", map_name),
        ("NFTA_SET_ELEM_LIST_ELEMENTS", [{"attrs": element}]),
    ]
    mtype = (12 if adding else 14) | NFNL_SUBSYS_NFTABLES << 8
    flags = 0x600 if adding else 0
    assert packed == pyroute2_bytes(msg, mtype, flags, seq)


def test_batch_markers():
    batch = _Batch("cnm-abc123")
    begin, end = batch.framed()
    for (seq, packed), mtype in ((begin, 0x10), (end, 0x11)):
        marker = nfgen_msg()
        marker["nfgen_family"] = 0
        marker["res_id"] = NFNL_SUBSYS_NFTABLES
        assert packed == pyroute2_bytes(marker, mtype, 0, seq)


@pytest.mark.parametrize("tables", [["cnm-abc123", "cnm-ffffff"], ["cnm-x", "cnm-y"], ["cnm-" + "a" * 64]])
def test_the_cached_skeleton_is_what_encoding_it_gives(tables):
    from cnm.firewall.nftables import _skeleton

    for table in tables:  # the first one of each length fills the cache, the next one uses it
        cached, direct = _Batch(table), _Batch(table)
        cached.add_skeleton()
        _skeleton(direct)
        assert cached.creates_table and len(cached) == len(direct) > 10
        # The same bytes but for the sequence numbers (header bytes 8..12).
        assert [m[:8] + m[12:] for _, m in cached.messages] == [m[:8] + m[12:] for _, m in direct.messages]
        assert list(cached.labels.values()) == list(direct.labels.values())
        assert all(table.encode() in m for _, m in cached.messages)
