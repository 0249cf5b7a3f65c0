"""The bulk API: Host.create_sandboxes and Host.delete_sandboxes.

Sandboxes made in one call behave exactly like those made one by one
(addresses, routes, published ports, traffic), the call is all or nothing
however many builder threads were at work when a step failed, bad input is
refused before any kernel change, and deleting in bulk leaves the host as it
was.
"""

from __future__ import annotations

import errno

import pytest

import cnm
from cnm.kernel import Rtnl
from tests.integration.test_all_or_nothing import _host_state, _sweep
from tests.integration.traffic import Server, tcp_hello
from tests.kernelstate import diff, snapshot


def _requests(count: int, first_port: int = 20000) -> list[cnm.SandboxRequest]:
    return [cnm.SandboxRequest(f"s{i}", ports=[f"{first_port + i}:80"]) for i in range(count)]


def _host_veths(host: cnm.Host) -> list[str]:
    with Rtnl(host.namespace) as rtnl:
        return sorted(link.name for link in rtnl.links() if link.kind == "veth" and link.master)


def test_bulk_sandboxes_are_connected_like_single_ones(host):
    net = host.create_network("web", subnet="10.40.0.0/24")
    sandboxes = host.create_sandboxes(_requests(12), network=net)
    assert [s.name for s in sandboxes] == [f"s{i}" for i in range(12)]
    assert [s.name for s in host.sandboxes] == [f"s{i}" for i in range(12)]
    # Addresses in request order, as a loop of connect() would give them.
    assert [str(s.address(net).ip) for s in sandboxes] == [f"10.40.0.{i + 2}" for i in range(12)]
    assert len(_host_veths(host)) == 12
    last = sandboxes[-1]
    assert last.inspect()["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "20011"}]}
    routes = last.run(["ip", "-o", "route"], capture_output=True, text=True, check=True).stdout
    assert "default via 10.40.0.1 dev eth0" in routes
    # Between two bulk sandboxes, and from outside through a published port.
    with Server(sandboxes[3], 7000) as server:
        assert tcp_hello(sandboxes[8], sandboxes[3].address(net).ip, 7000) == b"hello"
    assert server.peers[0][0] == str(sandboxes[8].address(net).ip)
    with Server(last, 80) as server:
        assert tcp_hello(host.outside, host.address.ip, 20011) == b"hello"
    assert server.peers[0][0] == str(host.outside_address.ip)


def test_bulk_requests_take_static_addresses_macs_and_names(host):
    net = host.create_network("web", subnet="10.41.0.0/24")
    a, b = host.create_sandboxes(
        ["plain", cnm.SandboxRequest("fixed", ip="10.41.0.50", mac="02:00:00:00:00:50", ports=["9000:90/udp"])],
        network=net,
    )
    assert str(a.address(net).ip) == "10.41.0.2"
    assert str(b.address(net).ip) == "10.41.0.50"
    assert b.endpoints[0].mac == "02:00:00:00:00:50"
    assert b.inspect()["Ports"] == {"90/udp": [{"HostIp": "0.0.0.0", "HostPort": "9000"}]}
    # Without a network, sandboxes only (lo up, nothing else).
    (alone,) = host.create_sandboxes(["alone"])
    assert alone.endpoints == []
    links = alone.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]


@pytest.mark.parametrize(
    "requests, error, words",
    [
        # Made inside the call: a SandboxRequest checks its own fields when made.
        (lambda: ["a", "a"], cnm.ConflictError, "already exists"),
        (lambda: ["ok", "bad name!"], cnm.InvalidArgumentError, "bad name!"),
        (lambda: [cnm.SandboxRequest("a", ports=["99999:80"])], cnm.InvalidArgumentError, "99999"),
        (lambda: [cnm.SandboxRequest("a", ip="10.99.0.2")], cnm.InvalidArgumentError, "10.99.0.2"),
        (
            lambda: [cnm.SandboxRequest("a", ports=["20000:80"]), cnm.SandboxRequest("b", ports=["20000:81"])],
            cnm.ConflictError,
            "20000",
        ),
    ],
)
def test_bad_requests_are_refused_before_any_change(host, requests, error, words):
    net = host.create_network("web", subnet="10.42.0.0/24")
    before = _host_state(host)
    with pytest.raises(error, match=words.replace("!", "\\!")):
        host.create_sandboxes(requests(), network=net)
    assert not diff(before, _host_state(host))
    assert host.sandboxes == [] and net.endpoints == []
    # Everything was given back: the first address is handed out again.
    (s,) = host.create_sandboxes([cnm.SandboxRequest("again", ports=["20000:80"])], network=net)
    assert str(s.address(net).ip) == "10.42.0.2"


def test_a_name_already_taken_on_the_host_is_refused(host):
    host.create_sandbox("taken")
    with pytest.raises(cnm.ConflictError, match="taken"):
        host.create_sandboxes(["free", "taken"])
    assert [s.name for s in host.sandboxes] == ["taken"]


@pytest.mark.parametrize("after", [False, True], ids=["refused", "failed-after"])
def test_create_sandboxes_is_all_or_nothing(host, monkeypatch, after):
    """A failure at any kernel step of any of the sandboxes, whichever builder
    thread hit it, leaves the host namespace and the list of namespaces as
    they were (so no sandbox of the call is left)."""
    net = host.create_network("web", subnet="10.43.0.0/24")
    host.create_sandboxes([cnm.SandboxRequest("first", ports=["30000:80"])], network=net)  # the firewall table exists
    steps = _sweep(host, monkeypatch, lambda: host.create_sandboxes(_requests(4), network=net), after)
    assert steps >= 4 * 4  # per sandbox: namespace, lo, veth, its settings, the sandbox end; then the ports
    assert [s.name for s in host.sandboxes] == ["first", "s0", "s1", "s2", "s3"]
    # Every failed attempt gave its addresses back.
    assert [str(s.address(net).ip) for s in host.sandboxes] == [f"10.43.0.{i}" for i in range(2, 7)]


@pytest.mark.parametrize("after", [False, True], ids=["refused", "failed-after"])
def test_ports_published_in_several_batches_are_all_or_nothing(host, monkeypatch, after):
    """The bulk path adds port forwards every PUBLISH_BATCH joins while it
    goes on plumbing: with batches of 2, five sandboxes take three firewall
    transactions, all of which are there when it succeeds and none of which
    is left when any later step fails (the sweep fails each in turn)."""
    from cnm.api import bulk
    from cnm.firewall.nftables import NftablesFirewall

    net = host.create_network("web", subnet="10.45.0.0/24")
    host.create_sandboxes([cnm.SandboxRequest("first", ports=["30000:80"])], network=net)  # the firewall table exists
    monkeypatch.setattr(bulk, "PUBLISH_BATCH", 2)
    commits: list[str] = []
    real_commit = NftablesFirewall._commit
    monkeypatch.setattr(NftablesFirewall, "_commit", lambda self, *a, **k: commits.append(a[1]) or real_commit(self, *a, **k))
    made = host.create_sandboxes(_requests(5), network=net)
    assert len(commits) == 3
    assert _published_elements(host) == 6
    with Server(made[4], 80):
        assert tcp_hello(host.outside, host.address.ip, 20004) == b"hello"
    host.delete_sandboxes(made)
    monkeypatch.setattr(NftablesFirewall, "_commit", real_commit)
    _sweep(host, monkeypatch, lambda: host.create_sandboxes(_requests(5), network=net), after)
    assert _published_elements(host) == 6
    assert [s.name for s in host.sandboxes] == ["first", "s0", "s1", "s2", "s3", "s4"]


def test_delete_sandboxes_leaves_the_host_as_it_was(host):
    net = host.create_network("web", subnet="10.44.0.0/24")
    keep = host.create_sandbox("keep")
    net.connect(keep, ports=["8080:80"])
    before = _host_state(host)
    made = host.create_sandboxes(_requests(20), network=net)
    assert len(_host_veths(host)) == 21
    host.delete_sandboxes(made)
    assert not diff(before, _host_state(host))
    assert [s.name for s in host.sandboxes] == ["keep"]
    host.delete_sandboxes(made)  # idempotent
    # Addresses and host ports were given back.
    (again,) = host.create_sandboxes([cnm.SandboxRequest("again", ports=["20000:80"])], network=net)
    assert str(again.address(net).ip) == "10.44.0.3"
    with pytest.raises(cnm.ClosedError):
        made[0].run(["true"])


def _published_elements(host: cnm.Host) -> int:
    return snapshot(host.namespace.name)["nftables"].count(" : 10.45.0.")


def test_delete_sandboxes_withdraws_all_ports_in_one_transaction(host, monkeypatch):
    from cnm.firewall.nftables import NftablesFirewall

    net = host.create_network("web", subnet="10.45.0.0/24")
    keep = host.create_sandbox("keep")
    net.connect(keep, ports=["8080:80"])
    made = host.create_sandboxes(_requests(6), network=net)
    assert _published_elements(host) == 7
    commits = []
    real_commit = NftablesFirewall._commit
    monkeypatch.setattr(NftablesFirewall, "_commit", lambda self, *a, **k: commits.append(a[1]) or real_commit(self, *a, **k))
    host.delete_sandboxes(made)
    assert len(commits) == 1 and "6 removals" in commits[0]
    assert _published_elements(host) == 1  # keep's is still there
    with Server(keep, 80) as server:
        assert tcp_hello(host.outside, host.address.ip, 8080) == b"hello"


def test_if_the_one_transaction_is_refused_each_sandbox_withdraws_its_own(host, monkeypatch):
    from cnm.firewall.nftables import NftablesFirewall

    net = host.create_network("web", subnet="10.45.0.0/24")
    keep = host.create_sandbox("keep")
    net.connect(keep, ports=["8080:80"])
    made = host.create_sandboxes(_requests(6), network=net)
    real_commit = NftablesFirewall._commit

    def refuse_batches(self, batch, what, *args, **kwargs):
        if "removals" in what:
            raise cnm.KernelError(errno.EBUSY, f"{what}: injected refusal")
        return real_commit(self, batch, what, *args, **kwargs)

    monkeypatch.setattr(NftablesFirewall, "_commit", refuse_batches)
    host.delete_sandboxes(made)  # no error: the steps ran one by one
    assert _published_elements(host) == 1
    assert [s.name for s in host.sandboxes] == ["keep"]


@pytest.mark.parametrize("where", ["namespace thread", "calling thread"])
def test_an_interrupted_create_sandboxes_leaves_nothing(host, monkeypatch, where):
    """Ctrl-C while sandboxes are half built, in either thread: both threads
    stop, everything of the call is rolled back, and the interruption propagates."""
    from cnm.netns import Namespace

    net = host.create_network("web", subnet="10.46.0.0/24")
    before = _host_state(host)
    calls = []

    def interrupt_third(original):
        def step(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return original(*args, **kwargs)

        return step

    if where == "namespace thread":
        monkeypatch.setattr(Namespace, "create", classmethod(interrupt_third(Namespace.create.__func__)))
    else:
        monkeypatch.setattr(Rtnl, "configure_link", interrupt_third(Rtnl.configure_link))
    with pytest.raises(KeyboardInterrupt):
        host.create_sandboxes(_requests(8), network=net)
    assert len(calls) == 3  # it stopped at the interruption
    monkeypatch.undo()
    assert not diff(before, _host_state(host))
    assert host.sandboxes == [] and net.endpoints == []
    (again,) = host.create_sandboxes(_requests(1), network=net)
    assert str(again.address(net).ip) == "10.46.0.2"
