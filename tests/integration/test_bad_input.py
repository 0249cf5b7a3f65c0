"""Bad input, table-driven: every public entry point refuses it with a typed
error, before any change.

Each row calls cnm with one bad argument on a prepared isolated host and
names the error it must raise and words of its message (the object and the
reason). For every row the test checks that the error is a
:class:`cnm.CNMError` and also the builtin it refines (``ValueError`` for a
wrong value or type, ``LookupError`` for an unknown name), and that nothing
changed: not the kernel state of the host, its outside or its sandboxes, not
the list of namespaces, not cnm's own books (networks, sandboxes, endpoints,
addresses, host ports), and no namespace was even begun.

The host is shared by all rows (a snapshot runs ``ip`` and ``nft`` several
times), which is sound only because every row must leave it as it was: a row
that changes something fails, and says what.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

import cnm
from cnm.netns import MountDir, Namespace
from tests.kernelstate import diff, snapshot

BRIDGE = "com.docker.network.bridge.name"
MTU = "com.docker.network.driver.mtu"


class World:
    """The prepared host: network "base" (10.77.0.0/24) with sandbox "s1"
    connected (publishing 8080:80) and endpoint "loose" not joined; internal
    network "quiet"; dual-stack network "v6" (10.76.0.0/24, fd00:9::/64); sandbox "s0" connected to nothing; and a second host
    whose network and sandbox belong elsewhere."""

    def __init__(self) -> None:
        self.host = cnm.Host.isolated()
        self.stranger = cnm.Host.isolated()
        host = self.host
        self.base = host.create_network("base", subnet="10.77.0.0/24")
        self.quiet = host.create_network("quiet", subnet="10.78.0.0/24", internal=True)
        self.v6 = host.create_network("v6", ipv6=True, subnet=["10.76.0.0/24", "fd00:9::/64"])
        self.s0 = host.create_sandbox("s0")
        self.s1 = host.create_sandbox("s1")
        self.base.connect(self.s1, ports=["8080:80"])
        self.loose = self.base.create_endpoint("loose")
        self.far_network = self.stranger.create_network("far", subnet="10.79.0.0/24")
        self.far_sandbox = self.stranger.create_sandbox("far")

    def close(self) -> None:
        try:
            self.host.close()
        finally:
            self.stranger.close()

    def kernel(self) -> dict[str, object]:
        host = self.host
        assert host.outside is not None
        state: dict[str, object] = {"host": snapshot(host.namespace.name)}
        state["outside"] = {k: v for k, v in snapshot(host.outside.namespace.name).items() if k != "netns"}
        for sandbox in (self.s0, self.s1):
            state[sandbox.name] = {k: v for k, v in snapshot(sandbox.key).items() if k != "netns"}
        return state

    def books(self) -> dict[str, object]:
        host = self.host
        return {
            "networks": [(n.name, n.id, list(map(str, n.subnets)), n.interface, n.internal) for n in host.networks],
            "sandboxes": [(s.name, s.id, s.key) for s in host.sandboxes],
            "endpoints": {
                n.name: [
                    (e.name, e.id, list(map(str, e.addresses)), e.mac, e.sandbox.name if e.sandbox else None, [str(p) for p in e.published])
                    for e in n.endpoints
                ]
                for n in host.networks
            },
            "addresses": {
                n.name: {f: sorted(map(str, p.allocated())) for f, p in host._services.networks[n.name].pools.items()}
                for n in host.networks
            },
            "host ports": repr(host._services.ports),
            "stranger": ([n.name for n in self.stranger.networks], [s.name for s in self.stranger.sandboxes]),
        }


Call = Callable[[World], Any]
ROWS: list[Any] = []


def row(name: str, call: Call, error: type[cnm.CNMError], words: str) -> None:
    ROWS.append(pytest.param(call, error, words, id=name))


def net(w: World, **kwargs: Any) -> Any:
    return w.host.create_network("x", **kwargs)


# ---- names -------------------------------------------------------------------------------
row("network name ends in a newline", lambda w: w.host.create_network("web\n"), cnm.InvalidArgumentError, "network name 'web\\n'")
row("network name empty", lambda w: w.host.create_network(""), cnm.InvalidArgumentError, "network name ''")
row("network name an int", lambda w: w.host.create_network(5), cnm.InvalidArgumentError, "network name must be a string, not int 5")
row("network name with a space", lambda w: w.host.create_network("a b"), cnm.InvalidArgumentError, "network name 'a b'")
row("network name of 64 characters", lambda w: w.host.create_network("x" * 64), cnm.InvalidArgumentError, "network name 'xxx")
row("network name not ASCII", lambda w: w.host.create_network("réseau"), cnm.InvalidArgumentError, "network name 'réseau'")
row("network name in use", lambda w: w.host.create_network("base"), cnm.ConflictError, "network 'base': a network with that name already exists")
row("sandbox name ends in a newline", lambda w: w.host.create_sandbox("a\n"), cnm.InvalidArgumentError, "sandbox name 'a\\n'")
row("sandbox name None", lambda w: w.host.create_sandbox(None), cnm.InvalidArgumentError, "sandbox name must be a string, not None")
row("sandbox name starts with '-'", lambda w: w.host.create_sandbox("-x"), cnm.InvalidArgumentError, "sandbox name '-x'")
row("sandbox name with a slash", lambda w: w.host.create_sandbox("../x"), cnm.InvalidArgumentError, "sandbox name '../x'")
row("sandbox name in use", lambda w: w.host.create_sandbox("s0"), cnm.ConflictError, "sandbox 's0': a sandbox with that name already exists")
row("host name ends in a newline", lambda w: cnm.Host.isolated(name="h\n"), cnm.InvalidArgumentError, "host name 'h\\n'")
row("host name an int", lambda w: cnm.Host.isolated(name=5), cnm.InvalidArgumentError, "host name must be a string")
row("endpoint name ends in a newline", lambda w: w.base.create_endpoint("e\n"), cnm.InvalidArgumentError, "endpoint name 'e\\n'")
row("endpoint name in use", lambda w: w.base.create_endpoint("loose"), cnm.ConflictError, "network 'base': an endpoint named 'loose' already exists")
row("connect name empty", lambda w: w.base.connect(w.s0, name=""), cnm.InvalidArgumentError, "endpoint name ''")
row("connect name an int", lambda w: w.base.connect(w.s0, name=7), cnm.InvalidArgumentError, "endpoint name must be a string, not int 7")

# ---- plug-in names and flags --------------------------------------------------------------
row("firewall an int (isolated)", lambda w: cnm.Host.isolated(firewall=5), cnm.InvalidArgumentError, "firewall must be a string, not int 5")
row("firewall unknown (isolated)", lambda w: cnm.Host.isolated(firewall="iptables"), cnm.NotFoundError, "firewall backend 'iptables'")
row("firewall None (machine's host)", lambda w: cnm.Host(firewall=None), cnm.InvalidArgumentError, "firewall must be a string, not None")
row("driver an int", lambda w: net(w, driver=5), cnm.InvalidArgumentError, "network 'x': driver must be a string, not int 5")
row("driver unknown", lambda w: net(w, driver="macvlan2"), cnm.NotFoundError, "network driver 'macvlan2'")
row("ipam None", lambda w: net(w, ipam=None), cnm.InvalidArgumentError, "network 'x': ipam must be a string, not None")
row("ipam unknown", lambda w: net(w, ipam="dhcp"), cnm.NotFoundError, "IPAM driver 'dhcp'")
row("internal 'no'", lambda w: net(w, internal="no"), cnm.InvalidArgumentError, "network 'x': internal must be True or False, not str 'no'")
row("internal 1", lambda w: net(w, internal=1), cnm.InvalidArgumentError, "internal must be True or False, not int 1")
row("internal None", lambda w: net(w, internal=None), cnm.InvalidArgumentError, "internal must be True or False, not None")
row("delete force 'no'", lambda w: w.base.delete(force="no"), cnm.InvalidArgumentError, "network 'base': delete: force must be True or False")
row("options a list", lambda w: net(w, options=[("a", "b")]), cnm.InvalidArgumentError, "network 'x': options must map strings to strings")
row("option value an int", lambda w: net(w, options={MTU: 1500}), cnm.InvalidArgumentError, "network 'x': options must map strings to strings")
row("label key an int", lambda w: net(w, labels={1: "a"}), cnm.InvalidArgumentError, "network 'x': labels must map strings to strings")
row("option unknown", lambda w: net(w, options={"com.docker.network.bridge.enable_icc": "true"}), cnm.InvalidArgumentError, "unknown bridge option(s)")

# ---- subnets, gateways, ranges ------------------------------------------------------------
row("subnet an int", lambda w: net(w, subnet=24), cnm.InvalidArgumentError, "network 'x': subnet must be a string, an IPv4Network or an IPv6Network (or a list of one per family), not int 24")
row("subnet prefix /33", lambda w: net(w, subnet="10.0.0.0/33"), cnm.InvalidArgumentError, "network 'x': subnet '10.0.0.0/33' is not a valid IPv4 prefix")
row("subnet with a newline", lambda w: net(w, subnet="10.0.0.0/24\n"), cnm.InvalidArgumentError, "network 'x': subnet '10.0.0.0/24\\n'")
row("subnet loopback", lambda w: net(w, subnet="127.0.0.0/8"), cnm.InvalidArgumentError, "network 'x': subnet 127.0.0.0/8 is inside 127.0.0.0/8, which is reserved for loopback")
row("subnet inside loopback", lambda w: net(w, subnet="127.1.0.0/16"), cnm.InvalidArgumentError, "reserved for loopback")
row("subnet multicast", lambda w: net(w, subnet="224.0.0.0/24"), cnm.InvalidArgumentError, "reserved for multicast")
row("subnet class E", lambda w: net(w, subnet="240.0.0.0/24"), cnm.InvalidArgumentError, "240.0.0.0/4, which is reserved for future use")
row("subnet with the broadcast address", lambda w: net(w, subnet="255.255.255.0/24"), cnm.InvalidArgumentError, "240.0.0.0/4")
row("subnet 'this network'", lambda w: net(w, subnet="0.0.0.0/8"), cnm.InvalidArgumentError, "reserved for 'this network'")
row("subnet everything", lambda w: net(w, subnet=IPv4Network("0.0.0.0/0")), cnm.InvalidArgumentError, "network 'x': subnet 0.0.0.0/0 overlaps 0.0.0.0/8")
row("subnet overlaps a network", lambda w: net(w, subnet="10.77.0.0/16"), cnm.ConflictError, "network 'x': subnet 10.77.0.0/16 overlaps 10.77.0.0/24")
row("subnet overlaps the uplink", lambda w: net(w, subnet="198.18.0.0/16"), cnm.ConflictError, "198.18.0.0/24")
row("subnet too small", lambda w: net(w, subnet="10.60.0.0/31"), cnm.InvalidArgumentError, "network 'x': subnet 10.60.0.0/31 is too small")
row("subnet IPv6", lambda w: net(w, subnet="fd00::/64"), cnm.InvalidArgumentError, "network 'x': subnet 'fd00::/64' is IPv6, but the network has no IPv6 (ipv6=True enables it)")
row("gateway bytes", lambda w: net(w, subnet="10.60.0.0/24", gateway=b"10.60.0.1"), cnm.InvalidArgumentError, "network 'x': gateway must be a string, an IPv4Address or an IPv6Address (or a list of one per family), not bytes")
row("gateway outside the subnet", lambda w: net(w, subnet="10.60.0.0/24", gateway="10.61.0.1"), cnm.InvalidArgumentError, "gateway 10.61.0.1 is not inside subnet 10.60.0.0/24")
row("gateway the broadcast address", lambda w: net(w, subnet="10.60.0.0/24", gateway=IPv4Address("10.60.0.255")), cnm.InvalidArgumentError, "is the broadcast address")
row("ip_range only the network address", lambda w: net(w, subnet="10.60.0.0/24", ip_range="10.60.0.0/32"), cnm.InvalidArgumentError, "network 'x': ip_range 10.60.0.0/32 leaves no address to hand out")
row("ip_range only the gateway", lambda w: net(w, subnet="10.60.0.0/24", ip_range="10.60.0.1/32"), cnm.InvalidArgumentError, "ip_range 10.60.0.1/32 leaves no address")
row("ip_range only the broadcast address", lambda w: net(w, subnet="10.60.0.0/24", ip_range="10.60.0.255/32"), cnm.InvalidArgumentError, "ip_range 10.60.0.255/32 leaves no address")
row("ip_range network and gateway", lambda w: net(w, subnet="10.60.0.0/24", ip_range="10.60.0.0/31"), cnm.InvalidArgumentError, "ip_range 10.60.0.0/31 leaves no address")
row("ip_range the gateway given", lambda w: net(w, subnet="10.60.0.0/24", gateway="10.60.0.9", ip_range="10.60.0.9/32"), cnm.InvalidArgumentError, "leaves no address")
row("ip_range without a subnet", lambda w: net(w, ip_range="10.60.0.0/25"), cnm.InvalidArgumentError, "ip_range 10.60.0.0/25 is given without a subnet")
row("ip_range outside the subnet", lambda w: net(w, subnet="10.60.0.0/24", ip_range="10.61.0.0/25"), cnm.InvalidArgumentError, "is not inside subnet")
row("ipv6 not a bool", lambda w: net(w, ipv6="yes"), cnm.InvalidArgumentError, "network 'x': ipv6 must be True or False")
row("no family at all", lambda w: net(w, ipv4=False), cnm.InvalidArgumentError, "network 'x': ipv4=False needs ipv6=True")
row("IPv4 subnet on an IPv6-only network", lambda w: net(w, ipv4=False, ipv6=True, subnet="10.60.0.0/24"), cnm.InvalidArgumentError, "subnet '10.60.0.0/24' is IPv4, but the network has no IPv4")
row("two IPv6 subnets", lambda w: net(w, ipv6=True, subnet=["fd00:1::/64", "fd00:2::/64"]), cnm.InvalidArgumentError, "more than one IPv6 subnet given")
row("IPv6 subnet too small", lambda w: net(w, ipv6=True, subnet="fd00:1::/127"), cnm.InvalidArgumentError, "fd00:1::/127 is too small")
row("IPv6 subnet link-local", lambda w: net(w, ipv6=True, subnet="fe80::/64"), cnm.InvalidArgumentError, "link-local")
row("IPv6 subnet multicast", lambda w: net(w, ipv6=True, subnet="ff05::/64"), cnm.InvalidArgumentError, "multicast")
row("IPv6 gateway outside its subnet", lambda w: net(w, ipv6=True, subnet="fd00:1::/64", gateway="fd00:2::1"), cnm.InvalidArgumentError, "gateway fd00:2::1 is not inside subnet fd00:1::/64")
row("IPv6 subnet overlaps a network", lambda w: net(w, ipv6=True, subnet="fd00:9::/80"), cnm.ConflictError, "overlaps fd00:9::/64")
row("ip6 on an IPv4-only network", lambda w: w.base.connect(w.s0, ip6="fd00::5"), cnm.InvalidArgumentError, "has no IPv6 (ip6)")
row("ip6 not an address", lambda w: w.v6.connect(w.s0, ip6="fd00:9::zz"), cnm.InvalidArgumentError, "is not a valid IPv6 address")
row("ip6 an IPv4 address", lambda w: w.v6.connect(w.s0, ip6="10.77.0.9"), cnm.InvalidArgumentError, "is IPv4")
row("ip6 outside the subnet", lambda w: w.v6.connect(w.s0, ip6="fd00:8::5"), cnm.InvalidArgumentError, "not inside")
row("port on [::1]", lambda w: w.v6.connect(w.s0, ports=["[::1]:8090:80"]), cnm.InvalidArgumentError, "::1")
row("port on an IPv6 address of no network family", lambda w: w.base.connect(w.s0, ports=["[::]:8090:80"]), cnm.InvalidArgumentError, "IPv6")

# ---- bridge options -----------------------------------------------------------------------
row("bridge name 15 non-ASCII characters", lambda w: net(w, options={BRIDGE: "é" * 15}), cnm.InvalidArgumentError, "network 'x': bridge name 'ééé")
row("bridge name 16 bytes in 8 characters", lambda w: net(w, options={BRIDGE: "é" * 8}), cnm.InvalidArgumentError, "is not a valid interface name")
row("bridge name with a tab", lambda w: net(w, options={BRIDGE: "br\t0"}), cnm.InvalidArgumentError, "bridge name 'br\\t0'")
row("bridge name with a newline", lambda w: net(w, options={BRIDGE: "br0\n"}), cnm.InvalidArgumentError, "bridge name 'br0\\n'")
row("bridge name 'all'", lambda w: net(w, options={BRIDGE: "all"}), cnm.InvalidArgumentError, "bridge name 'all'")
row("bridge name 'default'", lambda w: net(w, options={BRIDGE: "default"}), cnm.InvalidArgumentError, "bridge name 'default'")
row("bridge name a pattern", lambda w: net(w, options={BRIDGE: "br%d"}), cnm.InvalidArgumentError, "bridge name 'br%d'")
row("bridge name 'lo'", lambda w: net(w, options={BRIDGE: "lo"}), cnm.InterfaceExistsError, "network 'x': bridge name 'lo' is already taken")
row("bridge name 'eth0'", lambda w: net(w, options={BRIDGE: "eth0"}), cnm.InterfaceExistsError, "network 'x': bridge name 'eth0' is already taken")
row("bridge name of another network", lambda w: net(w, options={BRIDGE: w.base.interface}), cnm.InterfaceExistsError, "is already taken")
row("MTU in full-width digits", lambda w: net(w, options={MTU: "１５００"}), cnm.InvalidArgumentError, "network 'x': com.docker.network.driver.mtu '１５００'")
row("MTU in Arabic-Indic digits", lambda w: net(w, options={MTU: "١٥٠٠"}), cnm.InvalidArgumentError, "is not an MTU")
row("MTU too small", lambda w: net(w, options={MTU: "67"}), cnm.InvalidArgumentError, "'67' is not an MTU in 68..65535")
row("multicast snooping 'yes'", lambda w: net(w, options={"cnm.bridge.multicast_snooping": "yes"}), cnm.InvalidArgumentError, "must be 'true' or 'false'")

# ---- sandboxes as arguments ---------------------------------------------------------------
row("connect None", lambda w: w.base.connect(None), cnm.InvalidArgumentError, "network 'base': connect: sandbox must be a Sandbox, not None")
row("connect a sandbox's name", lambda w: w.base.connect("s1"), cnm.InvalidArgumentError, "sandbox must be a Sandbox, not str 's1'")
row("connect a sandbox of another host", lambda w: w.base.connect(w.far_sandbox), cnm.InvalidArgumentError, "sandbox 'far' belongs to another host")
row("connect a sandbox connected already", lambda w: w.base.connect(w.s1, name="again"), cnm.ConflictError, "sandbox 's1' is already connected to network 'base'")
row("join None", lambda w: w.loose.join(None), cnm.InvalidArgumentError, "endpoint 'loose': join: sandbox must be a Sandbox, not None")
row("join a sandbox's name", lambda w: w.loose.join("s0"), cnm.InvalidArgumentError, "not str 's0'")
row("join a sandbox of another host", lambda w: w.loose.join(w.far_sandbox), cnm.InvalidArgumentError, "belongs to another host")
row("disconnect None", lambda w: w.base.disconnect(None), cnm.InvalidArgumentError, "network 'base': disconnect: sandbox must be a Sandbox, not None")
row("disconnect a sandbox's name", lambda w: w.base.disconnect("s1"), cnm.InvalidArgumentError, "not str 's1'")
row("disconnect a sandbox not connected", lambda w: w.base.disconnect(w.s0), cnm.NotFoundError, "network 'base': sandbox 's0' is not connected")
row("address of None", lambda w: w.s1.address(None), cnm.InvalidArgumentError, "sandbox 's1': address: network must be a Network, not None")
row("address on a network not joined", lambda w: w.s1.address(w.quiet), cnm.NotFoundError, "sandbox 's1' is not connected to network 'quiet'")

# ---- endpoint addresses and MACs ------------------------------------------------------------
row("ip an int", lambda w: w.base.connect(w.s0, ip=5), cnm.InvalidArgumentError, "network 'base': ip must be a string, an IPv4Address or an IPv6Address, not int 5")
row("ip not an address", lambda w: w.base.connect(w.s0, ip="10.77.0.300"), cnm.InvalidArgumentError, "ip '10.77.0.300' is not a valid IPv4 address")
row("ip outside the subnet", lambda w: w.base.connect(w.s0, ip="10.99.0.5"), cnm.InvalidArgumentError, "address 10.99.0.5 is not inside subnet 10.77.0.0/24")
row("ip in use", lambda w: w.base.connect(w.s0, ip=w.s1.address(w.base).ip), cnm.ConflictError, "is already in use")
row("ip the gateway", lambda w: w.base.connect(w.s0, ip="10.77.0.1"), cnm.ConflictError, "already in use as the gateway")
row("mac ends in a newline", lambda w: w.base.connect(w.s0, mac="02:42:ac:11:00:02\n"), cnm.InvalidArgumentError, "endpoint 's0': '02:42:ac:11:00:02\\n' is not a unicast MAC")
row("mac multicast", lambda w: w.base.connect(w.s0, mac="03:00:00:00:00:01"), cnm.InvalidArgumentError, "is not a unicast MAC")
row("mac all zeros", lambda w: w.base.connect(w.s0, mac="00:00:00:00:00:00"), cnm.InvalidArgumentError, "is not a unicast MAC")
row("mac bytes", lambda w: w.base.connect(w.s0, mac=b"02:42:ac:11:00:02"), cnm.InvalidArgumentError, "is not a unicast MAC")

# ---- ports --------------------------------------------------------------------------------
row("ports None", lambda w: w.base.create_endpoint("e", ports=None), cnm.InvalidArgumentError, "endpoint 'e': ports must be a port spec string, a PortMapping or a list of them, not None")
row("ports bytes", lambda w: w.base.connect(w.s0, ports=b"8080:80"), cnm.InvalidArgumentError, "endpoint 's0': ports b'8080:80' are bytes")
row("ports a docker-py mapping", lambda w: w.base.connect(w.s0, ports={"80/tcp": 8081}), cnm.InvalidArgumentError, "is a mapping; give a list of port specs")
row("ports an int", lambda w: w.base.connect(w.s0, ports=8081), cnm.InvalidArgumentError, "not int 8081")
row("port an int in a list", lambda w: w.base.connect(w.s0, ports=[80]), cnm.InvalidArgumentError, "port 80 is neither a port spec string nor a PortMapping")
row("port number too big", lambda w: w.base.connect(w.s0, ports="99999:80"), cnm.InvalidArgumentError, "endpoint 's0': port spec '99999:80'")
row("port in full-width digits", lambda w: w.base.connect(w.s0, ports=["８０８１:80"]), cnm.InvalidArgumentError, "port spec '８０８１:80'")
row("host port published already", lambda w: w.base.connect(w.s0, ports="8080:80"), cnm.ConflictError, "8080")
row("ports on an internal network", lambda w: w.quiet.connect(w.s0, ports="8081:80"), cnm.InvalidArgumentError, "network 'quiet' is internal")

# ---- lookups ------------------------------------------------------------------------------
row("network lookup by int", lambda w: w.host.network(5), cnm.InvalidArgumentError, "network name must be a string, not int 5")
row("network lookup by list", lambda w: w.host.network([]), cnm.InvalidArgumentError, "not list []")
row("network lookup unknown", lambda w: w.host.network("nope"), cnm.NotFoundError, "no network named 'nope'")
row("sandbox lookup by None", lambda w: w.host.sandbox(None), cnm.InvalidArgumentError, "sandbox name must be a string, not None")
row("sandbox lookup unknown", lambda w: w.host.sandbox("nope"), cnm.NotFoundError, "no sandbox named 'nope'")
row("endpoint lookup by int", lambda w: w.base.endpoint(5), cnm.InvalidArgumentError, "network 'base': endpoint name must be a string")
row("endpoint lookup unknown", lambda w: w.base.endpoint("nope"), cnm.NotFoundError, "network 'base': no endpoint named 'nope'")

# ---- network modes ------------------------------------------------------------------------
row("network_mode an int", lambda w: w.host.create_sandbox("q1", network_mode=5), cnm.InvalidArgumentError, "sandbox 'q1': network_mode must be 'host', 'none', 'container:NAME', a network's name, a Network or a Sandbox, not int 5")
row("network_mode an unknown network", lambda w: w.host.create_sandbox("q1", network_mode="nope"), cnm.NotFoundError, "sandbox 'q1': network_mode: no network named 'nope'")
row("network_mode container of nobody", lambda w: w.host.create_sandbox("q1", network_mode="container:nope"), cnm.NotFoundError, "no sandbox named 'nope' to share")
row("network_mode a sandbox of another host", lambda w: w.host.create_sandbox("q1", network_mode=w.far_sandbox), cnm.InvalidArgumentError, "belongs to another host")
row("network_mode host with ports", lambda w: w.host.create_sandbox("q1", network_mode="host", ports=["8081:80"]), cnm.InvalidArgumentError, "sandbox 'q1': ip, ip6, mac and ports need a network to connect to (in network mode host)")
row("network_mode none with an ip", lambda w: w.host.create_sandbox("q1", network_mode="none", ip="10.77.0.9"), cnm.InvalidArgumentError, "(in network mode none)")
row("network_mode container with a mac", lambda w: w.host.create_sandbox("q1", network_mode=w.s0, mac="02:00:00:00:00:01"), cnm.InvalidArgumentError, "(in network mode container:s0)")
row("network_mode a network, ip outside it", lambda w: w.host.create_sandbox("q1", network_mode=w.base, ip="10.99.0.5"), cnm.InvalidArgumentError, "10.99.0.5")
row("network_mode a network, port taken", lambda w: w.host.create_sandbox("q1", network_mode="base", ports="8080:80"), cnm.ConflictError, "8080")
row("network_mode a name in use", lambda w: w.host.create_sandbox("s0", network_mode="none"), cnm.ConflictError, "sandbox 's0': a sandbox with that name already exists")
row("connect to the predefined host network", lambda w: w.host.network("host").connect(w.s0), cnm.InvalidArgumentError, "network 'host' is predefined and cannot be connected to")
row("create a second null network", lambda w: w.host.create_network("q1", driver="null"), cnm.InvalidArgumentError, "driver 'null' is only for the predefined network 'none'")

# ---- bulk ---------------------------------------------------------------------------------
row("create_sandboxes of an int", lambda w: w.host.create_sandboxes(5), cnm.InvalidArgumentError, "create_sandboxes: requests must be a list (or other iterable) of sandbox names or SandboxRequests, not int 5")
row("create_sandboxes of one string", lambda w: w.host.create_sandboxes("abc"), cnm.InvalidArgumentError, "not str 'abc'")
row("create_sandboxes network a name", lambda w: w.host.create_sandboxes(["q1"], network="base"), cnm.InvalidArgumentError, "create_sandboxes: network must be a Network, not str 'base'")
row("create_sandboxes network of another host", lambda w: w.host.create_sandboxes(["q1"], network=w.far_network), cnm.InvalidArgumentError, "network 'far' belongs to another host")
row("create_sandboxes request an int", lambda w: w.host.create_sandboxes(["q1", 5]), cnm.InvalidArgumentError, "sandbox name must be a string, not int 5")
row("create_sandboxes request bytes", lambda w: w.host.create_sandboxes([b"q1"]), cnm.InvalidArgumentError, "not bytes b'q1'")
row("create_sandboxes name with a newline", lambda w: w.host.create_sandboxes(["q\n"]), cnm.InvalidArgumentError, "sandbox name 'q\\n'")
row("create_sandboxes name twice", lambda w: w.host.create_sandboxes(["q1", "q1"]), cnm.ConflictError, "sandbox 'q1': a sandbox with that name already exists")
row("create_sandboxes name in use", lambda w: w.host.create_sandboxes(["q1", "s0"]), cnm.ConflictError, "sandbox 's0'")
row("create_sandboxes ports without a network", lambda w: w.host.create_sandboxes([cnm.SandboxRequest("q1", ports="8081:80")]), cnm.InvalidArgumentError, "sandbox 'q1': ip, ip6, mac and ports need a network")
row("create_sandboxes host port published already", lambda w: w.host.create_sandboxes([cnm.SandboxRequest("q1", ports="8080:80")], network=w.base), cnm.ConflictError, "8080")
row("SandboxRequest name with a newline", lambda w: cnm.SandboxRequest("q\n"), cnm.InvalidArgumentError, "sandbox name 'q\\n'")
row("SandboxRequest ip an int", lambda w: cnm.SandboxRequest("q1", ip=5), cnm.InvalidArgumentError, "sandbox 'q1': ip must be a string, an IPv4Address or an IPv6Address, not int 5")
row("SandboxRequest ip not an address", lambda w: cnm.SandboxRequest("q1", ip="10.77.0.256"), cnm.InvalidArgumentError, "sandbox 'q1': ip '10.77.0.256'")
row("SandboxRequest mac not a MAC", lambda w: cnm.SandboxRequest("q1", mac="zz"), cnm.InvalidArgumentError, "sandbox 'q1': 'zz' is not a unicast MAC")
row("SandboxRequest ports bytes", lambda w: cnm.SandboxRequest("q1", ports=b"8081:80"), cnm.InvalidArgumentError, "sandbox 'q1': ports b'8081:80' are bytes")
row("SandboxRequest ports None", lambda w: cnm.SandboxRequest("q1", ports=None), cnm.InvalidArgumentError, "sandbox 'q1': ports must be")
row("delete_sandboxes of names", lambda w: w.host.delete_sandboxes(["s0"]), cnm.InvalidArgumentError, "delete_sandboxes: sandbox must be a Sandbox, not str 's0'")
row("delete_sandboxes of one sandbox", lambda w: w.host.delete_sandboxes(w.s0), cnm.InvalidArgumentError, "delete_sandboxes: sandboxes must be a list")
row("delete_sandboxes of one name", lambda w: w.host.delete_sandboxes("s0"), cnm.InvalidArgumentError, "not str 's0'")
row("delete_sandboxes of another host's", lambda w: w.host.delete_sandboxes([w.s0, w.far_sandbox]), cnm.InvalidArgumentError, "sandbox 'far' belongs to another host")


class Worlds:
    """The shared World, made again after a row that failed (and so may have
    changed it), so that one failure does not fail every row after it."""

    def __init__(self) -> None:
        self.current: World | None = None
        self.dirty = False

    def get(self) -> World:
        if self.current is not None and self.dirty:
            self.close()
        if self.current is None:
            self.current = World()
            self.before = (self.current.kernel(), self.current.books())
        self.dirty = True  # until the row using it passes
        return self.current

    def close(self) -> None:
        if self.current is not None:
            world, self.current = self.current, None
            world.close()


@pytest.fixture(scope="module")
def worlds():
    holder = Worlds()
    try:
        yield holder
    finally:
        holder.close()


def spy_on_creation(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, every namespace (and sandbox mount directory) cnm begins to make."""
    made: list[str] = []
    namespace_create, mounts_create = Namespace.create, MountDir.create

    def spy_namespace(cls, name, *args, **kwargs):
        made.append(name)
        return namespace_create(name, *args, **kwargs)

    def spy_mounts(cls, token):
        made.append(f"mounts {token}")
        return mounts_create(token)

    monkeypatch.setattr(Namespace, "create", classmethod(spy_namespace))
    monkeypatch.setattr(MountDir, "create", classmethod(spy_mounts))
    return made


def test_the_table_is_big_enough():
    assert len(ROWS) >= 60


@pytest.mark.parametrize(("call", "error", "words"), ROWS)
def test_bad_input_is_refused_before_any_change(worlds, monkeypatch, call, error, words):
    world = worlds.get()
    begun = spy_on_creation(monkeypatch)
    with pytest.raises(error) as caught:
        call(world)
    exc = caught.value
    # Bad input is a wrong value or type (ValueError) or an unknown name (LookupError), never anything else.
    assert issubclass(error, (cnm.InvalidArgumentError, cnm.NotFoundError))
    assert isinstance(exc, cnm.CNMError)
    assert isinstance(exc, LookupError if issubclass(error, cnm.NotFoundError) else ValueError)
    assert words in str(exc), f"{words!r} is not in {str(exc)!r}"
    assert begun == [], f"namespaces begun: {begun}"
    kernel, books = worlds.before
    assert world.books() == books
    changed = diff(kernel, world.kernel())
    assert not changed, changed
    worlds.dirty = False
