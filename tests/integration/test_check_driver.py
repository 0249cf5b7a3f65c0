"""cnm.testing.check_driver: the conformance check passes good drivers and catches bad ones;
third-party drivers are found through the entry-point group or handed to a host."""

from __future__ import annotations

import ipaddress
import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cnm
from cnm.drivers import NetworkPlumbing, NetworkSpec
from cnm.drivers.bridge import BridgeDriver
from cnm.drivers.macvlan import MacvlanDriver
from cnm.kernel import Rtnl
from cnm.firewall.nftables.expressions import ifname_bytes
from cnm.testing import DriverCheckError, FaultInjector, check_driver, kernel_state
from cnm.undo import UndoLog

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
from p2p_driver import PointToPointDriver  # noqa: E402


@pytest.mark.parametrize(
    "factory, kwargs",
    [
        (BridgeDriver, {}),
        (PointToPointDriver, {}),  # the how-to's example, written outside cnm
        (MacvlanDriver, {"options": {"parent": "eth0"}, "subnet": "198.18.0.0/24"}),
    ],
    ids=["bridge", "p2p example", "macvlan"],
)
def test_good_drivers_pass(factory, kwargs):
    check_driver(factory, **kwargs)


class LeakyJoin(BridgeDriver):
    """Makes a stray veth pair in the host at each join, with no undo step."""

    joins = itertools.count()

    def join(self, host, network, endpoint, sandbox, undo):
        n = next(self.joins)
        host.add_link("veth", f"lk{n}", peer=cnm.drivers.Peer(f"lp{n}"))
        return super().join(host, network, endpoint, sandbox, undo)


class LateUndo(BridgeDriver):
    """Registers the bridge's undo only once a later step (a sysctl) went through."""

    def create_network(self, host: Rtnl, spec: NetworkSpec, undo: UndoLog) -> NetworkPlumbing:
        scratch = UndoLog()
        plumbing = super().create_network(host, spec, scratch)
        host.namespace.write_sysctl(f"net/ipv4/conf/{plumbing.interface}/forwarding", "1")
        for step in reversed(scratch.steps()):
            undo.push("the bridge, too late", step)
        return plumbing


class LeakySysctl(BridgeDriver):
    """Turns on proxy ARP on the host's uplink for each network, and never off."""

    def create_network(self, host: Rtnl, spec: NetworkSpec, undo: UndoLog) -> NetworkPlumbing:
        host.namespace.write_sysctl("net/ipv4/conf/eth0/proxy_arp", "1")
        return super().create_network(host, spec, undo)


def test_a_driver_that_leaves_a_sysctl_changed_fails_naming_it():
    with pytest.raises(DriverCheckError) as caught:
        check_driver(LeakySysctl, fault_sweep=False)
    assert "sysctls: gone [('ipv4/conf/eth0/proxy_arp', '0')], new [('ipv4/conf/eth0/proxy_arp', '1')]" in str(caught.value)


def test_kernel_state_sees_the_firewall_and_the_sysctls(host):
    empty = kernel_state(host.namespace)
    assert empty["nftables"] == [] and ("ipv4/ip_forward", "1") in empty["sysctls"]
    network = host.create_network("web", subnet="10.40.0.0/24")
    made = kernel_state(host.namespace)
    tables = {(family, table) for (family, table, kind, _, _), _ in made["nftables"] if kind == "table"}
    assert tables == {(2, f"cnm-{host.token}"), (7, f"cnm-{host.token}")}  # ip and bridge
    bridge_element = ifname_bytes(network.interface).hex()
    assert ((2, f"cnm-{host.token}", "element", "bridges", bridge_element), 1) in made["nftables"]
    assert (f"ipv4/conf/{network.interface}/route_localnet", "1") in made["sysctls"]
    network.delete()
    assert kernel_state(host.namespace)["nftables"] == []


def test_a_failure_midway_through_a_batch_leaves_the_requests_before_it_done(host):
    """FaultInjector(midway=True): the kernel acts on a pipelined write's requests but the last, which it refuses."""
    with Rtnl(host.namespace) as rtnl:
        index = rtnl.add_link("veth", "mid0", peer=cnm.drivers.Peer("mid1")).index
        addresses = [ipaddress.ip_interface("10.77.0.1/24"), ipaddress.ip_interface("10.78.0.1/24")]
        with FaultInjector(1, midway=True) as injector:
            with pytest.raises(cnm.KernelError, match="add address 10.78.0.1/24"):
                rtnl.configure_link("mid0", addresses, [], "the test's link", index=index)
        assert injector.fired
        there = [str(a) for i, a in rtnl.addresses(4) if i == index]
        assert there == ["10.77.0.1/24"]  # the first was made, the last refused
        rtnl.delete_link(index, "the test's link")
    with pytest.raises(cnm.InvalidArgumentError, match="not both"):
        FaultInjector(1, after=True, midway=True)


def test_a_driver_that_leaves_links_behind_fails_naming_them():
    with pytest.raises(DriverCheckError) as caught:
        check_driver(LeakyJoin, fault_sweep=False)
    assert "after deleting everything, links: gone [], new [('lk" in str(caught.value)


def test_a_driver_that_cannot_roll_back_fails_the_sweep_only():
    check_driver(LateUndo, fault_sweep=False)  # it builds and deletes fine...
    with pytest.raises(DriverCheckError) as caught:
        check_driver(LateUndo)  # ...but a failure at the sysctl leaves the bridge
    assert "create_network (before the change): failure at kernel change" in str(caught.value)
    assert "links: gone [], new [('br-" in str(caught.value)


def test_a_driver_handed_to_a_host_is_used_by_name_like_a_built_in(host):
    other = cnm.Host.isolated(drivers={"p2p-own": PointToPointDriver})
    try:
        net = other.create_network("r", "p2p-own", subnet="10.81.0.0/24")
        a = other.create_sandbox("a", network_mode=net)
        assert str(a.address(net)) == "10.81.0.2/24"
    finally:
        other.close()
    with pytest.raises(cnm.NotFoundError, match="network driver 'p2p-own' not found"):
        host.create_network("r", "p2p-own")  # another host's own driver is not this one's
    with pytest.raises(cnm.InvalidArgumentError, match="drivers must be a mapping"):
        cnm.Host.isolated(drivers=[PointToPointDriver])
    with pytest.raises(cnm.InvalidArgumentError, match="driver 'x' must be a zero-argument factory"):
        cnm.Host.isolated(drivers={"x": "not callable"})


def test_a_driver_installed_under_the_entry_point_group_is_used_by_name(tmp_path):
    """An installed package's entry point (a dist-info on the path, as pip leaves one)."""
    info = tmp_path / "cnm_p2p_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cnm-p2p-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[cnm.drivers]\np2p-plugin = p2p_driver:PointToPointDriver\n")
    script = textwrap.dedent(
        """
        import cnm
        from cnm.drivers import DRIVERS
        print("known:", "p2p-plugin" in DRIVERS.names())
        with cnm.Host.isolated() as host:
            net = host.create_network("r", "p2p-plugin", subnet="10.82.0.0/24")
            a = host.create_sandbox("a", network_mode=net)
            print("sandbox:", a.address(net), net.inspect()["Driver"])
        """
    )
    path = os.pathsep.join([str(ROOT), str(ROOT / "examples"), str(tmp_path)])
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=path))
    assert done.returncode == 0, done.stderr
    assert "known: True" in done.stdout and "sandbox: 10.82.0.2/24 p2p" in done.stdout
