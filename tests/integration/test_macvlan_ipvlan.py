"""macvlan and ipvlan networks on the isolated host's uplink, and their parents.

The uplink (``host.uplink``) is the parent: sandboxes get addresses of its
subnet, 198.18.0.0/24, from ip_range 198.18.0.128/25 (the host is .2, the
outside .1) and reach the outside directly, seen by their own addresses.
The ipvlan module, 802.1q (``eth0.10`` parents) and dummy links (no parent)
are missing on some kernels: their tests run where the module is and skip
with the reason elsewhere, where the code's clear refusal is tested instead.
"""

from __future__ import annotations

import os

import pytest

import cnm
from cnm.errors import MissingKernelFeatureError
from cnm.kernel import Rtnl
from tests.integration.test_all_or_nothing import _host_state, _sweep
from tests.integration.traffic import (
    REFUSED_TIMEOUT,
    Server,
    assert_unreachable,
    tcp_hello,
    udp_ping,
)
from tests.kernelstate import diff

SUBNET = {"subnet": "198.18.0.0/24", "gateway": "198.18.0.1", "ip_range": "198.18.0.128/25"}


def kernel_has(module: str) -> bool:
    """Whether *module* is in the kernel or can be loaded (a modules tree exists)."""
    return os.path.exists(f"/sys/module/{module}") or os.path.isdir(f"/lib/modules/{os.uname().release}")


def needs(module: str):
    return pytest.mark.skipif(not kernel_has(module), reason=f"this kernel has no {module} module")


def lacks(module: str):
    return pytest.mark.skipif(kernel_has(module), reason=f"this kernel has {module}: the refusal cannot be seen")


def _link(sandbox: cnm.Sandbox, name: str = "eth0"):
    with Rtnl(sandbox.namespace) as rtnl:
        return rtnl.link(name)


def _network(host: cnm.Host, driver: str, mode: str | None = None, **options: str) -> cnm.Network:
    opts = {"parent": host.uplink, **options}
    if mode is not None:
        opts[f"{driver}_mode"] = mode
    return host.create_network(driver, driver, options=opts, **SUBNET)


# ---- macvlan ---------------------------------------------------------------------------


def test_macvlan_sandboxes_sit_on_the_parents_network_without_nat(host):
    assert host.uplink == "eth0"
    net = _network(host, "macvlan")
    a = host.create_sandbox("a", network_mode=net)
    b = host.create_sandbox("b", network_mode=net)
    assert (str(a.address(net)), str(b.address(net))) == ("198.18.0.128/24", "198.18.0.129/24")
    with Server(host.outside, 80) as server:
        assert tcp_hello(a, host.outside_address.ip, 80) == b"hello"
    assert server.peers[0][0] == "198.18.0.128"  # straight on the wire, no NAT
    with Server(host.outside, 53, udp=True) as server:
        assert udp_ping(b, host.outside_address.ip, 53) == b"pong:ping"
    assert server.peers[0][0] == "198.18.0.129"
    with Server(b, 8080):  # bridge mode: siblings reach each other
        assert tcp_hello(a, b.address(net).ip, 8080) == b"hello"
    with Server(a, 8080):  # and the outside reaches them, with nothing published
        assert tcp_hello(host.outside, a.address(net).ip, 8080) == b"hello"
    endpoint = net.endpoint("a")
    assert _link(a).mac == endpoint.mac and _link(a).kind == "macvlan"
    view = net.inspect()
    assert view["Driver"] == "macvlan" and view["Options"] == {"parent": "eth0"}
    assert view["IPAM"]["Config"] == [{"Subnet": "198.18.0.0/24", "IPRange": "198.18.0.128/25", "Gateway": "198.18.0.1", "AuxiliaryAddresses": {}}]
    assert view["Containers"][a.id]["MacAddress"] == endpoint.mac
    settings = a.inspect()["Networks"]["macvlan"]
    assert (settings["IPAddress"], settings["Gateway"], settings["IPPrefixLen"]) == ("198.18.0.128", "198.18.0.1", 24)


@pytest.mark.parametrize("mode", ["private", "vepa"])
def test_macvlan_private_and_vepa_siblings_do_not_reach_each_other(host, mode):
    """private drops sibling traffic; vepa sends it to the switch outside, which
    (a plain veth here, no hairpin) does not send it back."""
    net = _network(host, "macvlan", mode)
    a = host.create_sandbox("a", network_mode=net)
    b = host.create_sandbox("b", network_mode=net)
    assert_unreachable(a, b.address(net).ip, 8080, b, error=OSError)
    with Server(host.outside, 80):
        assert tcp_hello(a, host.outside_address.ip, 80) == b"hello"
    assert net.inspect()["Options"] == {"parent": "eth0", "macvlan_mode": mode}


def test_macvlan_passthru_gives_the_parent_to_one_sandbox(host):
    net = _network(host, "macvlan", "passthru")
    a = host.create_sandbox("a", network_mode=net)
    with Server(host.outside, 80) as server:
        assert tcp_hello(a, host.outside_address.ip, 80) == b"hello"
    assert server.peers[0][0] == "198.18.0.128"
    before = _host_state(host)
    with pytest.raises(cnm.ConflictError, match="passthru gives parent 'eth0' to one sandbox only"):
        host.create_sandbox("b", network_mode=net)
    assert not diff(before, _host_state(host)) and [s.name for s in host.sandboxes] == ["a"]


def test_macvlan_refuses_bad_options_ports_and_missing_parents_before_any_change(host):
    before = _host_state(host)
    cases = [
        ({"macvlan_mode": "l2"}, cnm.InvalidArgumentError, "macvlan_mode 'l2' is not one of bridge, private, vepa, passthru"),
        ({"mode": "bridge"}, cnm.InvalidArgumentError, "unknown macvlan option(s) mode"),
        ({"parent": "nope0"}, cnm.NotFoundError, "macvlan parent 'nope0': the host has no such interface (it has eth0, lo)"),
        ({"parent": "a/b"}, cnm.InvalidArgumentError, "is not an interface name"),
        ({"parent": "nope0.10"}, cnm.NotFoundError, "no interface 'nope0' to make the VLAN on"),
        ({"parent": "eth0.4095"}, cnm.InvalidArgumentError, "VLAN id 4095 is not in 1..4094"),
    ]
    for options, error, words in cases:
        with pytest.raises(error) as caught:
            host.create_network("mv", "macvlan", options=options, **SUBNET)
        assert words in str(caught.value)
    net = _network(host, "macvlan")
    sandbox = host.create_sandbox("s")
    during = _host_state(host, sandbox)
    with pytest.raises(cnm.InvalidArgumentError, match="network 'macvlan' \\(macvlan\\) cannot publish ports"):
        net.connect(sandbox, ports=["8080:80"])
    assert not diff(during, _host_state(host, sandbox))
    sandbox.delete()
    net.delete()
    assert not diff(before, _host_state(host))


@pytest.mark.parametrize("after", [False, True], ids=["refused", "failed-after"])
def test_macvlan_network_and_join_are_all_or_nothing(host, monkeypatch, after):
    _sweep(host, monkeypatch, lambda: _network(host, "macvlan"), after)
    net = host.network("macvlan")
    sandbox = host.create_sandbox("s")
    steps = _sweep(host, monkeypatch, lambda: net.connect(sandbox), after, sandboxes=[sandbox])
    assert steps >= 2  # the macvlan, the sandbox end
    assert str(sandbox.address(net)) == "198.18.0.128/24"


def test_deleting_macvlan_sandboxes_and_the_network_leaves_the_parent_as_it_was(host):
    before = _host_state(host)
    net = _network(host, "macvlan")
    made = host.create_sandboxes(["a", "b", "c"], network=net)
    keys = [s.key for s in made]
    made[0].delete()
    host.delete_sandboxes(made[1:])
    net.delete()
    assert not diff(before, _host_state(host)) and not any(os.path.exists(k) for k in keys)


@lacks("8021q")
def test_a_vlan_parent_needs_8021q_and_says_so(host):
    before = _host_state(host)
    with pytest.raises(MissingKernelFeatureError, match="module '8021q'"):
        host.create_network("mv", "macvlan", options={"parent": "eth0.10"}, **SUBNET)
    assert not diff(before, _host_state(host)) and host.networks[2:] == []


@needs("8021q")
def test_a_vlan_parent_is_made_with_the_network_and_removed_with_it(host):
    before = _host_state(host)
    net = host.create_network("mv", "macvlan", options={"parent": "eth0.10"}, **SUBNET)
    with Rtnl(host.namespace) as rtnl:
        assert rtnl.link("eth0.10").kind == "vlan"
    sandbox = host.create_sandbox("s", network_mode=net)
    assert _link(sandbox).kind == "macvlan"
    sandbox.delete()
    net.delete()
    assert not diff(before, _host_state(host))


@lacks("dummy")
def test_no_parent_needs_a_dummy_link_and_says_so(host):
    before = _host_state(host)
    with pytest.raises(MissingKernelFeatureError, match="module 'dummy'"):
        host.create_network("mv", "macvlan", internal=True, subnet="10.70.0.0/24")
    assert not diff(before, _host_state(host))


@needs("dummy")
def test_no_parent_makes_an_internal_network_on_a_dummy_link(host):
    before = _host_state(host)
    net = host.create_network("mv", "macvlan", subnet="10.70.0.0/24")
    assert net.interface.startswith("dm-")
    a = host.create_sandbox("a", network_mode=net)
    b = host.create_sandbox("b", network_mode=net)
    with Server(b, 8080):
        assert tcp_hello(a, b.address(net).ip, 8080) == b"hello"
    assert a.inspect()["Networks"]["mv"]["Gateway"] == ""
    host.delete_sandboxes([a, b])
    net.delete()
    assert not diff(before, _host_state(host))


# ---- ipvlan ----------------------------------------------------------------------------


@lacks("ipvlan")
def test_ipvlan_without_the_module_is_refused_naming_it(host):
    net = _network(host, "ipvlan")
    before = _host_state(host)
    with pytest.raises(MissingKernelFeatureError, match="module 'ipvlan'"):
        host.create_sandbox("a", network_mode=net)
    assert not diff(before, _host_state(host)) and host.sandboxes == [] and net.endpoints == []


def test_ipvlan_refuses_bad_modes_before_any_change(host):
    before = _host_state(host)
    with pytest.raises(cnm.InvalidArgumentError, match="ipvlan_mode 'bridge' is not one of l2, l3, l3s"):
        _network(host, "ipvlan", "bridge")
    assert not diff(before, _host_state(host))


@needs("ipvlan")
def test_ipvlan_l2_sandboxes_share_the_parents_mac_and_reach_the_outside(host):
    net = _network(host, "ipvlan")
    a = host.create_sandbox("a", network_mode=net)
    b = host.create_sandbox("b", network_mode=net)
    with Rtnl(host.namespace) as rtnl:
        assert _link(a).mac == rtnl.link("eth0").mac == _link(b).mac
    with Server(host.outside, 80) as server:
        assert tcp_hello(a, host.outside_address.ip, 80) == b"hello"
    assert server.peers[0][0] == "198.18.0.128"
    with Server(b, 8080):
        assert tcp_hello(a, b.address(net).ip, 8080) == b"hello"
    assert a.inspect()["Networks"]["ipvlan"]["Gateway"] == "198.18.0.1"


@needs("ipvlan")
@pytest.mark.parametrize("mode", ["l3", "l3s"])
def test_ipvlan_l3_routes_by_the_interface_itself_with_no_gateway(host, mode):
    net = host.create_network("ipvlan", "ipvlan", subnet="10.71.0.0/24", options={"parent": host.uplink, "ipvlan_mode": mode})
    a = host.create_sandbox("a", network_mode=net)
    shown = a.run(["ip", "route", "show", "default"], capture_output=True, text=True).stdout
    assert "default dev eth0" in shown and "via" not in shown
    assert a.inspect()["Networks"]["ipvlan"]["Gateway"] == ""
    with pytest.raises(OSError):  # the outside has no route back to 10.71.0.0/24
        tcp_hello(a, host.outside_address.ip, 80, timeout=REFUSED_TIMEOUT)
