"""What handles print: enough to tell them apart, and whether they are gone
(on the in-memory kernel of tests/fakekernel.py: no root needed)."""

from __future__ import annotations

import re

import cnm
from tests.fakekernel import FakeKernel


def test_live_handles_show_what_they_are() -> None:
    with cnm.Host.isolated("h", firewall="none", kernel=FakeKernel()) as host:
        net = host.create_network("web", subnet="10.1.0.0/24")
        a = host.create_sandbox("a")
        endpoint = net.connect(a)
        assert re.fullmatch(r"<Network 'web' \(bridge\) 10\.1\.0\.0/24 on br-\w+>", repr(net))
        assert [repr(n) for n in host.networks[:2]] == ["<Network 'host' (host)>", "<Network 'none' (null)>"]
        assert re.fullmatch(r"<Sandbox 'a' /\S+>", repr(a))
        assert repr(endpoint) == f"<Endpoint {endpoint.name!r} 10.1.0.2/24 on 'web' in 'a'>"
        assert re.fullmatch(r"<Host 'h' \S+>", repr(host))


def test_deleted_handles_say_so() -> None:
    host = cnm.Host.isolated("h", firewall="none", kernel=FakeKernel())
    net = host.create_network("web", subnet="10.1.0.0/24")
    a, b = host.create_sandbox("a"), host.create_sandbox("b")
    kept = net.create_endpoint("kept")
    endpoint = net.connect(a)
    a.delete()
    kept.delete()
    assert repr(a) == "<Sandbox 'a' deleted>"
    assert repr(endpoint) == f"<Endpoint {endpoint.name!r} on 'web' deleted>"
    assert repr(kept) == "<Endpoint 'kept' on 'web' deleted>"
    net.delete()
    assert repr(net).endswith(" 10.1.0.0/24 deleted>")
    predefined = host.networks
    host.close()  # what the host still had goes with it, and says so
    assert repr(b) == "<Sandbox 'b' deleted>"
    assert repr(host).endswith(" closed>")
    assert [repr(n) for n in predefined] == ["<Network 'host' (host) deleted>", "<Network 'none' (null) deleted>"]


def test_a_closed_lab_says_so() -> None:
    lab = cnm.Lab(["h1"], firewall="none", kernel=FakeKernel())
    assert not repr(lab).endswith(" closed>")
    lab.close()
    assert repr(lab).endswith(" closed>")
