"""Network modes (Docker's ``--network``): host, none, container:NAME, a network; the predefined networks.

Each mode is proved with traffic where it has any (a server in a host-mode
sandbox reached from the outside without publishing; two sharers talking
over 127.0.0.1; a none-mode sandbox reaching nothing), with what must be
refused, with inspect as Docker shows it, and with nothing left behind.
"""

from __future__ import annotations

import os

import pytest

import cnm
from cnm.kernel import Rtnl
from tests.integration.test_all_or_nothing import _host_state, _sweep
from tests.integration.traffic import REFUSED_TIMEOUT, Server, tcp_hello
from tests.kernelstate import diff


def _links(sandbox: cnm.Sandbox) -> list[str]:
    with Rtnl(sandbox.namespace) as rtnl:
        return sorted(link.name for link in rtnl.links())


# ---- the predefined networks ---------------------------------------------------------


def test_every_host_has_the_networks_host_and_none(host):
    """As ``docker network ls`` on a fresh daemon: host (driver host) and none (driver null)."""
    assert [(n.name, n.inspect()["Driver"]) for n in host.networks] == [("host", "host"), ("none", "null")]
    for network in host.networks:
        view = network.inspect()
        assert view["Containers"] == {} and view["IPAM"]["Config"] == []
        assert view["EnableIPv4"] is True and view["EnableIPv6"] is False
        assert view["Internal"] is False and view["Scope"] == "local"
    assert host.network("host") is host.networks[0]


def test_the_predefined_networks_cannot_be_made_again_used_by_connect_or_deleted(host):
    before = _host_state(host)
    sandbox = host.create_sandbox("a")
    with pytest.raises(cnm.ConflictError, match="'host': a network with that name already exists"):
        host.create_network("host")
    with pytest.raises(cnm.InvalidArgumentError, match="driver 'null' is only for the predefined network 'none'"):
        host.create_network("other", driver="null")
    with pytest.raises(cnm.InvalidArgumentError, match="predefined and cannot be connected to"):
        host.network("host").connect(sandbox)
    with pytest.raises(cnm.InvalidArgumentError, match="predefined and cannot have endpoints made"):
        host.network("none").create_endpoint("e")
    with pytest.raises(cnm.InvalidArgumentError, match="predefined and cannot be deleted"):
        host.network("none").delete(force=True)
    sandbox.delete()
    assert [n.name for n in host.networks] == ["host", "none"]
    assert not diff(before, _host_state(host))


# ---- host ---------------------------------------------------------------------------


def test_host_mode_is_the_hosts_own_namespace_reachable_without_publishing(host):
    net = host.create_network("web", subnet="10.60.0.0/24")
    s = host.create_sandbox("h", network_mode="host")
    assert s.network_mode == "host" and s.key == host.namespace.path
    assert _links(s) == _links(host)  # it sees the host's interfaces (uplink, bridge...)
    assert net.interface in _links(s)
    with Server(s, 8080) as server:
        assert tcp_hello(host.outside, host.address.ip, 8080) == b"hello"
    assert server.peers[0][0] == str(host.outside_address.ip)  # straight in, no NAT
    # inspect, as Docker shows a container on the host network
    (endpoint,) = host.network("host").endpoints
    assert s.inspect()["SandboxKey"] == host.namespace.path
    settings = s.inspect()["Networks"]["host"]
    assert settings["EndpointID"] == endpoint.id and settings["NetworkID"] == host.network("host").id
    assert (settings["IPAddress"], settings["Gateway"], settings["MacAddress"], settings["IPPrefixLen"]) == ("", "", "", 0)
    assert host.network("host").inspect()["Containers"] == {
        s.id: {"Name": "h", "EndpointID": endpoint.id, "MacAddress": "", "IPv4Address": "", "IPv6Address": ""}
    }


def test_host_mode_refuses_ports_and_other_networks_and_its_deletion_leaves_the_host(host):
    net = host.create_network("web", subnet="10.61.0.0/24")
    with pytest.raises(cnm.InvalidArgumentError, match="ip, ip6, mac and ports need a network .*network mode host"):
        host.create_sandbox("p", network_mode="host", ports=["8080:80"])
    assert [s.name for s in host.sandboxes] == []
    s = host.create_sandbox("h", network_mode="host")
    before = _host_state(host)
    with pytest.raises(cnm.ConflictError, match="sandbox 'h' is in network mode host: it cannot join network 'web'"):
        net.connect(s, ports=["8080:80"])
    endpoint = net.create_endpoint("e")
    with pytest.raises(cnm.ConflictError, match="network mode host"):
        endpoint.join(s)
    assert not diff(before, _host_state(host))
    assert [e.name for e in net.endpoints] == ["e"] and endpoint.sandbox is None
    s.delete()
    s.delete()  # idempotent
    assert os.path.exists(host.namespace.path) and not diff(before, _host_state(host))
    assert host.network("host").endpoints == [] and host.sandboxes == []
    # The host still works: a sandbox on the bridge is reachable through a published port.
    web = host.create_sandbox("w", network_mode=net, ports=["8080:80"])
    with Server(web, 80):
        assert tcp_hello(host.outside, host.address.ip, 8080) == b"hello"


# ---- none ---------------------------------------------------------------------------


def test_none_mode_has_loopback_only_and_reaches_nothing(host):
    host.create_network("web", subnet="10.62.0.0/24")
    s = host.create_sandbox("n", network_mode="none")
    assert s.network_mode == "none" and s.key != host.namespace.path
    assert _links(s) == ["lo"]
    with Rtnl(s.namespace) as rtnl:
        assert rtnl.routes(4) == [] and rtnl.routes(6) == []
    with Server(s, 7000):
        assert tcp_hello(s, "127.0.0.1", 7000) == b"hello"
    for address in (host.address.ip, host.outside_address.ip):
        with pytest.raises(OSError) as caught:
            tcp_hello(s, address, 80, timeout=REFUSED_TIMEOUT)
        assert caught.value.errno == 101  # ENETUNREACH: it has no route anywhere
    settings = s.inspect()["Networks"]["none"]
    assert (settings["IPAddress"], settings["Gateway"], settings["MacAddress"]) == ("", "", "")
    assert list(host.network("none").inspect()["Containers"]) == [s.id]
    with pytest.raises(cnm.ConflictError, match="network mode none: it cannot join"):
        host.network("web").connect(s)
    key = s.key
    s.delete()
    assert not os.path.exists(key) and host.network("none").endpoints == []


# ---- container:NAME -------------------------------------------------------------------


def test_sharers_see_the_same_interfaces_and_talk_over_loopback(host):
    net = host.create_network("web", subnet="10.63.0.0/24")
    pod = host.create_sandbox("pod", network_mode=net, ports=["8080:80"])
    app = host.create_sandbox("app", network_mode="container:pod")
    side = host.create_sandbox("side", network_mode=pod)  # a Sandbox works too
    assert app.network_mode == side.network_mode == "container:pod"
    assert app.key == side.key == pod.key
    assert _links(app) == _links(pod) == ["eth0", "lo"]
    with Server(app, 9000, address="127.0.0.1"):
        assert tcp_hello(side, "127.0.0.1", 9000) == b"hello"
    # A server of a sharer is the pod's: reached through the pod's published port.
    with Server(app, 80):
        assert tcp_hello(host.outside, host.address.ip, 8080) == b"hello"
    assert app.inspect() == {"SandboxID": "", "SandboxKey": "", "Ports": {}, "Networks": {}}
    assert pod.inspect()["Networks"]["web"]["IPAddress"] == "10.63.0.2"
    with pytest.raises(cnm.ConflictError, match="shares the namespace of sandbox 'pod'"):
        net.connect(app)
    with pytest.raises(cnm.InvalidArgumentError, match="shares the namespace of 'pod'; name that one instead"):
        host.create_sandbox("x", network_mode="container:app")
    with pytest.raises(cnm.NotFoundError, match="no sandbox named 'nope' to share"):
        host.create_sandbox("x", network_mode="container:nope")


def test_deleting_a_sharer_leaves_the_namespace_and_the_owner_is_refused_while_shared(host):
    net = host.create_network("web", subnet="10.64.0.0/24")
    pod = host.create_sandbox("pod", network_mode=net)
    app = host.create_sandbox("app", network_mode="container:pod")
    side = host.create_sandbox("side", network_mode="container:pod")
    before = _host_state(host, pod)
    app.delete()
    assert os.path.exists(pod.key) and _links(pod) == ["eth0", "lo"]
    assert not diff(before, _host_state(host, pod))
    with pytest.raises(cnm.StateError, match="sandboxes 'side' share its namespace"):
        pod.delete()
    with pytest.raises(cnm.StateError, match="'side' share its namespace"):
        host.delete_sandboxes([pod])
    assert not diff(before, _host_state(host, pod))
    assert [s.name for s in host.sandboxes] == ["pod", "side"]
    key = pod.key
    pod.delete(sharers=True)
    assert not os.path.exists(key) and host.sandboxes == [] and net.endpoints == []
    with pytest.raises(cnm.ClosedError):
        side.run(["true"])


def test_delete_sandboxes_takes_an_owner_with_its_sharers(host):
    pod = host.create_sandbox("pod")
    app = host.create_sandbox("app", network_mode="container:pod")
    host.delete_sandboxes([pod, app])  # the owner first in the list: sharers still go first
    assert host.sandboxes == [] and not os.path.exists(pod.key)


# ---- a network, and rollback -----------------------------------------------------------


def test_network_mode_a_network_connects_in_the_same_call(host):
    net = host.create_network("web", subnet="10.65.0.0/24")
    by_name = host.create_sandbox("a", network_mode="web", ip="10.65.0.9", ports=["8080:80"])
    assert by_name.network_mode == "web" and str(by_name.address(net).ip) == "10.65.0.9"
    with Server(by_name, 80):
        assert tcp_hello(host.outside, host.address.ip, 8080) == b"hello"
    before = _host_state(host)
    with pytest.raises(cnm.ConflictError, match="8080"):
        host.create_sandbox("b", network_mode=net, ports=["8080:80"])
    with pytest.raises(cnm.NotFoundError, match="no network named 'nope'"):
        host.create_sandbox("b", network_mode="nope")
    assert not diff(before, _host_state(host)) and [s.name for s in host.sandboxes] == ["a"]


@pytest.mark.parametrize("after", [False, True], ids=["refused", "failed-after"])
@pytest.mark.parametrize("mode", ["none", "host", "container", "network"])
def test_creating_a_sandbox_in_any_mode_is_all_or_nothing(host, monkeypatch, after, mode):
    net = host.create_network("web", subnet="10.66.0.0/24")
    host.create_sandbox("first", network_mode=net, ports=["30000:80"])  # the firewall table exists
    value = {"none": "none", "host": "host", "container": "container:first", "network": net}[mode]
    kwargs = {"ports": ["8080:80"]} if mode == "network" else {}
    steps = _sweep(host, monkeypatch, lambda: host.create_sandbox("s", network_mode=value, **kwargs), after)
    # host and container modes change nothing in the kernel; the others at least the namespace and lo
    assert (steps == 0) if mode in ("host", "container") else (steps >= 2)
    assert [s.name for s in host.sandboxes] == ["first", "s"]
    assert host.sandbox("s").network_mode == (value if isinstance(value, str) else "web")


def test_closing_a_host_with_every_mode_leaves_nothing():
    host = cnm.Host.isolated()
    try:
        net = host.create_network("web", subnet="10.67.0.0/24")
        host.create_sandbox("pod", network_mode=net, ports=["8080:80"])
        host.create_sandbox("app", network_mode="container:pod")
        host.create_sandbox("h", network_mode="host")
        host.create_sandbox("n", network_mode="none")
        paths = [host.namespace.path, *(s.key for s in host.sandboxes)]
    finally:
        host.close()
    assert not any(os.path.exists(p) for p in paths)


def test_the_endpoints_of_predefined_networks_go_only_with_their_sandbox(host):
    """Found in review: a host- or none-mode sandbox could be detached from its network and never come back."""
    n = host.create_sandbox("n", network_mode="none")
    plain = host.create_sandbox("plain")
    (endpoint,) = host.network("none").endpoints
    for call in (endpoint.leave, endpoint.delete, lambda: endpoint.join(plain), lambda: host.network("none").disconnect(n)):
        with pytest.raises(cnm.InvalidArgumentError, match="network 'none' is predefined"):
            call()
    assert list(n.inspect()["Networks"]) == ["none"] and host.network("none").endpoints == [endpoint]
    before = _host_state(host)
    with pytest.raises(cnm.InvalidArgumentError, match="network 'host' is predefined and cannot have endpoints made"):
        host.create_sandboxes(["b1", "b2"], network=host.network("host"))
    assert not diff(before, _host_state(host)) and [s.name for s in host.sandboxes] == ["n", "plain"]
    n.delete()
    assert host.network("none").endpoints == []
    endpoint.delete()  # gone with its sandbox: nothing left to do


def test_modes_naming_what_is_gone_or_nothing_are_refused(host):
    net = host.create_network("web", subnet="10.68.0.0/24")
    old = host.create_sandbox("old")
    for value, error in [("", cnm.InvalidArgumentError), ("container:", cnm.InvalidArgumentError)]:
        with pytest.raises(error, match="names nothing"):
            host.create_sandbox("x", network_mode=value)
    old.delete()
    with pytest.raises(cnm.ClosedError):
        host.create_sandbox("x", network_mode=old)
    net.delete()
    with pytest.raises(cnm.ClosedError):
        host.create_sandbox("x", network_mode=net)
    assert host.sandboxes == []


def test_a_pod_used_as_a_context_manager_takes_its_sharers(host):
    with host.create_sandbox("pod") as pod:
        host.create_sandbox("app", network_mode=pod)
    assert host.sandboxes == [] and not os.path.exists(pod.key)


def test_bulk_sandboxes_have_the_network_as_their_mode_and_predefined_networks_outlive_nothing():
    host = cnm.Host.isolated()
    try:
        net = host.create_network("web", subnet="10.69.0.0/24")
        (made,) = host.create_sandboxes(["b"], network=net)
        assert made.network_mode == "web"
        none = host.network("none")
    finally:
        host.close()
    for network in (net, none):
        network.delete()  # after close, deleting does nothing, predefined or not
