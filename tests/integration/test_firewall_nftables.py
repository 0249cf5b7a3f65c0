"""The nftables firewall backend against the real kernel, in a scratch namespace.

Every rule cnm sends is checked against ``nft list ruleset`` (run with
``ip netns exec`` inside the scratch namespace): the listing must read as the
nft syntax documented in :mod:`cnm.firewall.nftables.ruleset`, which is how we
know the hand-built expressions mean what we think (pyroute2's ``fib`` encoder,
for one, was wrong), in both families' tables. The ``nft`` CLI only ever reads
here; a few tests also prove the IPv6 rules with traffic between namespaces
they create.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import socket
import subprocess
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from cnm.errors import ClosedError, InvalidArgumentError, KernelError, NotFoundError
from cnm.firewall import (
    FIREWALL_BACKENDS,
    SANDBOX_PORT_GROUP,
    TUNNEL_PORT_GROUP,
    FirewallBackend,
    NetworkRules,
    PortForward,
    firewall_backend,
)
from cnm.firewall.nftables import NftablesFirewall
from cnm.firewall.nftables.batch import Batch
from cnm.firewall.nftables.expressions import IPV4, IPV6
from cnm.firewall.none import NoFirewall
from cnm.netlink import Netlink
from cnm.netns import Namespace
from cnm.undo import UndoLog

pytestmark = pytest.mark.kernel

CAN_RUN = os.geteuid() == 0 and shutil.which("nft") is not None and shutil.which("ip") is not None
needs_kernel = pytest.mark.skipif(not CAN_RUN, reason="needs root, iproute2 and the nft CLI (to inspect rules)")

WEB = NetworkRules(name="web", bridge="br-web", subnets=(IPv4Network("10.1.0.0/24"),))
DB = NetworkRules(name="db", bridge="br-db", subnets=(IPv4Network("10.2.16.0/20"),), internal=True)
A = IPv4Address


# ---- fixtures and helpers ------------------------------------------------------------


@pytest.fixture
def netns():
    """A scratch namespace, always deleted; the root namespace must not see our table."""
    token = secrets.token_hex(3)
    ns = Namespace.create(f"cnm-fwtest-{token}")
    try:
        yield ns
    finally:
        ns.delete()
    assert not os.path.exists(f"/run/netns/cnm-fwtest-{token}")


@pytest.fixture
def fw(netns):
    backend = NftablesFirewall(netns, secrets.token_hex(3))
    try:
        yield backend
    finally:
        backend.close()


def ruleset(ns: Namespace) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns.name, "nft", "list", "ruleset"], check=True, capture_output=True, text=True
    ).stdout


def parse(text: str) -> dict[str, dict[str, object]]:
    """``nft list ruleset`` as {"chains": {name: [line, ...]}, "maps": {name: {"type":..., "elements": set}},
    "sets": (like maps)}."""
    chains: dict[str, list[str]] = {}
    maps: dict[str, dict[str, object]] = {}
    sets: dict[str, dict[str, object]] = {}
    current: list[str] | None = None
    current_map: dict[str, object] | None = None
    elements: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if elements is not None:
            elements += " " + line
            if line.endswith("}"):
                assert current_map is not None
                current_map["elements"] = _elements(elements)
                elements = None
            continue
        if m := re.fullmatch(r"chain (\S+) \{", line):
            current, current_map = chains.setdefault(m.group(1), []), None
        elif m := re.fullmatch(r"(map|set) (\S+) \{", line):
            kind = maps if m.group(1) == "map" else sets
            current_map, current = kind.setdefault(m.group(2), {"elements": set()}), None
        elif line == "}" or not line or line.startswith("table "):
            current = current_map = None
        elif current_map is not None:
            if line.startswith("type "):
                current_map["type"] = line[5:]
            elif line.startswith("elements = {"):
                elements = line
                if line.endswith("}"):
                    current_map["elements"] = _elements(elements)
                    elements = None
        elif current is not None:
            current.append(line)
    return {"chains": chains, "maps": maps, "sets": sets}  # type: ignore[dict-item]


def _elements(text: str) -> set[str]:
    inner = text[text.index("{") + 1 : text.rindex("}")]
    return {" ".join(e.split()) for e in inner.split(",") if e.strip()}


def table_of(fw: NftablesFirewall, family: str = "ip") -> dict[str, dict[str, object]]:
    """One of the backend's tables, parsed; it must be there."""
    text = subprocess.run(
        ["ip", "netns", "exec", fw.namespace.name, "nft", "list", "table", family, fw.table],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert f"table {family} {fw.table} {{" in text
    return parse(text)


def tables(ns: Namespace) -> list[str]:
    """``nft list tables``: e.g. ["ip cnm-abc123", "ip6 cnm-abc123"]."""
    listing = subprocess.run(
        ["ip", "netns", "exec", ns.name, "nft", "list", "tables"], check=True, capture_output=True, text=True
    ).stdout
    return [line.removeprefix("table ") for line in listing.splitlines() if line.strip()]


SKELETON = {
    "prerouting": ["type nat hook prerouting priority dstnat; policy accept;", "fib daddr type local jump published"],
    "output": ["type nat hook output priority -100; policy accept;", "fib daddr type local jump published"],
    "published": [
        "dnat ip to ip daddr . meta l4proto . th dport map @ports_addr",
        "dnat ip to meta l4proto . th dport map @ports",
    ],
    "isolation": ["ct status dnat return", "drop"],
    "direct": ["ct state established,related return", "ct status dnat return", "drop"],
    "loopback": ["type filter hook prerouting priority raw; policy accept;", 'iifname != "lo" ip daddr 127.0.0.0/8 drop'],
    "input": ["type filter hook input priority filter; policy accept;", "iifname @bridges udp dport 4789 drop"],
}
POSTROUTING_HEAD = "type nat hook postrouting priority srcnat; policy accept;"
FORWARD_HEAD = "type filter hook forward priority filter; policy accept;"
ISOLATE = "iifname @bridges oifname @bridges iifname . oifname != @same_bridge jump isolation"
GUARD = "oifname @guarded iifname . oifname != @same_bridge jump direct"
UNADDRESSED = ["iifname @unaddressed drop", "oifname @unaddressed drop"]
NO_VXLAN = "iifname @bridges udp dport 4789 drop"
FORWARD = [FORWARD_HEAD, NO_VXLAN, *UNADDRESSED, ISOLATE, GUARD]
WEB_POSTROUTING = [
    'ip saddr 10.1.0.0/24 oifname != "br-web" masquerade comment "web"',
    'ct status dnat ip saddr 10.1.0.0/24 oifname "br-web" masquerade comment "web"',
    'ip saddr 127.0.0.0/8 oifname "br-web" masquerade comment "web"',
]
DB_POSTROUTING = [
    'ct status dnat ip saddr 10.2.16.0/20 oifname "br-db" masquerade comment "db"',
    'ip saddr 127.0.0.0/8 oifname "br-db" masquerade comment "db"',
]
DB_FORWARD = [
    'iifname "br-db" oifname != "br-db" drop comment "db"',
    'oifname "br-db" iifname != "br-db" drop comment "db"',
]


def bridge_sets(
    *bridges: str, unguarded: tuple[str, ...] = (), unaddressed: tuple[str, ...] = ()
) -> dict[str, dict[str, object]]:
    """The sets ``bridges``, ``same_bridge`` and ``guarded`` holding *bridges*
    (less *unguarded* in the last), and ``unaddressed`` holding *unaddressed*,
    as parse() reads them."""
    return {
        "bridges": {"type": "ifname", "elements": {f'"{b}"' for b in bridges}},
        "same_bridge": {"type": "ifname . ifname", "elements": {f'"{b}" . "{b}"' for b in bridges}},
        "guarded": {"type": "ifname", "elements": {f'"{b}"' for b in bridges if b not in unguarded}},
        "unaddressed": {"type": "ifname", "elements": {f'"{b}"' for b in unaddressed}},
    }


def ifname(name: str) -> bytes:
    return name.encode().ljust(16, b"\0")


# ---- the registry (no kernel needed) -------------------------------------------------


def test_registry_names_the_builtins():
    assert {"nftables", "none"} <= set(FIREWALL_BACKENDS.names())
    assert firewall_backend("nftables") is NftablesFirewall
    assert firewall_backend("none") is NoFirewall


def test_unknown_backend_is_not_found():
    with pytest.raises(NotFoundError, match="'iptables'.*nftables"):
        firewall_backend("iptables")
    with pytest.raises(LookupError):
        firewall_backend("")


@pytest.mark.parametrize(
    "make",
    [
        lambda: PortForward("icmp", None, 80, A("10.0.0.2"), 80),
        lambda: PortForward("tcp", None, 0, A("10.0.0.2"), 80),
        lambda: PortForward("tcp", None, 80, A("10.0.0.2"), 65536),
        lambda: PortForward("tcp", "0.0.0.0", 80, A("10.0.0.2"), 80),
        lambda: NetworkRules("n", "a-bridge-name-too-long", (IPv4Network("10.0.0.0/24"),)),
        lambda: NetworkRules("n", "", (IPv4Network("10.0.0.0/24"),)),
    ],
)
def test_bad_values_are_refused(make):
    with pytest.raises((InvalidArgumentError, TypeError)):
        make()


# ---- the nftables backend ------------------------------------------------------------


@needs_kernel
def test_nothing_is_installed_before_the_first_call(fw):
    assert ruleset(fw.namespace) == ""
    assert isinstance(fw, FirewallBackend)


@needs_kernel
def test_first_network_creates_the_table_with_its_rules(fw):
    undo = UndoLog()
    fw.add_network(WEB, undo)
    assert len(undo) == 1
    table = table_of(fw)
    chains = table["chains"]
    for name, lines in SKELETON.items():
        assert chains[name] == lines
    assert chains["postrouting"] == [POSTROUTING_HEAD, *WEB_POSTROUTING]
    assert chains["forward"] == FORWARD
    assert table["maps"] == {
        "ports": {"type": "inet_proto . inet_service : ipv4_addr . inet_service", "elements": set()},
        "ports_addr": {"type": "ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service", "elements": set()},
    }
    assert table["sets"] == bridge_sets("br-web")
    # The socket lives in the scratch namespace: the machine's own ruleset never sees the table.
    root = subprocess.run(["nft", "list", "tables"], check=True, capture_output=True, text=True).stdout
    assert fw.table not in root


@needs_kernel
def test_two_networks_and_their_forwards(fw):
    undo = UndoLog()
    fw.add_network(WEB, undo)
    fw.add_network(DB, undo)
    fw.add_port_forwards(
        WEB,
        [
            PortForward("tcp", None, 8080, A("10.1.0.2"), 80),
            PortForward("udp", A("192.168.7.1"), 53, A("10.1.0.3"), 5353),
            PortForward("sctp", None, 9999, A("10.1.0.3"), 9),
        ],
        undo,
    )
    assert len(undo) == 3
    table = table_of(fw)
    assert table["chains"]["postrouting"] == [POSTROUTING_HEAD, *WEB_POSTROUTING, *DB_POSTROUTING]
    assert table["chains"]["forward"] == [*FORWARD, *DB_FORWARD]
    assert table["sets"] == bridge_sets("br-web", "br-db")
    assert table["maps"]["ports"]["elements"] == {"tcp . 8080 : 10.1.0.2 . 80", "sctp . 9999 : 10.1.0.3 . 9"}
    assert table["maps"]["ports_addr"]["elements"] == {"192.168.7.1 . udp . 53 : 10.1.0.3 . 5353"}


@needs_kernel
def test_internal_network_is_isolated_and_not_masqueraded(fw):
    fw.add_network(DB, UndoLog())
    table = table_of(fw)
    chains = table["chains"]
    assert chains["forward"] == [*FORWARD, *DB_FORWARD]
    assert chains["postrouting"] == [POSTROUTING_HEAD, *DB_POSTROUTING]
    assert table["sets"] == bridge_sets("br-db")  # isolated from other networks as well
    assert not any("!=" in line for line in chains["postrouting"])  # no outbound NAT


@needs_kernel
def test_a_network_allowing_direct_access_stays_out_of_the_guard(fw):
    """The one place that decides: membership of the bridge in ``guarded``."""
    open_web = NetworkRules(name="open", bridge="br-open", subnets=(IPv4Network("10.3.0.0/24"),), direct_access=True)
    undo = UndoLog()
    fw.add_network(WEB, undo)
    fw.add_network(open_web, undo)
    table = table_of(fw)
    assert table["sets"] == bridge_sets("br-web", "br-open", unguarded=("br-open",))
    assert table["chains"]["forward"] == FORWARD  # no rule of its own either way
    assert undo.unwind() == []
    assert ruleset(fw.namespace) == ""


@needs_kernel
def test_route_localnet_is_on_only_while_the_guard_is_there(fw):
    """The backend turns the bridge's route_localnet on with its rules and off
    before they go: a bridge that outlives them does not route loopback."""
    subprocess.run(["ip", "netns", "exec", fw.namespace.name, "ip", "link", "add", "br-web", "type", "bridge"], check=True)
    key = "net/ipv4/conf/br-web/route_localnet"
    assert fw.namespace.read_sysctl(key) == "0"
    undo = UndoLog()
    fw.add_network(WEB, undo)
    assert fw.namespace.read_sysctl(key) == "1"
    assert undo.unwind() == []
    assert fw.namespace.read_sysctl(key) == "0"  # the bridge is still there, with it off


@needs_kernel
def test_undoing_forwards_removes_exactly_their_elements(fw):
    fw.add_network(WEB, UndoLog())
    first, second = UndoLog(), UndoLog()
    fw.add_port_forwards(WEB, [PortForward("tcp", None, 8080, A("10.1.0.2"), 80)], first)
    fw.add_port_forwards(
        WEB,
        [PortForward("tcp", None, 8081, A("10.1.0.3"), 80), PortForward("tcp", A("192.168.7.1"), 8080, A("10.1.0.3"), 81)],
        second,
    )
    rules_before = table_of(fw)["chains"]
    assert second.unwind() == []
    table = table_of(fw)
    assert table["maps"]["ports"]["elements"] == {"tcp . 8080 : 10.1.0.2 . 80"}
    assert table["maps"]["ports_addr"]["elements"] == set()
    assert table["chains"] == rules_before
    assert first.unwind() == []
    assert table_of(fw)["maps"]["ports"]["elements"] == set()


@needs_kernel
def test_undoing_networks_removes_their_rules_and_the_last_removes_the_table(fw):
    web, db = UndoLog(), UndoLog()
    fw.add_network(WEB, web)
    fw.add_network(DB, db)
    assert web.unwind() == []
    table = table_of(fw)
    chains = table["chains"]
    assert chains["postrouting"] == [POSTROUTING_HEAD, *DB_POSTROUTING]
    assert chains["forward"] == [*FORWARD, *DB_FORWARD]
    assert chains["published"] == SKELETON["published"]
    assert chains["isolation"] == SKELETON["isolation"]
    assert table["sets"] == bridge_sets("br-db")
    assert db.unwind() == []
    assert ruleset(fw.namespace) == ""
    # ...and the next call builds everything again.
    fw.add_network(WEB, UndoLog())
    assert table_of(fw)["chains"]["postrouting"] == [POSTROUTING_HEAD, *WEB_POSTROUTING]


@needs_kernel
def test_the_table_lives_while_any_call_is_outstanding(fw):
    net, ports = UndoLog(), UndoLog()
    fw.add_network(WEB, net)
    fw.add_port_forwards(WEB, [PortForward("tcp", None, 8080, A("10.1.0.2"), 80)], ports)
    assert net.unwind() == []  # out of the usual order: the forwards keep the table alive
    table = table_of(fw)
    assert table["chains"]["postrouting"] == [POSTROUTING_HEAD]
    assert table["sets"] == bridge_sets()
    assert table["maps"]["ports"]["elements"] == {"tcp . 8080 : 10.1.0.2 . 80"}
    assert ports.unwind() == []
    assert ruleset(fw.namespace) == ""


@needs_kernel
def test_duplicate_forward_is_refused_and_changes_nothing(fw):
    undo = UndoLog()
    fw.add_network(WEB, undo)
    fw.add_port_forwards(WEB, [PortForward("tcp", None, 8080, A("10.1.0.2"), 80)], undo)
    before = ruleset(fw.namespace)
    steps = len(undo)
    with pytest.raises(KernelError) as caught:
        fw.add_port_forwards(
            WEB,
            [PortForward("udp", None, 8080, A("10.1.0.9"), 80), PortForward("tcp", None, 8080, A("10.1.0.9"), 80)],
            undo,
        )
    assert caught.value.errno == errno.EEXIST
    assert "tcp 0.0.0.0:8080 -> 10.1.0.9:80" in str(caught.value)
    assert ruleset(fw.namespace) == before  # the udp forward of the same batch is not there either
    assert len(undo) == steps
    assert undo.unwind() == []
    assert ruleset(fw.namespace) == ""


@needs_kernel
def test_failed_first_call_leaves_nothing(fw):
    twice = PortForward("tcp", None, 8080, A("10.1.0.2"), 80)
    undo = UndoLog()
    with pytest.raises(KernelError) as caught:
        fw.add_port_forwards(WEB, [twice, twice], undo)  # the batch also creates the table
    assert caught.value.errno == errno.EEXIST
    assert ruleset(fw.namespace) == ""
    assert len(undo) == 0
    fw.add_network(WEB, undo)  # still knows it must create the table
    assert table_of(fw)["chains"]["postrouting"] == [POSTROUTING_HEAD, *WEB_POSTROUTING]


@needs_kernel
def test_undo_tolerates_what_is_already_gone(fw):
    fw.add_network(DB, UndoLog())
    web, ports = UndoLog(), UndoLog()
    fw.add_network(WEB, web)
    fw.add_port_forwards(
        WEB, [PortForward("tcp", None, 8080, A("10.1.0.2"), 80), PortForward("tcp", None, 8081, A("10.1.0.2"), 81)], ports
    )
    # Someone else removes one of web's rules and one of its forwards.
    listing = subprocess.run(
        ["ip", "netns", "exec", fw.namespace.name, "nft", "-a", "list", "chain", "ip", fw.table, "postrouting"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    handle = int(re.search(r'127\.0\.0\.0/8 oifname "br-web" .*# handle (\d+)', listing).group(1))
    outsider = Batch(fw.table)
    outsider.rule_delete(IPV4, "postrouting", handle, "outsider")
    outsider.element(False, IPV4, "ports", bytes([6, 0, 0, 0, 0x1F, 0x90, 0, 0]), None, "outsider")
    outsider.element(False, IPV4, "same_bridge", ifname("br-web") * 2, None, "outsider")
    fw._commit(outsider, "test: outsider")
    assert ports.unwind() == []
    assert web.unwind() == []
    table = table_of(fw)
    assert table["chains"]["postrouting"] == [POSTROUTING_HEAD, *DB_POSTROUTING]
    assert table["maps"]["ports"]["elements"] == set()
    assert table["sets"] == bridge_sets("br-db")


@needs_kernel
def test_an_undo_step_runs_once(fw):
    class Recorder:
        def __init__(self) -> None:
            self.steps = []

        def push(self, what, step):
            self.steps.append(step)

    web, db = Recorder(), UndoLog()
    fw.add_network(WEB, web)
    fw.add_network(DB, db)
    (step,) = web.steps
    step()
    step()  # must not count as the undo of db's call too
    assert table_of(fw)["chains"]["forward"] == [*FORWARD, *DB_FORWARD]
    assert db.unwind() == []
    assert ruleset(fw.namespace) == ""


@needs_kernel
@pytest.mark.parametrize("first", [True, False], ids=["creating", "adding"])
@pytest.mark.parametrize("kind", ["network", "forwards"])
def test_a_lost_answer_removes_what_the_batch_installed(fw, monkeypatch, first, kind):
    """The batch commits but its answer never arrives: the call fails and leaves nothing."""
    undo = UndoLog()
    if not first:
        fw.add_network(DB, undo)
        fw.add_port_forwards(DB, [PortForward("tcp", None, 8080, A("10.2.16.2"), 80)], undo)
    before = ruleset(fw.namespace)
    steps = len(undo)
    original = Netlink.fenced
    calls = []

    def lossy(self, requests, fence, timeout=30.0):
        original(self, requests, fence, timeout)
        calls.append(len(requests))
        if len(calls) == 1:
            raise OSError(errno.ENOBUFS, "answer lost")
        return []

    monkeypatch.setattr(Netlink, "fenced", lossy)
    with pytest.raises(KernelError) as caught:
        if kind == "network":
            fw.add_network(WEB, undo)
        else:
            fw.add_port_forwards(WEB, [PortForward("tcp", None, 9090, A("10.1.0.2"), 80)], undo)
    monkeypatch.undo()
    assert caught.value.errno == errno.ENOBUFS
    assert len(calls) == 2  # the batch, then the clean-up
    assert ruleset(fw.namespace) == before
    assert len(undo) == steps
    assert undo.unwind() == []
    assert ruleset(fw.namespace) == ""


@needs_kernel
def test_a_bridge_belongs_to_one_network(fw):
    """A second network on a bridge already in use is refused, and changes nothing."""
    undo = UndoLog()
    fw.add_network(WEB, undo)
    before = ruleset(fw.namespace)
    with pytest.raises(KernelError) as caught:
        fw.add_network(NetworkRules(name="web2", bridge="br-web", subnets=(IPv4Network("10.9.0.0/24"),)), undo)
    assert caught.value.errno == errno.EEXIST
    assert 'add "br-web" to set bridges' in str(caught.value)
    assert ruleset(fw.namespace) == before
    assert len(undo) == 1


@needs_kernel
def test_closed_backend_refuses_work_but_keeps_the_rules(fw):
    undo = UndoLog()
    fw.add_network(WEB, undo)
    fw.close()
    fw.close()
    with pytest.raises(ClosedError):
        fw.add_network(DB, UndoLog())
    failures = undo.unwind()
    assert [type(f) for f in failures] == [ClosedError]
    assert fw.table in ruleset(fw.namespace)  # deleting the namespace removes it


@needs_kernel
def test_the_none_backend_installs_nothing(netns):
    fw = firewall_backend("none")(netns, "abc123")
    undo = UndoLog()
    fw.add_network(WEB, undo)
    fw.add_port_forwards(WEB, [PortForward("tcp", None, 8080, A("10.1.0.2"), 80)], undo)
    assert len(undo) == 0
    assert ruleset(netns) == ""
    fw.close()
    with pytest.raises(ClosedError):
        fw.add_network(WEB, undo)


# ---- dual-stack: the ip6 table ---------------------------------------------------------

A6 = IPv6Address
DUAL = NetworkRules(name="web", bridge="br-web", subnets=(IPv4Network("10.1.0.0/24"), IPv6Network("fd00:1::/64")))
V6 = NetworkRules(name="v6", bridge="br-v6", subnets=(IPv6Network("fd00:2:3::/56"),), internal=True)
# a prefix that is not whole bytes: masked, not cut short
ODD = NetworkRules(name="odd", bridge="br-odd", subnets=(IPv6Network("fd00:4::/61"),), direct_access=True)

SKELETON6 = {
    **SKELETON,
    "published": [
        "dnat ip6 to ip6 daddr . meta l4proto . th dport map @ports_addr",
        "dnat ip6 to meta l4proto . th dport map @ports",
    ],
    "loopback": ["type filter hook prerouting priority raw; policy accept;", 'iifname != "lo" ip6 daddr ::1 drop'],
}
WEB_POSTROUTING6 = [  # no loopback masquerade: IPv6 has no route_localnet
    'ip6 saddr fd00:1::/64 oifname != "br-web" masquerade comment "web"',
    'ct status dnat ip6 saddr fd00:1::/64 oifname "br-web" masquerade comment "web"',
]
V6_POSTROUTING = ['ct status dnat ip6 saddr fd00:2:3::/56 oifname "br-v6" masquerade comment "v6"']
V6_FORWARD = ['iifname "br-v6" oifname != "br-v6" drop comment "v6"', 'oifname "br-v6" iifname != "br-v6" drop comment "v6"']
ODD_POSTROUTING = [
    'ip6 saddr fd00:4::/61 oifname != "br-odd" masquerade comment "odd"',
    'ct status dnat ip6 saddr fd00:4::/61 oifname "br-odd" masquerade comment "odd"',
]
EMPTY_MAPS6 = {
    "ports": {"type": "inet_proto . inet_service : ipv6_addr . inet_service", "elements": set()},
    "ports_addr": {"type": "ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service", "elements": set()},
}


def test_forwards_and_networks_of_both_families_are_validated():
    with pytest.raises(InvalidArgumentError, match="different families"):
        PortForward("tcp", A("192.0.2.1"), 80, A6("fd00:1::2"), 80)
    with pytest.raises(InvalidArgumentError, match="different families"):
        PortForward("tcp", A6("2001:db8::1"), 80, A("10.1.0.2"), 80)
    with pytest.raises(InvalidArgumentError, match="::1"):
        PortForward("tcp", A6("::1"), 80, A6("fd00:1::2"), 80)
    # The unspecified address of the family is "every address": one spelling, None.
    assert PortForward("tcp", A6("::"), 80, A6("fd00:1::2"), 80) == PortForward("tcp", None, 80, A6("fd00:1::2"), 80)
    assert PortForward("tcp", A("0.0.0.0"), 80, A("10.1.0.2"), 80).host_ip is None
    with pytest.raises(InvalidArgumentError, match="different families"):
        PortForward("tcp", A("0.0.0.0"), 80, A6("fd00:1::2"), 80)
    with pytest.raises(InvalidArgumentError, match="container_ip"):
        PortForward("tcp", None, 80, "fd00:1::2", 80)
    for subnets in ((), (IPv4Network("10.0.0.0/24"), IPv4Network("10.0.1.0/24")), (IPv6Network("fd00::/64"),) * 2):
        with pytest.raises(InvalidArgumentError, match="'n': subnets .*at most one per family"):
            NetworkRules("n", "br-n", subnets)
    with pytest.raises(InvalidArgumentError, match="must be a tuple"):
        NetworkRules("n", "br-n", [IPv4Network("10.0.0.0/24")])
    with pytest.raises(InvalidArgumentError, match="must be a tuple"):
        NetworkRules("n", "br-n", ("10.0.0.0/24",))
    assert DUAL.subnet_for(6) == IPv6Network("fd00:1::/64") and V6.subnet_for(4) is None


def test_an_ipv6_forward_reads_with_brackets():
    assert str(PortForward("tcp", None, 8080, A6("fd00:1::2"), 80)) == "tcp [::]:8080 -> [fd00:1::2]:80"
    assert str(PortForward("udp", A6("2001:db8::1"), 53, A6("fd00:1::3"), 5353)) == "udp [2001:db8::1]:53 -> [fd00:1::3]:5353"
    assert str(PortForward("tcp", None, 8080, A("10.1.0.2"), 80)) == "tcp 0.0.0.0:8080 -> 10.1.0.2:80"


@needs_kernel
@pytest.mark.parametrize("backend", ["nftables", "none"])
def test_a_forward_of_a_family_the_network_lacks_is_refused_before_any_change(netns, backend):
    fw = firewall_backend(backend)(netns, secrets.token_hex(3))
    try:
        undo = UndoLog()
        with pytest.raises(InvalidArgumentError, match="network 'web': port forward .*no IPv6 subnet"):
            fw.add_port_forwards(WEB, [PortForward("tcp", None, 8080, A6("fd00:1::2"), 80)], undo)
        with pytest.raises(InvalidArgumentError, match="network 'v6': port forward .*no IPv4 subnet"):
            fw.add_port_forwards_many(V6, [([PortForward("tcp", None, 8080, A("10.1.0.2"), 80)], undo)])
        assert len(undo) == 0
        assert ruleset(netns) == ""
    finally:
        fw.close()


@needs_kernel
def test_a_dual_stack_network_has_the_same_rules_in_both_tables(fw):
    undo = UndoLog()
    fw.add_network(DUAL, undo)
    assert len(undo) == 1
    assert tables(fw.namespace) == [f"ip {fw.table}", f"ip6 {fw.table}", f"bridge {fw.table}"]
    ip = table_of(fw, "ip")  # exactly what an IPv4-only network has
    for name, lines in SKELETON.items():
        assert ip["chains"][name] == lines
    assert ip["chains"]["postrouting"] == [POSTROUTING_HEAD, *WEB_POSTROUTING]
    assert ip["chains"]["forward"] == FORWARD
    assert ip["sets"] == bridge_sets("br-web")
    ip6 = table_of(fw, "ip6")
    for name, lines in SKELETON6.items():
        assert ip6["chains"][name] == lines
    assert ip6["chains"]["postrouting"] == [POSTROUTING_HEAD, *WEB_POSTROUTING6]
    assert ip6["chains"]["forward"] == FORWARD
    assert ip6["maps"] == EMPTY_MAPS6
    assert ip6["sets"] == bridge_sets("br-web")
    assert undo.unwind() == []
    assert ruleset(fw.namespace) == ""


@needs_kernel
def test_ipv6_only_networks_are_unaddressed_in_the_ipv4_table(fw):
    """Internal, direct access, a prefix that is not whole bytes: all as in
    IPv4. IPv4 cannot be turned off on their bridges: the ip table forwards
    nothing from or to them, and masquerades nothing for them."""
    subprocess.run(["ip", "netns", "exec", fw.namespace.name, "ip", "link", "add", "br-v6", "type", "bridge"], check=True)
    undo = UndoLog()
    fw.add_network(V6, undo)
    fw.add_network(ODD, undo)
    assert len(undo) == 2  # no route_localnet step: there is no such thing for IPv6
    assert fw.namespace.read_sysctl("net/ipv4/conf/br-v6/route_localnet") == "0"
    assert tables(fw.namespace) == [f"ip {fw.table}", f"ip6 {fw.table}", f"bridge {fw.table}"]
    ip = table_of(fw, "ip")
    assert ip["chains"]["postrouting"] == [POSTROUTING_HEAD]
    assert ip["chains"]["forward"] == FORWARD
    assert ip["sets"] == bridge_sets(unaddressed=("br-v6", "br-odd"))
    ip6 = table_of(fw, "ip6")
    assert ip6["chains"]["postrouting"] == [POSTROUTING_HEAD, *V6_POSTROUTING, *ODD_POSTROUTING]
    assert ip6["chains"]["forward"] == [*FORWARD, *V6_FORWARD]
    assert ip6["sets"] == bridge_sets("br-v6", "br-odd", unguarded=("br-odd",))
    assert undo.unwind() == []
    assert ruleset(fw.namespace) == ""


@needs_kernel
def test_ipv6_forwards_are_elements_of_the_ip6_maps(fw):
    undo = UndoLog()
    fw.add_network(DUAL, undo)
    fw.add_port_forwards(
        DUAL,
        [
            PortForward("tcp", None, 8080, A6("fd00:1::2"), 80),
            PortForward("udp", A6("2001:db8::1"), 53, A6("fd00:1::3"), 5353),
            PortForward("tcp", None, 8080, A("10.1.0.2"), 80),  # the same port in the other family
            PortForward("sctp", A("192.168.7.1"), 9, A("10.1.0.3"), 9),
        ],
        undo,
    )
    ip, ip6 = table_of(fw, "ip"), table_of(fw, "ip6")
    assert ip6["maps"]["ports"]["elements"] == {"tcp . 8080 : fd00:1::2 . 80"}
    assert ip6["maps"]["ports_addr"]["elements"] == {"2001:db8::1 . udp . 53 : fd00:1::3 . 5353"}
    assert ip["maps"]["ports"]["elements"] == {"tcp . 8080 : 10.1.0.2 . 80"}
    assert ip["maps"]["ports_addr"]["elements"] == {"192.168.7.1 . sctp . 9 : 10.1.0.3 . 9"}
    assert undo.unwind() == []
    assert ruleset(fw.namespace) == ""


@needs_kernel
def test_the_ip6_table_comes_with_the_first_ipv6_user_and_goes_with_the_last(fw):
    v4, dual, ports6 = UndoLog(), UndoLog(), UndoLog()
    fw.add_network(WEB, v4)
    fw.add_port_forwards(WEB, [PortForward("tcp", None, 8080, A("10.1.0.2"), 80)], v4)
    assert tables(fw.namespace) == [f"ip {fw.table}", f"bridge {fw.table}"]  # an IPv4-only host has no IPv6 rules
    ip_before = table_of(fw, "ip")
    other = NetworkRules("v6web", "br-v6web", (IPv4Network("10.5.0.0/24"), IPv6Network("fd00:5::/64")))
    fw.add_network(other, dual)
    assert tables(fw.namespace) == [f"ip {fw.table}", f"bridge {fw.table}", f"ip6 {fw.table}"]
    fw.add_port_forwards(other, [PortForward("tcp", None, 8443, A6("fd00:5::2"), 443)], ports6)
    assert dual.unwind() == []  # out of order: the forward keeps the ip6 table alive
    ip6 = table_of(fw, "ip6")
    assert ip6["chains"]["postrouting"] == [POSTROUTING_HEAD]
    assert ip6["maps"]["ports"]["elements"] == {"tcp . 8443 : fd00:5::2 . 443"}
    assert ports6.unwind() == []
    assert tables(fw.namespace) == [f"ip {fw.table}", f"bridge {fw.table}"]
    assert table_of(fw, "ip") == ip_before
    assert v4.unwind() == []
    assert ruleset(fw.namespace) == ""


@needs_kernel
def test_a_refused_batch_of_both_families_changes_nothing(fw):
    """A duplicate IPv6 forward aborts the IPv4 one of the same batch, and the
    creation of both tables with it."""
    twice = PortForward("tcp", None, 8080, A6("fd00:1::2"), 80)
    undo = UndoLog()
    with pytest.raises(KernelError) as caught:
        fw.add_port_forwards(DUAL, [PortForward("tcp", None, 8080, A("10.1.0.2"), 80), twice, twice], undo)
    assert caught.value.errno == errno.EEXIST
    assert "tcp [::]:8080 -> [fd00:1::2]:80" in str(caught.value)
    assert ruleset(fw.namespace) == ""
    assert len(undo) == 0
    # With the ip table there already, only the ip6 table would be new.
    fw.add_network(WEB, undo)
    before = ruleset(fw.namespace)
    with pytest.raises(KernelError):
        fw.add_port_forwards(DUAL, [PortForward("tcp", None, 8080, A("10.1.0.2"), 80), twice, twice], undo)
    assert ruleset(fw.namespace) == before
    assert len(undo) == 1
    fw.add_network(V6, undo)  # still knows it must create the ip6 table
    assert table_of(fw, "ip6")["chains"]["postrouting"] == [POSTROUTING_HEAD, *V6_POSTROUTING]
    assert undo.unwind() == []
    assert ruleset(fw.namespace) == ""


@needs_kernel
@pytest.mark.parametrize("first", [True, False], ids=["creating-both", "creating-ip6"])
def test_a_lost_answer_of_a_dual_stack_call_removes_what_it_installed(fw, monkeypatch, first):
    undo = UndoLog()
    if not first:
        fw.add_network(DB, undo)
        fw.add_port_forwards(DB, [PortForward("tcp", None, 9090, A("10.2.16.2"), 80)], undo)
    before = ruleset(fw.namespace)
    original = Netlink.fenced
    calls = []

    def lossy(self, requests, fence, timeout=30.0):
        original(self, requests, fence, timeout)
        calls.append(len(requests))
        if len(calls) == 1:
            raise OSError(errno.ENOBUFS, "answer lost")
        return []

    monkeypatch.setattr(Netlink, "fenced", lossy)
    with pytest.raises(KernelError) as caught:
        fw.add_network(DUAL, undo)
    monkeypatch.undo()
    assert caught.value.errno == errno.ENOBUFS
    assert len(calls) == 2  # the batch, then the clean-up
    assert ruleset(fw.namespace) == before
    assert undo.unwind() == []
    assert ruleset(fw.namespace) == ""


@needs_kernel
def test_bulk_forwards_of_both_families_go_in_and_out_in_one_transaction(fw, monkeypatch):
    fw.add_network(DUAL, UndoLog())
    groups = [
        ([PortForward("tcp", None, 8000 + i, A("10.1.0.2"), 80), PortForward("tcp", None, 8000 + i, A6("fd00:1::2"), 80)], UndoLog())
        for i in range(3)
    ] + [([PortForward("udp", None, 53, A6("fd00:1::3"), 53)], UndoLog())]
    commits = []
    real_commit = NftablesFirewall._commit
    monkeypatch.setattr(NftablesFirewall, "_commit", lambda self, *a, **k: commits.append(a[1]) or real_commit(self, *a, **k))
    fw.add_port_forwards_many(DUAL, groups)
    assert len(commits) == 1
    assert [len(undo) for _, undo in groups] == [1, 1, 1, 1]
    ip6 = table_of(fw, "ip6")["maps"]["ports"]["elements"]
    assert ip6 == {f"tcp . {8000 + i} : fd00:1::2 . 80" for i in range(3)} | {"udp . 53 : fd00:1::3 . 53"}
    commits.clear()
    removers = [step for _, undo in groups for step in undo.steps()]
    fw.undo_together(removers)
    assert len(commits) == 1 and "4 removals" in commits[0]
    assert table_of(fw, "ip")["maps"]["ports"]["elements"] == set()
    assert table_of(fw, "ip6")["maps"]["ports"]["elements"] == set()
    for remover in removers:
        remover()  # done already: nothing more
    assert len(commits) == 1


@needs_kernel
def test_undo_goes_on_when_the_ip6_table_is_gone_already(fw):
    """Someone else deleted the ip6 table: the undo of the last dual-stack
    network still deletes the ip table, in one more batch."""
    undo = UndoLog()
    fw.add_network(DUAL, undo)
    outsider = Batch(fw.table)
    outsider.table_delete(IPV6)
    fw._commit(outsider, "test: outsider")
    assert tables(fw.namespace) == [f"ip {fw.table}", f"bridge {fw.table}"]
    assert undo.unwind() == []
    assert ruleset(fw.namespace) == ""


BRIDGE_CHAINS = {
    "forward": [
        "type filter hook forward priority filter; policy accept;",
        f"meta protocol ip6 iifgroup {SANDBOX_PORT_GROUP} jump from_sandbox",
    ],
    "input": ["type filter hook input priority filter; policy accept;", f"iifgroup {TUNNEL_PORT_GROUP} drop"],
    "output": ["type filter hook output priority filter; policy accept;", f"oifgroup {TUNNEL_PORT_GROUP} drop"],
    "from_sandbox": [
        "icmpv6 type nd-router-advert drop",
        "icmpv6 type nd-redirect drop",
        "udp sport 547 udp dport 546 drop",
    ],
}


@needs_kernel
@pytest.mark.parametrize("first", [WEB, DUAL, V6], ids=["ipv4", "dual", "ipv6"])
def test_the_bridge_table_comes_with_the_first_network_and_goes_with_the_last(fw, first):
    """Whatever the families, every network holds the bridge table, which
    names no network: it guards the ports of sandboxes (their device group)."""
    one, two = UndoLog(), UndoLog()
    fw.add_network(first, one)
    assert f"bridge {fw.table}" in tables(fw.namespace)
    table = table_of(fw, "bridge")
    assert table == {"chains": BRIDGE_CHAINS, "maps": {}, "sets": {}}
    fw.add_network(DB, two)
    assert table_of(fw, "bridge") == table
    assert one.unwind() == []
    assert table_of(fw, "bridge") == table  # DB still uses it
    assert two.unwind() == []
    assert ruleset(fw.namespace) == ""


@needs_kernel
def test_sweep_removes_every_table(netns):
    owner = secrets.token_hex(3)
    fw = NftablesFirewall(netns, owner)
    fw.add_network(DUAL, UndoLog())
    fw.add_network(DB, UndoLog())
    fw.close()  # the host died: its rules stay
    every = [f"ip cnm-{owner}", f"ip6 cnm-{owner}", f"bridge cnm-{owner}"]
    assert tables(netns) == every
    assert NftablesFirewall.sweep(netns, owner) == [f"nftables table {t}" for t in every]
    assert ruleset(netns) == ""
    assert NftablesFirewall.sweep(netns, owner) == []
    # A leftover whose ip tables someone else removed already, and someone else's tables, which stay.
    fw = NftablesFirewall(netns, owner)
    fw.add_network(V6, UndoLog())
    outsider = Batch(fw.table)
    outsider.table_delete(IPV4)
    outsider.table_delete(IPV6)
    fw._commit(outsider, "test: outsider")
    fw.close()
    keep = NftablesFirewall(netns, "someone-else")
    keep.add_network(WEB, UndoLog())
    keep.close()
    assert NftablesFirewall.sweep(netns, owner) == [f"nftables table bridge cnm-{owner}"]
    assert tables(netns) == ["ip cnm-someone-else", "bridge cnm-someone-else"]


# ---- IPv6 traffic at the backend level ----------------------------------------------


@pytest.fixture
def v6_wiring(netns):
    """The scratch namespace as a host: bridge br-web (fd00:1::1/64) with a
    sandbox namespace on it (fd00:1::2), and an uplink (2001:db8:9::1/64) to
    an outside namespace (2001:db8:9::2) that has no route to fd00:1::/64."""
    token = netns.name.rsplit("-", 1)[1]
    sandbox = Namespace.create(f"cnm-fwtest-{token}-s")
    outside = Namespace.create(f"cnm-fwtest-{token}-o")

    def ip(ns: Namespace, *argv: str) -> None:
        subprocess.run(["ip", "netns", "exec", ns.name, "ip", *argv], check=True)

    try:
        ip(netns, "link", "add", "br-web", "type", "bridge")
        ip(netns, "addr", "add", "fd00:1::1/64", "dev", "br-web", "nodad")
        ip(netns, "link", "set", "br-web", "up")
        ip(netns, "link", "add", "ve-s", "type", "veth", "peer", "name", "eth0", "netns", sandbox.name)
        ip(netns, "link", "set", "ve-s", "master", "br-web", "up")
        ip(netns, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", outside.name)
        ip(netns, "addr", "add", "2001:db8:9::1/64", "dev", "up0", "nodad")
        ip(netns, "link", "set", "up0", "up")
        netns.write_sysctl("net/ipv6/conf/all/forwarding", "1")
        for ns, address in ((sandbox, "fd00:1::2/64"), (outside, "2001:db8:9::2/64")):
            ip(ns, "link", "set", "lo", "up")
            ip(ns, "addr", "add", address, "dev", "eth0", "nodad")
            ip(ns, "link", "set", "eth0", "up")
        ip(sandbox, "-6", "route", "add", "default", "via", "fd00:1::1")
        yield sandbox, outside, ip
    finally:
        outside.delete()
        sandbox.delete()


def _listen(ns: Namespace, address: str, port: int) -> socket.socket:
    server = ns.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server.bind((address, port))
    server.listen(4)
    server.settimeout(5)
    return server


def _peer_of_connection(ns: Namespace, server: socket.socket, address: str, port: int, timeout: float = 5) -> str | None:
    """Connect from *ns*; the source address *server* saw, or None if the connection did not get through."""
    client = ns.socket(socket.AF_INET6, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        client.connect((address, port))
    except OSError:
        return None
    finally:
        client.close()
    accepted, peer = server.accept()
    accepted.close()
    return str(peer[0])


@needs_kernel
def test_ipv6_traffic_is_dnated_masqueraded_and_guarded(fw, v6_wiring):
    sandbox, outside, ip = v6_wiring
    undo = UndoLog()
    fw.add_network(NetworkRules("web", "br-web", (IPv6Network("fd00:1::/64"),)), undo)
    fw.add_port_forwards(DUAL, [PortForward("tcp", None, 8080, A6("fd00:1::2"), 80)], undo)
    with _listen(sandbox, "::", 80) as web, _listen(outside, "::", 9000) as far:
        # Published: outside -> the host's uplink address, DNATed to the sandbox
        # (its reply goes back through the host by the sandbox's default route).
        assert _peer_of_connection(outside, web, "2001:db8:9::1", 8080) == "2001:db8:9::2"
        # Outbound: the outside has no route back to fd00:1::/64, so only a
        # masqueraded connection gets through, and it comes from the uplink's address.
        assert _peer_of_connection(sandbox, far, "2001:db8:9::2", 9000) == "2001:db8:9::1"
        # Direct access: with a route to the subnet, the outside still cannot
        # open a connection to the sandbox's own address.
        ip(outside, "-6", "route", "add", "fd00:1::/64", "via", "2001:db8:9::1")
        assert _peer_of_connection(outside, web, "fd00:1::2", 80, timeout=1) is None
        assert undo.unwind() == []
        assert ruleset(fw.namespace) == ""
        # Without the rules, the direct connection gets through: the guard was what stopped it.
        assert _peer_of_connection(outside, web, "fd00:1::2", 80) == "2001:db8:9::2"
