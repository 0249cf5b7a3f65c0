"""The public API's contracts: lookups, errors, lifecycle, inspect shapes, IPAM in the kernel."""

from __future__ import annotations

import errno
import os
import subprocess
from ipaddress import IPv4Interface, IPv4Network

import pytest

import cnm
from tests.integration.traffic import Server, tcp_hello


def _kernel_addresses(sandbox) -> list[str]:
    out = sandbox.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return sorted(line.split()[3] for line in out.splitlines() if " lo " not in line)


def test_default_pools_skip_what_is_taken(host):
    first = host.create_network("one")
    second = host.create_network("two")
    assert (first.subnet, second.subnet) == (IPv4Network("172.17.0.0/16"), IPv4Network("172.18.0.0/16"))
    first.delete()
    third = host.create_network("three")
    assert third.subnet == IPv4Network("172.17.0.0/16")  # freed pools are reused


def test_default_pool_skips_routes_of_the_host(host):
    # The isolated host has a route for its uplink; a network asked for there collides.
    with pytest.raises(cnm.ConflictError, match="198.18.0.0/24"):
        host.create_network("x", subnet="198.18.0.0/16")


def test_static_ip_gateway_and_ip_range_are_honoured(host):
    net = host.create_network("web", subnet="10.20.0.0/16", gateway="10.20.0.254", ip_range="10.20.5.0/24")
    a, b = host.create_sandbox("a"), host.create_sandbox("b")
    ea = net.connect(a)
    eb = net.connect(b, ip="10.20.9.9")
    assert ea.ip in IPv4Network("10.20.5.0/24") and ea.address.network == net.subnet
    assert eb.address == IPv4Interface("10.20.9.9/16")
    assert _kernel_addresses(a) == [str(ea.address)]
    assert _kernel_addresses(b) == ["10.20.9.9/16"]
    routes = a.run(["ip", "route", "show", "default"], capture_output=True, text=True, check=True).stdout
    assert "via 10.20.0.254 dev eth0" in routes
    config = net.inspect()["IPAM"]["Config"][0]
    assert config == {"Subnet": "10.20.0.0/16", "IPRange": "10.20.5.0/24", "Gateway": "10.20.0.254", "AuxiliaryAddresses": {}}


def test_address_taken_is_a_conflict(host):
    net = host.create_network("web")
    net.create_endpoint("one", ip="172.17.0.9")
    with pytest.raises(cnm.ConflictError, match="172.17.0.9"):
        net.create_endpoint("two", ip="172.17.0.9")


def test_released_addresses_are_reused(host):
    net = host.create_network("web")
    sandboxes = [host.create_sandbox(f"s{i}") for i in range(3)]
    endpoints = [net.connect(s) for s in sandboxes]
    assert [str(e.ip) for e in endpoints] == ["172.17.0.2", "172.17.0.3", "172.17.0.4"]
    net.disconnect(sandboxes[1])
    assert net.connect(sandboxes[1]).ip == endpoints[1].ip


def test_lookups_and_not_found(host):
    net = host.create_network("web")
    sandbox = host.create_sandbox("a")
    assert host.network("web") is net and host.sandbox("a") is sandbox
    assert host.networks[2:] == [net] and host.sandboxes == [sandbox]
    with pytest.raises(cnm.NotFoundError):
        host.network("nope")
    with pytest.raises(LookupError):
        host.sandbox("nope")
    with pytest.raises(cnm.NotFoundError):
        net.disconnect(sandbox)
    with pytest.raises(cnm.NotFoundError, match="macvlan2"):
        host.create_network("x", driver="macvlan2")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"subnet": "10.0.0.0/33"}, "10.0.0.0/33"),
        ({"subnet": "10.0.0.1/24"}, "host bits"),
        ({"subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}, "10.0.1.1"),
        ({"subnet": "10.0.0.0/24", "ip_range": "10.0.1.0/25"}, "10.0.1.0/25"),
        ({"options": {"com.docker.network.bridge.name": "much-too-long-for-linux"}}, "much-too-long"),
        ({"options": {"unknown.option": "1"}}, "unknown.option"),
        ({"options": {"cnm.bridge.multicast_snooping": "yes"}}, "'true' or 'false'"),
        ({"labels": {"a": 1}}, "labels"),
    ],
)
def test_invalid_network_arguments(host, kwargs, match):
    with pytest.raises(cnm.InvalidArgumentError, match=match):
        host.create_network("web", **kwargs)
    assert host.networks[2:] == []


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 64, None])
def test_invalid_names(host, name):
    with pytest.raises(ValueError):
        host.create_sandbox(name)


def test_delete_network_refuses_while_endpoints_exist(host):
    net = host.create_network("web")
    sandbox = host.create_sandbox("a")
    net.connect(sandbox)
    with pytest.raises(cnm.StateError, match="active endpoints"):
        net.delete()
    assert host.networks[2:] == [net]
    net.delete(force=True)
    assert host.networks[2:] == [] and sandbox.endpoints == []
    net.delete()  # idempotent


def test_endpoint_join_leave_delete(host):
    net = host.create_network("web")
    sandbox = host.create_sandbox("a")
    endpoint = net.create_endpoint("api", ports=["8080:80"])
    assert endpoint.sandbox is None
    endpoint.join(sandbox)
    assert endpoint.sandbox is sandbox and endpoint.interface == "eth0"
    assert _kernel_addresses(sandbox) == [str(endpoint.address)]
    with pytest.raises(cnm.StateError):
        endpoint.join(sandbox)
    endpoint.leave()
    assert _kernel_addresses(sandbox) == [] and endpoint.published == []
    with pytest.raises(cnm.StateError):
        endpoint.leave()
    endpoint.join(sandbox)  # the address and ports were kept
    assert endpoint.published[0].host_port == 8080
    endpoint.delete()
    endpoint.delete()
    assert net.endpoints == [] and _kernel_addresses(sandbox) == []
    with pytest.raises(cnm.ClosedError):
        endpoint.join(sandbox)


def test_deleting_a_sandbox_leaves_separately_created_endpoints(host):
    net = host.create_network("web")
    sandbox = host.create_sandbox("a")
    kept = net.create_endpoint("kept")
    kept.join(sandbox)
    other = host.create_sandbox("b")
    net.connect(other)
    sandbox.delete()
    other.delete()
    assert [e.name for e in net.endpoints] == ["kept"] and kept.sandbox is None
    with pytest.raises(cnm.ClosedError):
        sandbox.run(["true"])


def test_context_managers_delete_on_exit(host):
    with host.create_network("web") as net:
        with host.create_sandbox("a") as sandbox:
            with net.connect(sandbox):
                assert len(net.endpoints) == 1
            assert net.endpoints == []
        assert host.sandboxes == []
    assert host.networks[2:] == []


def test_inspect_shapes(host):
    net = host.create_network("web", labels={"team": "infra"})
    sandbox = host.create_sandbox("a")
    endpoint = net.connect(sandbox, ports=["8080:80", "127.0.0.1::53/udp"])
    info = net.inspect()
    assert set(info) == {
        "Name", "Id", "Created", "Scope", "Driver", "EnableIPv4", "EnableIPv6", "IPAM", "Internal",
        "Attachable", "Ingress", "ConfigFrom", "ConfigOnly", "Containers", "Options", "Labels",
    }
    assert (info["Name"], info["Driver"], info["Scope"], info["Labels"]) == ("web", "bridge", "local", {"team": "infra"})
    assert len(info["Id"]) == 64
    assert info["Containers"] == {
        sandbox.id: {
            "Name": "a",
            "EndpointID": endpoint.id,
            "MacAddress": "02:42:ac:11:00:02",
            "IPv4Address": "172.17.0.2/16",
            "IPv6Address": "",
        }
    }
    settings = sandbox.inspect()
    assert settings["SandboxKey"] == sandbox.key and settings["SandboxID"] == sandbox.id
    udp_port = endpoint.published[1].host_port
    assert settings["Ports"] == {
        "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}],
        "53/udp": [{"HostIp": "127.0.0.1", "HostPort": str(udp_port)}],
    }
    web = settings["Networks"]["web"]
    assert (web["IPAddress"], web["IPPrefixLen"], web["Gateway"], web["MacAddress"]) == (
        "172.17.0.2", 16, "172.17.0.1", "02:42:ac:11:00:02"
    )
    assert (web["NetworkID"], web["EndpointID"]) == (net.id, endpoint.id)
    link = sandbox.run(["ip", "-o", "link", "show", "eth0"], capture_output=True, text=True, check=True).stdout
    assert "02:42:ac:11:00:02" in link


def test_popen_processes_end_with_the_sandbox(host):
    sandbox = host.create_sandbox("a")
    proc = sandbox.popen(["sleep", "60"])
    sandbox.delete()
    assert proc.returncode is not None


def test_run_and_call_happen_inside_the_namespace(host):
    import os

    sandbox = host.create_sandbox("a")
    inode = os.stat(sandbox.key).st_ino
    assert sandbox.call(lambda: os.stat("/proc/thread-self/ns/net").st_ino) == inode
    out = sandbox.run(["readlink", "/proc/self/ns/net"], capture_output=True, text=True, check=True).stdout
    assert str(inode) in out
    assert host.call(lambda: os.stat("/proc/thread-self/ns/net").st_ino) == os.stat(host.namespace.path).st_ino


def test_closed_host_refuses_work_and_closes_once(host):
    host.create_network("web")
    host.close()
    host.close()
    with pytest.raises(cnm.ClosedError):
        host.create_sandbox("a")


def test_the_machines_own_host_opens_and_closes_without_changing_anything():
    # Only reads (and mounts the directory for its sandboxes, see cnm.netns):
    # the session guard checks that nothing is left.
    with cnm.Host() as machine:
        assert machine.networks[2:] == [] and machine.sandboxes == []
        assert machine.address is None and machine.outside is None
        assert machine.namespace.owned is False
        assert os.path.ismount(machine._services.mounts.path)
    assert not os.path.exists(machine._services.mounts.path)


def test_the_default_route_moves_to_a_remaining_network(host):
    front, back = host.create_network("front"), host.create_network("back")
    internal = host.create_network("private", internal=True)
    a = host.create_sandbox("a")
    internal.connect(a)
    front.connect(a)
    back.connect(a)

    def default_route() -> str:
        return a.run(["ip", "route", "show", "default"], capture_output=True, text=True, check=True).stdout.strip()

    assert default_route().startswith(f"default via {front.gateway} dev eth1")
    settings = a.inspect()["Networks"]
    assert (settings["front"]["Gateway"], settings["back"]["Gateway"], settings["private"]["Gateway"]) == (
        str(front.gateway), str(back.gateway), ""
    )
    front.disconnect(a)
    assert default_route().startswith(f"default via {back.gateway} dev eth2")
    back.disconnect(a)
    assert default_route() == ""  # an internal network gives no way out


def test_publishing_on_an_address_the_host_lacks_is_refused(host):
    net = host.create_network("web")
    a = host.create_sandbox("a")
    with pytest.raises(cnm.InvalidArgumentError, match="10.1.2.3"):
        net.connect(a, ports=["10.1.2.3:8080:80"])
    assert net.endpoints == [] and a.endpoints == []
    net.connect(a, ports=[f"{host.address.ip}:8080:80"])


def test_names_that_look_like_cnms_own_do_not_collide():
    with cnm.Host.isolated("outside") as host:
        host.create_sandbox("a")
    with cnm.Host.isolated("sb-a") as host:
        host.create_sandbox("a")


def test_a_bridge_name_in_use_fails_without_touching_the_other_link(host):
    first = host.create_network("first")
    before = {link.name: link.alias for link in host._services.rtnl.links()}
    for taken in ("eth0", first.interface):
        with pytest.raises(cnm.ConflictError, match=f"network 'second': bridge name '{taken}' is already taken") as info:
            host.create_network("second", options={"com.docker.network.bridge.name": taken})
        assert isinstance(info.value, cnm.KernelError) and info.value.errno == errno.EEXIST
    assert {link.name: link.alias for link in host._services.rtnl.links()} == before


def test_a_bridge_name_taken_after_the_look_up_is_still_a_conflict(host, monkeypatch):
    # As if another process made the link between cnm's look-up and its creation.
    monkeypatch.setattr(host._services.rtnl, "link_index", lambda name: None)
    before = {link.name: link.alias for link in host._services.rtnl.links()}
    with pytest.raises(cnm.InterfaceExistsError, match="network 'second': bridge name 'eth0'") as info:
        host.create_network("second", options={"com.docker.network.bridge.name": "eth0"})
    assert isinstance(info.value.__cause__, cnm.KernelError) and info.value.__cause__.errno == errno.EEXIST
    assert {link.name: link.alias for link in host._services.rtnl.links()} == before and host.networks[2:] == []


@pytest.mark.parametrize("bad", ["br:0", "br 0", "..", "x" * 16, "é" * 8, "br\t0", "br\x00"])
def test_invalid_bridge_names(host, bad):
    with pytest.raises(cnm.InvalidArgumentError, match="bridge name"):
        host.create_network("web", options={"com.docker.network.bridge.name": bad})


def _ip_details(namespace_path: str, *args: str) -> str:
    argv = ["nsenter", f"--net={namespace_path}", "ip", "-d", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def test_bridges_have_multicast_snooping_off_unless_asked(host):
    plain = host.create_network("plain")
    snooping = host.create_network("snooping", options={"cnm.bridge.multicast_snooping": "true"})
    assert "mcast_snooping 0 " in _ip_details(host.namespace.path, "link", "show", plain.interface)
    assert "mcast_snooping 1 " in _ip_details(host.namespace.path, "link", "show", snooping.interface)


def test_interfaces_get_no_ipv6_addresses_and_one_queue_each_way(host):
    net = host.create_network("web")
    a = host.create_sandbox("a")
    net.connect(a)
    (b,) = host.create_sandboxes(["b"], network=net)
    for sandbox in (a, b):
        assert sandbox.run(["ip", "-6", "-o", "addr", "show", "dev", "eth0"], capture_output=True, text=True, check=True).stdout == ""
        assert "numtxqueues 1 numrxqueues 1 " in _ip_details(sandbox.namespace.path, "link", "show", "eth0")
    host_ends = _ip_details(host.namespace.path, "-o", "link", "show", "type", "veth")
    assert host_ends.count("numtxqueues 1 numrxqueues 1 ") == 2 + 1  # and the uplink's
    assert "inet6" not in _ip_details(host.namespace.path, "-6", "addr", "show", "master", net.interface)
    # IPv4 is unaffected: the sandboxes reach each other.
    with Server(b, 7000):
        assert tcp_hello(a, b.address(net).ip, 7000) == b"hello"


def test_a_taken_host_token_is_drawn_again(monkeypatch):
    from cnm.owner import OwnerRecord

    real_claim = OwnerRecord.claim.__func__
    refused = []

    def taken_once(cls, token, *args):
        if not refused:
            refused.append(token)
            raise cnm.ConflictError(f"host token {token!r} is already owned")
        return real_claim(cls, token, *args)

    monkeypatch.setattr(OwnerRecord, "claim", classmethod(taken_once))
    with cnm.Host.isolated() as made:
        assert refused and made.token != refused[0]
