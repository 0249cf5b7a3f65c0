"""Behaviour 5: a failing operation leaves the kernel exactly as it was.

The fault injector (:class:`cnm.testing.FaultInjector`, which
:func:`cnm.testing.check_driver` uses too) makes the k-th kernel change of an operation fail, for
every k until the operation gets through, and compares the kernel state of the
host namespace (and the list of namespaces) before and after each attempt.
Kernel changes are: every netlink request that expects an acknowledgement
(``Netlink.transact``: rtnetlink and nftables alike), creating a namespace and
writing a sysctl. Two failure flavours are injected: the step is refused
before it reaches the kernel, and the step succeeds but reports a failure
afterwards (so its own effect must be undone too). The second flavour stands
for a netlink answer lost after the kernel acted, so it applies to netlink
exchanges; a namespace creation or a sysctl write cannot succeed and fail at
once, so for those both flavours refuse the step.
"""

from __future__ import annotations

import pytest

import cnm
from cnm.testing import FaultInjector, Injected
from tests.kernelstate import diff, namespaces, snapshot


def _host_state(host: cnm.Host, *sandboxes: cnm.Sandbox) -> dict[str, object]:
    """The host namespace's state, and that of each sandbox given."""
    state = snapshot(host.namespace.name)
    for sandbox in sandboxes:
        state.update({f"{sandbox.name}:{k}": v for k, v in snapshot(sandbox.namespace.path).items() if k != "netns"})
    return state


def _sweep(host, monkeypatch, operation, after: bool, sandboxes=()) -> int:
    """Run *operation* with a failure at step 1, 2, ... until it succeeds; return the step count.

    After each failure the host namespace (and the *sandboxes*' namespaces)
    must be exactly as before.
    """
    k = 1
    while True:
        before = _host_state(host, *sandboxes)
        with FaultInjector(k, after=after) as injector:
            try:
                operation()
            except cnm.CNMError as exc:
                assert injector.fired, f"step {k}: failed without the injected fault: {exc!r}"
                assert isinstance(exc.__cause__, Injected) or isinstance(exc, Injected) or _caused_by_injection(exc)
            except Injected:
                assert injector.fired
            else:
                assert not injector.fired, f"step {k}: the injected failure was swallowed"
                return k - 1
        changed = diff(before, _host_state(host, *sandboxes))
        assert not changed, f"failure at kernel step {k} ({'after' if after else 'before'} it) left changes:\n{changed}"
        k += 1
        assert k < 50, "the operation never completed"


def _caused_by_injection(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, Injected):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@pytest.mark.parametrize("after", [False, True], ids=["refused", "failed-after"])
def test_create_network_is_all_or_nothing(host, monkeypatch, after):
    host.create_network("first")  # so the firewall table exists, and again without it below
    steps = _sweep(host, monkeypatch, lambda: host.create_network("web", subnet="10.10.0.0/24"), after)
    assert steps >= 3  # bridge, address, sysctl, firewall at least
    assert [n.name for n in host.networks] == ["host", "none", "first", "web"]


@pytest.mark.parametrize("after", [False, True], ids=["refused", "failed-after"])
def test_first_network_is_all_or_nothing(host, monkeypatch, after):
    _sweep(host, monkeypatch, lambda: host.create_network("web"), after)
    assert host.network("web").subnet.with_prefixlen == "172.17.0.0/16"


@pytest.mark.parametrize("after", [False, True], ids=["refused", "failed-after"])
def test_connect_is_all_or_nothing(host, monkeypatch, after):
    net = host.create_network("web")
    sandbox = host.create_sandbox("a")
    steps = _sweep(host, monkeypatch, lambda: net.connect(sandbox, ports=["8080:80", "53/udp"]), after, [sandbox])
    assert steps >= 3  # veth, address+route, port forwards
    (endpoint,) = net.endpoints
    assert endpoint.ip.exploded == "172.17.0.2"  # every failed attempt gave its address back
    # The sandbox namespace is clean after each failure too: only lo and the final eth0.
    out = sandbox.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()] == ["lo", "eth0"]


@pytest.mark.parametrize("after", [False, True], ids=["refused", "failed-after"])
def test_create_sandbox_is_all_or_nothing(host, monkeypatch, after):
    _sweep(host, monkeypatch, lambda: host.create_sandbox("a"), after)
    assert [s.name for s in host.sandboxes] == ["a"]


def test_isolated_host_creation_is_all_or_nothing(monkeypatch):
    """Host.isolated itself: every failure leaves no namespace behind."""
    import os

    k = 1
    while True:
        before = namespaces()
        with FaultInjector(k, after=True) as injector:
            try:
                host = cnm.Host.isolated()
            except (cnm.CNMError, Injected):
                assert injector.fired
            else:
                host.close()
                break
        after = namespaces()
        assert after == before, f"step {k}: left {set(after) - set(before)}"
        k += 1
    assert k > 3


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda h, n, s: n.connect(s, ip="172.17.0.1"), id="gateway-address"),
        pytest.param(lambda h, n, s: n.connect(s, ip="10.9.9.9"), id="address-outside-subnet"),
        pytest.param(lambda h, n, s: n.connect(s, ports=["70000:80"]), id="impossible-port"),
        pytest.param(lambda h, n, s: n.connect(s, ports=["8080:80", "8080:81"]), id="port-twice"),
        pytest.param(lambda h, n, s: h.create_network("web"), id="name-in-use"),
        pytest.param(lambda h, n, s: h.create_network("other", subnet="172.17.5.0/24"), id="overlapping-subnet"),
        pytest.param(lambda h, n, s: h.create_network("other", subnet="10.0.0.0/33"), id="bad-subnet"),
        pytest.param(lambda h, n, s: h.create_network("other", driver="nope"), id="unknown-driver"),
        pytest.param(lambda h, n, s: h.create_sandbox("a"), id="sandbox-name-in-use"),
        pytest.param(lambda h, n, s: n.connect(s, mac="01:00:5e:00:00:01"), id="multicast-mac"),
    ],
)
def test_bad_input_changes_nothing(host, make):
    net = host.create_network("web")
    host.create_sandbox("a")
    taken = host.create_sandbox("b")
    net.connect(taken, ports=["8080:80"])
    fresh = host.create_sandbox("c")
    before = _host_state(host)
    endpoints_before = [e.name for e in net.endpoints]
    with pytest.raises(cnm.CNMError):
        make(host, net, fresh)
    assert not diff(before, _host_state(host))
    assert [e.name for e in net.endpoints] == endpoints_before


def test_published_port_conflict_is_refused_before_the_kernel(host):
    net = host.create_network("web")
    a, b = host.create_sandbox("a"), host.create_sandbox("b")
    net.connect(a, ports=["8080:80"])
    before = _host_state(host)
    with pytest.raises(cnm.ConflictError, match=r"endpoint 'b': host port 8080/tcp .* endpoint 'a'"):
        net.connect(b, ports=["8080:80"])
    assert not diff(before, _host_state(host))
    assert [e.name for e in net.endpoints] == ["a"]
