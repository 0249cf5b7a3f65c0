"""The rtnetlink verbs of :class:`cnm.kernel.Rtnl` against the real kernel:
addresses and routes of both families, and the generic link verb ``add_link``.

Every change happens in an isolated host's namespace or in namespaces the
test makes and deletes; the iproute2 CLI only inspects.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import subprocess
import threading
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network

import pytest

from cnm.errors import CNMError, InterfaceExistsError, InvalidArgumentError, KernelError, MissingKernelFeatureError
from cnm.kernel import Link, Peer, Route, Rtnl
from cnm.netlink import Netlink
from cnm.netns import Namespace
from tests.kernelstate import diff, snapshot

_names = itertools.count()


@pytest.fixture
def rtnl(host):
    """An rtnetlink socket in the isolated host's namespace."""
    with Rtnl(host.namespace) as r:
        yield r


@pytest.fixture
def sandbox():
    """A bare namespace of the test's own (lo down, nothing else), deleted afterwards."""
    ns = Namespace.create(f"cnm-kvt-{os.getpid()}-{next(_names)}")
    try:
        yield ns
    finally:
        ns.delete()


def ip(namespace: Namespace, *args: str) -> str:
    """``ip ARGS`` inside *namespace* (to inspect only)."""
    return namespace.run(lambda: subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout)


def state(*namespaces: Namespace) -> dict[str, object]:
    out: dict[str, object] = {}
    for ns in namespaces:
        out.update({f"{ns.name}:{k}": v for k, v in snapshot(ns.path).items() if k != "netns"})
    return out


def wire(rtnl: Rtnl, sandbox: Namespace, **kw) -> tuple[Link, int]:
    """A veth: ``vk<n>`` up in the host namespace, ``eth0`` (down) in *sandbox*;
    returns the host end and the index of eth0."""
    link = rtnl.add_link("veth", f"vk{next(_names)}", peer=Peer("eth0", sandbox), alias="cnm:test", up=True, **kw)
    assert link.peer_index is not None
    return link, link.peer_index


# ---- addresses and routes of both families ------------------------------------------


def test_configure_link_gives_addresses_and_default_routes_of_both_families(rtnl, sandbox):
    _, eth0 = wire(rtnl, sandbox)
    with Rtnl(sandbox) as inside:
        inside.configure_link(
            "eth0",
            [IPv4Interface("10.1.0.2/24"), IPv6Interface("fd00:1::2/64")],
            [Route.default(IPv4Address("10.1.0.1")), Route.default(IPv6Address("fd00:1::1"))],
            "test sandbox",
            index=eth0,
        )
        v4, v6, both = inside.addresses(), inside.addresses(6), inside.addresses(None)
        routes4, routes6 = inside.routes(), inside.routes(6)
    shown6 = ip(sandbox, "-6", "addr", "show", "dev", "eth0")
    assert "inet6 fd00:1::2/64 scope global nodad" in shown6
    assert "fe80" not in shown6  # no link-local address: addrgenmode none kept
    assert "addrgenmode none" in ip(sandbox, "-d", "link", "show", "eth0")
    assert "inet 10.1.0.2/24 brd 10.1.0.255" in ip(sandbox, "-4", "addr", "show", "dev", "eth0")
    assert "default via fd00:1::1 dev eth0" in ip(sandbox, "-6", "route")
    assert "default via 10.1.0.1 dev eth0" in ip(sandbox, "-4", "route")
    assert v4 == [(eth0, IPv4Interface("10.1.0.2/24"))]
    assert v6 == [(eth0, IPv6Interface("fd00:1::2/64"))]
    assert sorted(both, key=str) == sorted(v4 + v6, key=str)
    assert routes4 == [IPv4Network("10.1.0.0/24")]
    assert IPv6Network("fd00:1::/64") in routes6 and all(r.version == 6 for r in routes6)


def test_configure_link_of_ipv4_keeps_the_interface_free_of_ipv6(rtnl, sandbox):
    _, eth0 = wire(rtnl, sandbox)
    with Rtnl(sandbox) as inside:
        inside.configure_link(
            "eth0", [IPv4Interface("10.2.0.2/24")], [Route.default(IPv4Address("10.2.0.1"))], "test", index=eth0
        )
    assert ip(sandbox, "-6", "addr", "show", "dev", "eth0").strip() == ""
    assert "default via 10.2.0.1 dev eth0" in ip(sandbox, "-4", "route")


def test_on_link_default_routes_of_both_families(rtnl, sandbox):
    _, eth0 = wire(rtnl, sandbox)
    with Rtnl(sandbox) as inside:
        inside.configure_link(
            "eth0",
            [IPv4Interface("10.3.0.2/32"), IPv6Interface("fd00:3::2/128")],
            [Route.on_link(4), Route.on_link(6)],
            "test",
            index=eth0,
        )
    assert "default dev eth0 proto static scope link" in ip(sandbox, "-4", "route")
    assert "default dev eth0 proto static" in ip(sandbox, "-6", "route")


def test_add_address_and_add_route_of_ipv6(rtnl, sandbox):
    _, eth0 = wire(rtnl, sandbox)
    with Rtnl(sandbox) as inside:
        inside.set_up(eth0, "eth0")
        inside.add_address(eth0, IPv6Interface("fd00:5::1/64"), "test")
        inside.add_route(IPv6Network("fd00:6::/64"), IPv6Address("fd00:5::9"), "test", oif=eth0)
        assert IPv6Network("fd00:6::/64") in inside.routes(6)
    assert "fd00:6::/64 via fd00:5::9 dev eth0" in ip(sandbox, "-6", "route")
    # usable at once (no DAD), unlike the link-local address a bare "up" made
    assert "inet6 fd00:5::1/64 scope global nodad" in ip(sandbox, "-6", "addr", "show", "dev", "eth0")


def test_a_route_of_mixed_families_is_refused_before_the_kernel(rtnl, sandbox):
    with pytest.raises(InvalidArgumentError, match="another address family"):
        Route(IPv4Network("0.0.0.0/0"), IPv6Address("fd00::1"))
    before = state(sandbox)
    with Rtnl(sandbox) as inside, pytest.raises(InvalidArgumentError):
        inside.add_route(IPv6Network("::/0"), IPv4Address("10.0.0.1"), "test", oif=1)
    assert not diff(before, state(sandbox))


def _listen(namespace: Namespace, address: str) -> socket.socket:
    server = namespace.run(lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM))
    server.bind((address, 0))
    server.listen()
    return server


def _connect(namespace: Namespace, address: str, port: int) -> None:
    def attempt() -> None:
        with socket.create_connection((address, port), timeout=5):
            pass

    namespace.run(attempt)


def test_a_sandbox_reaches_its_ipv6_gateway_on_a_bridge_at_once(host, rtnl, sandbox):
    """No link-local address, no DAD: neighbour discovery works from the global
    addresses alone, in both directions, right after configure."""
    bridge = rtnl.add_link("bridge", "brk0", alias="cnm:test", up=True)
    with pytest.raises(KernelError):  # the host namespace starts IPv6-less: the bridge needs it back
        rtnl.add_address(bridge.index, IPv6Interface("fd00:7::1/64"), "bridge")
    host.namespace.write_sysctl("net/ipv6/conf/brk0/disable_ipv6", "0")
    rtnl.add_address(bridge.index, IPv6Interface("fd00:7::1/64"), "bridge")
    _, eth0 = wire(rtnl, sandbox, master=bridge.index)
    gateway = _listen(host.namespace, "fd00:7::1")
    with Rtnl(sandbox) as inside:
        inside.configure_link(
            "eth0", [IPv6Interface("fd00:7::2/64")], [Route.default(IPv6Address("fd00:7::1"))], "test", index=eth0
        )
    try:
        assert "tentative" not in ip(sandbox, "-6", "addr", "show", "dev", "eth0")
        _connect(sandbox, "fd00:7::1", gateway.getsockname()[1])
        own = _listen(sandbox, "fd00:7::2")
        try:
            _connect(host.namespace, "fd00:7::2", own.getsockname()[1])
        finally:
            own.close()
    finally:
        gateway.close()


# ---- the generic link verb --------------------------------------------------------------


@pytest.mark.parametrize("kind, module", [("ipvlan", "ipvlan"), ("vlan", "8021q"), ("dummy", "dummy")])
def test_a_kind_the_kernel_lacks_raises_naming_its_module(host, rtnl, kind, module):
    if os.path.exists(f"/sys/module/{module}") or os.path.isdir(f"/lib/modules/{os.uname().release}"):
        pytest.skip(f"this kernel has (or can load) {module}")
    data = {"ipvlan": {"ipvlan_mode": "l3"}, "vlan": {"vlan_id": 10}, "dummy": None}[kind]
    parent = None if kind == "dummy" else rtnl.link_index("eth0")
    before = state(host.namespace)
    with pytest.raises(MissingKernelFeatureError) as caught:
        rtnl.add_link(kind, "kx0", data=data, parent=parent, alias="cnm:test")
    assert caught.value.errno == errno.EOPNOTSUPP
    assert f"module {module!r}" in str(caught.value) and "'kx0'" in str(caught.value)
    assert not diff(before, state(host.namespace))


def test_macvlan_in_the_host_namespace(host, rtnl):
    eth0 = rtnl.link_index("eth0")
    link = rtnl.add_link(
        "macvlan", "mv0", data={"macvlan_mode": "bridge"}, parent=eth0, mac="02:00:00:aa:bb:cc", mtu=1400,
        alias="cnm:test", up=True,
    )
    assert link.namespace.path == host.namespace.path and link.peer_index is None
    assert link.index == rtnl.link_index("mv0")
    shown = ip(host.namespace, "-d", "link", "show", "mv0")
    for expected in ("mv0@eth0", "macvlan mode bridge", "alias cnm:test", "02:00:00:aa:bb:cc", "mtu 1400", ",UP"):
        assert expected in shown
    assert "addrgenmode none" in shown


def test_macvlan_made_inside_another_namespace_on_a_host_parent(host, rtnl, sandbox):
    parent = rtnl.link_index("eth0")
    link = rtnl.add_link("macvlan", "mv1", data={"macvlan_mode": "private"}, parent=parent, namespace=sandbox,
                         alias="cnm:test")
    assert link.namespace is sandbox
    assert rtnl.link_index("mv1") is None  # never in the host namespace
    with Rtnl(sandbox) as inside:
        assert inside.link_index("mv1") == link.index
    shown = ip(sandbox, "-d", "link", "show", "mv1")
    # The parent was resolved where the request came from: the host's eth0.
    assert f"mv1@if{parent}" in shown and f"link-netns {host.namespace.name}" in shown
    assert "macvlan mode private" in shown and "alias cnm:test" in shown
    rtnl.delete_link(link.index, "mv1", namespace=sandbox)
    assert "mv1" not in ip(sandbox, "link")
    with pytest.raises(OSError) as gone:
        rtnl.delete_link(link.index, "mv1", namespace=sandbox)
    assert gone.value.errno == errno.ENODEV


def test_vxlan_whose_creation_the_kernel_does_not_echo(host, rtnl):
    link = rtnl.add_link("vxlan", "vx0", data={"vxlan_id": 42, "IFLA_VXLAN_PORT": 4789}, alias="cnm:test", up=True)
    assert link.index == rtnl.link_index("vx0")
    shown = ip(host.namespace, "-d", "link", "show", "vx0")
    assert "vxlan id 42" in shown and "dstport 4789" in shown and "alias cnm:test" in shown


def test_veth_with_its_peer_in_another_namespace(host, rtnl, sandbox):
    link = rtnl.add_link("veth", "vp0", peer=Peer("eth1", sandbox, "02:00:00:00:00:07"), alias="cnm:test")
    with Rtnl(sandbox) as inside:
        assert link.peer_index == inside.link_index("eth1")
        assert inside.link(name="eth1").mac == "02:00:00:00:00:07"
    assert link.index == rtnl.link_index("vp0")
    rtnl.delete_link(link.index, "vp0")
    assert "eth1" not in ip(sandbox, "link")


def test_a_taken_name_is_a_conflict_and_the_link_is_untouched(host, rtnl):
    rtnl.add_link("macvlan", "mv2", parent=rtnl.link_index("eth0"), alias="cnm:first")
    before = state(host.namespace)
    with pytest.raises(InterfaceExistsError) as caught:
        rtnl.add_link("macvlan", "mv2", parent=rtnl.link_index("eth0"), alias="cnm:second")
    assert isinstance(caught.value, ValueError) and caught.value.errno == errno.EEXIST
    assert not diff(before, state(host.namespace))


@pytest.mark.parametrize(
    "kind, name, kwargs, reason",
    [
        ("macvlan", "mv3", {"data": {"nonsense": 1}}, "not a setting of macvlan"),
        ("dummy", "du0", {"data": {"mode": 1}}, "no settings are known"),
        ("macvlan", "a/b", {}, "not a valid interface name"),
        ("macvlan", "x" * 16, {}, "not a valid interface name"),
        ("macvlan", "mv3", {"mac": "02:00:00"}, "not a MAC address"),
        ("macvlan", "mv3", {"peer": Peer("p0")}, "only for a veth"),
        ("veth", "vt3", {}, "only for a veth"),
        ("veth", "vt3", {"peer": Peer("bad name")}, "not a valid interface name"),
        ("macvlan", "mv3", {"alias": "x" * 256}, "longer than the kernel keeps"),
        ("ipvlan", "iv0", {"data": {"ipvlan_mode": "l9"}}, "not one of l2, l3, l3s"),
        ("vxlan", "vx3", {"data": {"vxlan_id": "many"}}, "cannot encode"),
    ],
)
def test_bad_arguments_are_refused_before_any_change(host, rtnl, kind, name, kwargs, reason):
    before = state(host.namespace)
    with pytest.raises(InvalidArgumentError, match=reason):
        rtnl.add_link(kind, name, **kwargs)
    assert not diff(before, state(host.namespace))


class _Injected(OSError):
    pass


def _failing_transact(monkeypatch, fail_at: int, after: bool) -> list[bool]:
    """Make the *fail_at*-th netlink exchange fail (before it reaches the
    kernel, or *after* the kernel acted); returns a flag set once it fired."""
    original = Netlink.transact
    count, fired, lock = [0], [False], threading.Lock()

    def transact(self, *args, **kwargs):
        with lock:
            count[0] += 1
            fire = count[0] == fail_at
        if fire and not after:
            fired[0] = True
            raise _Injected(errno.EPERM, "injected failure before the step")
        result = original(self, *args, **kwargs)
        if fire:
            fired[0] = True
            raise _Injected(errno.EIO, "injected failure after the step")
        return result

    monkeypatch.setattr(Netlink, "transact", transact)
    return fired


OPERATIONS = {
    "macvlan": lambda r, ns, parent: r.add_link("macvlan", "mv9", parent=parent, alias="cnm:test", up=True),
    "macvlan-elsewhere": lambda r, ns, parent: r.add_link(
        "macvlan", "mv9", parent=parent, namespace=ns, alias="cnm:test", up=True
    ),
    "vxlan": lambda r, ns, parent: r.add_link("vxlan", "vx9", data={"vxlan_id": 9}, alias="cnm:test", up=True),
    "veth": lambda r, ns, parent: r.add_link("veth", "vt9", peer=Peer("eth9", ns), alias="cnm:test", up=True),
}


@pytest.mark.parametrize("after", [False, True], ids=["refused", "failed-after"])
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_add_link_is_all_or_nothing(host, rtnl, sandbox, monkeypatch, operation, after):
    parent = rtnl.link_index("eth0")  # looked up before the faults: not part of the operation
    assert parent is not None
    k = 1
    while True:
        before = state(host.namespace, sandbox)
        with monkeypatch.context() as m:
            fired = _failing_transact(m, k, after)
            try:
                OPERATIONS[operation](rtnl, sandbox, parent)
            except (CNMError, _Injected) as exc:
                assert fired[0], f"step {k}: failed without the injected fault: {exc!r}"
            else:
                assert not fired[0], f"step {k}: the injected failure was swallowed"
                break
        changed = diff(before, state(host.namespace, sandbox))
        assert not changed, f"failure at netlink exchange {k} ({'after' if after else 'before'} it) left:\n{changed}"
        k += 1
        assert k < 10, "the operation never completed"
    assert k - 1 == 2  # creation, then marking (and "up") by index
