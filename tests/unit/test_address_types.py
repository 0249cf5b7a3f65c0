"""A host's, an outside's and a sandbox's addresses are one type: an
interface (address and prefix), whose ``.ip`` is the bare address (no root:
the in-memory kernel of tests/fakekernel.py)."""

from __future__ import annotations

from ipaddress import IPv4Interface, IPv6Interface

import cnm
from tests.fakekernel import FakeKernel


def test_an_isolated_host_and_its_sandboxes_give_interfaces() -> None:
    with cnm.Host.isolated(firewall="none", kernel=FakeKernel()) as host:
        net = host.create_network("web", subnet="10.1.0.0/24", ipv6=True)
        a = host.create_sandbox("a", network_mode=net)
        assert isinstance(a.address(net), IPv4Interface) and isinstance(a.address(net, 6), IPv6Interface)
        assert (host.address, host.outside_address) == (IPv4Interface("198.18.0.2/24"), IPv4Interface("198.18.0.1/24"))
        assert (host.address6, host.outside_address6) == (IPv6Interface("2001:2::2/64"), IPv6Interface("2001:2::1/64"))
        assert host.outside is not None and host.outside.address == host.outside_address
        assert host.tunnel_address is None


def test_a_lab_host_gives_interfaces() -> None:
    with cnm.Lab(["h1", "h2"], firewall="none", kernel=FakeKernel()) as lab:
        h1, h2 = lab.hosts
        assert (h2.address, h2.address6) == (IPv4Interface("198.18.0.3/24"), IPv6Interface("2001:2::3/64"))
        assert (h1.tunnel_address, h2.tunnel_address) == (IPv4Interface("198.18.1.2/24"), IPv4Interface("198.18.1.3/24"))
        assert h1.outside_address == lab.outside.address == IPv4Interface("198.18.0.1/24")
