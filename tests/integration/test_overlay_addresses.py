"""An address is unique across the whole overlay (issue 15, point 8).

Each host of an overlay has its own network object, with its own address
pool; the lab gives each host its own ``ip_range`` of the subnet. A
static address on one host that is in another host's range, or that a
sandbox of another host has, is refused before any change; and no host
hands out an address another host holds (tested on overlays made host by
host, without the lab's ranges).
"""

from __future__ import annotations

from typing import Any

import pytest

import cnm
from tests.kernelstate import diff, snapshot


def _state(lab: cnm.Lab) -> dict[str, Any]:
    return {
        host.name: (
            snapshot(host.namespace.name),
            [(n.name, sorted((e.name, tuple(map(str, e.addresses))) for e in n.endpoints)) for n in host.networks],
            [s.name for s in host.sandboxes],
        )
        for host in lab.hosts
    }


def refused(lab: cnm.Lab, call: Any, words: str) -> None:
    before = _state(lab)
    with pytest.raises(cnm.ConflictError) as caught:
        call()
    assert isinstance(caught.value, ValueError)
    assert words in str(caught.value), f"{words!r} is not in {str(caught.value)!r}"
    after = _state(lab)
    for name in before:
        assert before[name][1:] == after[name][1:]
        changed = diff(before[name][0], after[name][0])
        assert not changed, changed


def test_a_static_address_in_another_host_s_range_is_refused(lab):
    h1, h2, h3 = lab.hosts
    ov = lab.create_network("ov", subnet="10.81.0.0/24")  # ranges .0/26, .64/26, .128/26 (and .192/26: nobody's)
    refused(lab, lambda: h1.create_sandbox("a", network_mode=ov[0], ip="10.81.0.70"), "10.81.0.64/26 of host 'h2'")
    b = h1.create_sandbox("b")
    refused(lab, lambda: ov[0].connect(b, ip="10.81.0.131"), "10.81.0.128/26 of host 'h3'")
    refused(lab, lambda: h2.create_sandboxes([cnm.SandboxRequest("c", ip="10.81.0.2")], network=ov[1]), "of host 'h1'")
    # Its own range, and the part of the subnet no host's range covers, are its to give.
    own = h2.create_sandbox("own", network_mode=ov[1], ip="10.81.0.70")
    assert str(own.address(ov[1]).ip) == "10.81.0.70"
    h1.create_sandbox("spare", network_mode=ov[0], ip="10.81.0.200")


def test_a_static_address_another_host_holds_is_refused_until_it_is_given_back(lab):
    h1, h2, h3 = lab.hosts
    ov = lab.create_network("ov", subnet="10.81.0.0/24")
    first = h1.create_sandbox("first", network_mode=ov[0], ip="10.81.0.200")  # in nobody's range
    refused(lab, lambda: h2.create_sandbox("second", network_mode=ov[1], ip="10.81.0.200"), "host 'h1' has it")
    third = h3.create_sandbox("third")
    refused(lab, lambda: ov[2].connect(third, ip="10.81.0.200"), "host 'h1' has it")
    first.delete()
    h1.settle()
    second = h2.create_sandbox("second", network_mode=ov[1], ip="10.81.0.200")
    assert str(second.address(ov[1]).ip) == "10.81.0.200"


def test_an_ipv6_static_address_in_another_host_s_range_is_refused(lab):
    h1, h2, _ = lab.hosts
    ov = lab.create_network("ov6", subnet=["10.83.0.0/24", "fd00:83::/64"], ipv6=True)
    refused(lab, lambda: h1.create_sandbox("a", network_mode=ov[0], ip6="fd00:83::4000:0:0:5"), "of host 'h2'")


def test_no_host_hands_out_an_address_another_host_holds(lab):
    """Overlays made host by host have no ranges: every host draws from the
    whole subnet, and skips what the others hold."""
    h1, h2, h3 = lab.hosts
    nets = [host.create_network("flat", "overlay", subnet="10.82.0.0/24") for host in (h1, h2, h3)]
    given = [str(host.create_sandbox(f"s{i}", network_mode=net).address(net).ip) for i, (host, net) in enumerate(zip((h1, h2, h3), nets))]
    assert len(set(given)) == 3, given
    more = [str(nets[i % 3].connect(lab.hosts[i % 3].create_sandbox(f"m{i}")).addresses[0].ip) for i in range(6)]
    assert len(set(given + more)) == 9, given + more
    refused(lab, lambda: h3.create_sandbox("dup", network_mode=nets[2], ip=given[0]), "host 'h1' has it")


def test_a_host_that_leaves_the_overlay_gives_its_range_and_addresses_back(lab):
    h1, h2, _ = lab.hosts
    ov = lab.create_network("ov", subnet="10.81.0.0/24")
    h2.create_sandbox("b", network_mode=ov[1], ip="10.81.0.66")
    h2.close()
    a = h1.create_sandbox("a", network_mode=ov[0], ip="10.81.0.66")
    assert str(a.address(ov[0]).ip) == "10.81.0.66"
