"""The orchestration of cnm.api on an in-memory kernel (tests/fakekernel.py): no root needed.

What is tested here is cnm's own logic: the order of kernel changes and of
their rollback, the default-route election per family, and the books
(addresses and names held and given back). The real-kernel tests in
tests/integration check the same operations against Linux.
"""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

import cnm
from tests.fakekernel import FakeKernel, Injected


@pytest.fixture
def kernel():
    return FakeKernel()


@pytest.fixture
def host(kernel):
    h = cnm.Host.isolated(firewall="none", kernel=kernel)
    yield h
    h.close()
    assert kernel.namespaces == {}, "closing the host leaves no namespace"
    assert kernel.open_sockets == 0, "closing the host closes every socket"


def _ns(kernel, sandbox):
    return next(ns for ns in kernel.namespaces.values() if ns.path == sandbox.key)


def _default_routes(kernel, sandbox):
    ns = _ns(kernel, sandbox)
    return sorted((str(via), ns.links[oif].name) for dest, via, oif in ns.routes if dest.prefixlen == 0)


def test_an_isolated_host_is_built_and_removed_entirely(kernel):
    host = cnm.Host.isolated(firewall="none", kernel=kernel)
    names = sorted(ns.name for ns in kernel.namespaces.values())
    assert [n.split("-", 2)[2] for n in names] == ["host", "outside"]
    host_ns = next(ns for ns in kernel.namespaces.values() if ns.name.endswith("-host"))
    assert [l.name for l in host_ns.links.values()] == ["lo", "eth0"]
    assert host_ns.sysctls["net/ipv4/ip_forward"] == "1"
    host.close()
    assert kernel.namespaces == {} and kernel.mount_dirs == set() and kernel.owners == set()


def test_connect_builds_bridge_veth_address_and_default_route(host, kernel):
    net = host.create_network("web", subnet="10.1.0.0/24")
    a = host.create_sandbox("a")
    endpoint = net.connect(a)
    host_ns = next(ns for ns in kernel.namespaces.values() if ns.name.endswith("-host"))
    bridge = next(l for l in host_ns.links.values() if l.kind == "bridge")
    assert (bridge.index, ip_network("10.1.0.1/24", strict=False)) in [(i, a.network) for i, a in host_ns.addresses]
    veth = next(l for l in host_ns.links.values() if l.kind == "veth" and l.master == bridge.index)
    assert veth.alias == f"cnm:{host.token}:endpoint/a"
    assert str(endpoint.address) == "10.1.0.2/24"
    sandbox_ns = _ns(kernel, a)
    assert [str(a) for _, a in sandbox_ns.addresses] == ["10.1.0.2/24"]
    assert _default_routes(kernel, a) == [("10.1.0.1", "eth0")]


def test_the_default_route_moves_to_the_next_network_when_its_giver_leaves(host, kernel):
    first = host.create_network("first", subnet="10.1.0.0/24")
    second = host.create_network("second", subnet="10.2.0.0/24")
    a = host.create_sandbox("a")
    first.connect(a)
    second.connect(a)
    assert _default_routes(kernel, a) == [("10.1.0.1", "eth0")], "the first network gives it"
    first.disconnect(a)
    assert _default_routes(kernel, a) == [("10.2.0.1", "eth1")], "then the next one"
    first.connect(a)
    assert _default_routes(kernel, a) == [("10.2.0.1", "eth1")], "a new joiner does not take it back"


def test_an_internal_network_gives_no_default_route(host, kernel):
    inside = host.create_network("inside", subnet="10.1.0.0/24", internal=True)
    outside = host.create_network("outside", subnet="10.2.0.0/24")
    a = host.create_sandbox("a")
    inside.connect(a)
    assert _default_routes(kernel, a) == []
    outside.connect(a)
    assert _default_routes(kernel, a) == [("10.2.0.1", "eth1")]
    assert a.inspect()["Networks"]["inside"]["Gateway"] == ""


def _sweep(kernel, operation) -> int:
    """Fail the k-th change of *operation* for k = 1, 2, ... until it succeeds:
    each failure must leave the fake kernel exactly as it was."""
    k = 1
    while True:
        before = kernel.snapshot()
        kernel.count, kernel.fail_at = 0, k
        try:
            operation()
        except Injected:
            kernel.fail_at = None
            assert kernel.snapshot() == before, f"change {k} failed: the rollback left something"
        else:
            kernel.fail_at = None
            return k
        k += 1


def test_connect_rolls_back_at_every_change(host, kernel):
    net = host.create_network("web", subnet="10.1.0.0/24")
    a = host.create_sandbox("a")
    steps = _sweep(kernel, lambda: net.connect(a, ports=["8080:80"]))
    assert steps > 2  # the veth, the sandbox end: each failed once
    assert [e.name for e in net.endpoints] == ["a"] and str(a.address(net)) == "10.1.0.2/24", (
        "the failed attempts gave back the address"
    )


def test_create_network_rolls_back_at_every_change(host, kernel):
    steps = _sweep(kernel, lambda: host.create_network("web", subnet="10.1.0.0/24"))
    assert steps > 2 and [n.name for n in host.networks] == ["host", "none", "web"]


def test_bulk_creation_rolls_back_at_every_change(host, kernel):
    net = host.create_network("web", subnet="10.1.0.0/24")
    steps = _sweep(kernel, lambda: host.create_sandboxes(["a", "b", "c"], network=net))
    assert steps > 6
    assert sorted(s.name for s in host.sandboxes) == ["a", "b", "c"]
    assert sorted(str(e.address) for e in net.endpoints) == ["10.1.0.2/24", "10.1.0.3/24", "10.1.0.4/24"]


def test_a_deleted_sandboxs_address_is_held_until_its_veth_is_gone(host, kernel):
    net = host.create_network("web", subnet="10.1.0.0/29")
    a = host.create_sandbox("a")
    held = net.connect(a).ip
    a.delete()
    assert kernel.dying, "the host end of the veth goes after the namespace, later"
    b = host.create_sandbox("a")  # the name is free at once
    assert net.connect(b).ip != held, "the address is not handed out while its old veth is there"
    host.settle()
    assert not kernel.dying
    c = host.create_sandbox("c")
    assert net.connect(c).ip == held, "and is handed out again once it is gone"


def test_a_failed_teardown_step_is_retried_by_the_next_delete(host, kernel):
    net = host.create_network("web", subnet="10.1.0.0/24")
    a = host.create_sandbox("a")
    held = net.connect(a).ip
    ns = _ns(kernel, a)
    kernel.count, kernel.fail_at = 0, 1  # the first change of the delete: unmounting the namespace
    with pytest.raises(cnm.TeardownError) as caught:
        a.delete()
    kernel.fail_at = None
    assert "injected: delete namespace" in str(caught.value.exceptions[0])
    assert ns.alive and host.sandbox("a") is a, "a sandbox whose namespace is still there stays known"
    host_ns = next(n for n in kernel.namespaces.values() if n.name.endswith("-host"))
    assert any(l.kind == "veth" and l.master for l in host_ns.links.values()), "its veth is still there"
    a.delete()
    assert not ns.alive and host.sandboxes == []
    assert not any(l.kind == "veth" and l.master for l in host_ns.links.values()), "the retry deleted the veth too"
    b = host.create_sandbox("b")
    assert net.connect(b).ip == held, "and gave the address back"


def test_each_family_elects_its_default_route_on_its_own(host, kernel):
    dual = host.create_network("dual", ipv6=True, subnet=["10.1.0.0/24", "fd00:1::/64"])
    four = host.create_network("four", subnet="10.2.0.0/24")
    six = host.create_network("six", ipv4=False, ipv6=True, subnet="fd00:3::/64")
    a = host.create_sandbox("a")
    four.connect(a)
    six.connect(a)
    assert _default_routes(kernel, a) == [("10.2.0.1", "eth0"), ("fd00:3::1", "eth1")], "the first of each family"
    dual.connect(a)
    assert _default_routes(kernel, a) == [("10.2.0.1", "eth0"), ("fd00:3::1", "eth1")]
    six.disconnect(a)
    assert _default_routes(kernel, a) == [("10.2.0.1", "eth0"), ("fd00:1::1", "eth2")], "IPv6 moves, IPv4 stays"


def test_a_failed_reelection_of_one_family_does_not_stop_the_other(host, kernel):
    first = host.create_network("first", ipv6=True, subnet=["10.1.0.0/24", "fd00:1::/64"])
    second = host.create_network("second", ipv6=True, subnet=["10.2.0.0/24", "fd00:2::/64"])
    a = host.create_sandbox("a")
    first.connect(a)
    second.connect(a)
    kernel.fail_on = lambda verb, what: verb == "add route" and "0.0.0.0/0" in what
    with pytest.raises(cnm.TeardownError) as caught:
        first.disconnect(a)
    kernel.fail_on = None
    assert "injected: add route" in str(caught.value.exceptions[0])
    assert _default_routes(kernel, a) == [("fd00:2::1", "eth1")], "the IPv6 route was still given"


def test_the_host_sockets_are_listed_once_per_call_before_any_change(host, kernel):
    """One sock_diag look per connect and per bulk call (however many sandboxes),
    for the protocols published, IPv6's too for IPv4 (dual-stack sockets); none without ports."""
    from cnm.sock_diag import HostSocket

    net = host.create_network("web", subnet="10.1.0.0/16")
    net.connect(host.create_sandbox("plain"))
    assert kernel.socket_dumps == []
    host_path = next(ns.path for ns in kernel.namespaces.values() if ns.name.endswith("-host"))
    net.connect(host.create_sandbox("a"), ports=["8080:80", "53/udp"])
    assert kernel.socket_dumps == [(host_path, ("tcp", "udp"), (4, 6), (8080, 60999))]  # 53/udp gets an ephemeral port
    requests = [cnm.SandboxRequest(f"b{i}", ports=f"{9000 + i}:80") for i in range(300)]
    host.create_sandboxes(requests, network=net)
    assert kernel.socket_dumps[1:] == [(host_path, ("tcp",), (4, 6), (9000, 9299))]
    kernel.sockets[host_path] = [HostSocket("tcp", 4, ip_address("0.0.0.0"), 9500)]
    changes = kernel.count
    with pytest.raises(cnm.ConflictError, match="host port 9500/tcp is in use by a socket in the host's namespace"):
        host.create_sandboxes([cnm.SandboxRequest("c", ports="9499:80"), cnm.SandboxRequest("d", ports="9500:80")], network=net)
    assert kernel.count == changes, "refused before any change"


def test_a_driver_whose_networks_span_hosts_must_share_its_pools(kernel):
    from cnm.drivers import Capabilities
    from cnm.drivers.bridge import BridgeDriver

    class Spanning(BridgeDriver):
        name = "spanning"
        capabilities = Capabilities(families=frozenset({4}), spans_hosts=True)

    host = cnm.Host.isolated(firewall="none", kernel=kernel, drivers={"spanning": Spanning})
    try:
        changes = kernel.count
        with pytest.raises(cnm.InvalidArgumentError, match="driver 'spanning' spans hosts but has no share_pools"):
            host.create_network("x", "spanning", subnet="10.5.0.0/24")
        assert kernel.count == changes, "refused before any change"
        assert "x" not in [n.name for n in host.networks]
    finally:
        host.close()
