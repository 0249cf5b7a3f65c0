"""Overlay networks across the hosts of a cnm.Lab: VXLAN on the lab's data plane, proved with traffic."""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Network

import pytest

import cnm
from cnm.api import isolated
from cnm.drivers.overlay import FIRST_VNI, LocalPeers, OverlayDriver
from cnm.ipam.default import ula_prefix
from cnm.testing import FaultInjector, Injected, check_driver, kernel_state
from tests.integration.test_all_or_nothing import _host_state
from tests.integration.traffic import Server, tcp_hello, udp_ping
from tests.kernelstate import diff

ETH_P_ALL = 0x0003


def _fdb(host: cnm.Host, vni: int = FIRST_VNI) -> str:
    """What ``bridge fdb show dev vxVNI`` says in *host* (inspection only)."""
    argv = ["nsenter", f"--net={host.namespace.path}", "bridge", "fdb", "show", "dev", f"vx{vni}"]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def _link(owner, name: str) -> str:
    return owner.run(["ip", "-d", "link", "show", name], capture_output=True, text=True, check=True).stdout


def test_sandboxes_on_two_hosts_reach_each_other_over_the_overlay(lab):
    h1, h2, h3 = lab.hosts
    nets = lab.create_network("ov", subnet="10.200.0.0/24")
    a = h1.create_sandbox("a", network_mode=nets[0])
    b = h2.create_sandbox("b", network_mode=nets[1])
    c = h3.create_sandbox("c", network_mode=nets[2])
    addresses = [str(s.address(n).ip) for s, n in zip((a, b, c), nets)]
    assert addresses == ["10.200.0.2", "10.200.0.64", "10.200.0.128"]  # each host its own range
    with Server(b, 7000) as server:
        assert tcp_hello(a, "10.200.0.64", 7000) == b"hello"
    assert server.peers[0][0] == "10.200.0.2"  # no NAT inside the overlay
    with Server(a, 5353, udp=True) as server:
        assert udp_ping(c, "10.200.0.2", 5353) == b"pong:ping"
    assert server.peers[0][0] == "10.200.0.128"
    # MTU 1450 end to end, one VNI per network
    assert "mtu 1450" in _link(a, "eth0") and "mtu 1450" in _link(h1, f"vx{FIRST_VNI}")
    assert f"vxlan id {FIRST_VNI} local 198.18.1.2" in _link(h1, f"vx{FIRST_VNI}") and "dstport 4789" in _link(h1, f"vx{FIRST_VNI}")
    other = lab.create_network("ov2", subnet="10.201.0.0/24")
    assert f"vxlan id {FIRST_VNI + 1} local 198.18.1.3" in _link(h2, f"vx{FIRST_VNI + 1}")
    assert [n.inspect()["Driver"] for n in other] == ["overlay"] * 3


def test_the_traffic_crosses_the_data_plane_as_vxlan(lab):
    h1, h2, _ = lab.hosts
    nets = lab.create_network("ov", subnet="10.200.0.0/24")
    a = h1.create_sandbox("a", network_mode=nets[0])
    b = h2.create_sandbox("b", network_mode=nets[1])
    seen: list[tuple[str, str, int]] = []
    sniffer = lab.dataplane.run(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)))
    sniffer.bind(("dp-2", 0))  # h1's data link, seen from the data plane's side
    sniffer.settimeout(0.2)
    stop = threading.Event()

    def sniff() -> None:
        while not stop.is_set():
            try:
                frame = sniffer.recv(2048)
            except TimeoutError:
                continue
            if frame[12:14] == b"\x08\x00" and frame[23] == 17:  # IPv4, UDP
                ihl = (frame[14] & 0x0F) * 4
                port = int.from_bytes(frame[14 + ihl + 2 : 14 + ihl + 4], "big")
                seen.append((socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34]), port))

    thread = threading.Thread(target=sniff, daemon=True)
    thread.start()
    try:
        with Server(b, 7000):
            assert tcp_hello(a, b.address(nets[1]).ip, 7000) == b"hello"
    finally:
        stop.set()
        thread.join()
        sniffer.close()
    assert ("198.18.1.2", "198.18.1.3", 4789) in seen and ("198.18.1.3", "198.18.1.2", 4789) in seen
    assert (str(h1.tunnel_address.ip), str(h2.tunnel_address.ip)) == ("198.18.1.2", "198.18.1.3")


def test_published_ports_on_an_overlay_sandbox_work_as_on_a_bridge(lab):
    h1, h2, _ = lab.hosts
    nets = lab.create_network("ov", subnet="10.200.0.0/24")
    b = h2.create_sandbox("b", network_mode=nets[1], ports=["8080:80"])
    a = h1.create_sandbox("a", network_mode=nets[0])
    with Server(b, 80, count=2) as server:
        assert tcp_hello(lab.outside, h2.address.ip, 8080) == b"hello"
        assert tcp_hello(h1, h2.address.ip, 8080) == b"hello"
    assert [p[0] for p in server.peers] == ["198.18.0.1", "198.18.0.2"]
    with Server(lab.outside, 80) as server:  # outbound: each host NATs its own sandboxes
        assert tcp_hello(a, lab.outside.address.ip, 80) == b"hello"
    assert server.peers[0][0] == "198.18.0.2"


def test_removing_a_host_removes_its_peers_forwarding_entries(lab):
    h1, h2, h3 = lab.hosts
    nets = lab.create_network("ov", subnet="10.200.0.0/24")
    a = h1.create_sandbox("a", network_mode=nets[0])
    b = h2.create_sandbox("b", network_mode=nets[1])
    with Server(b, 7000):
        assert tcp_hello(a, b.address(nets[1]).ip, 7000) == b"hello"  # h1 learns b's MAC behind h2
    assert "dst 198.18.1.3" in _fdb(h1) and "dst 198.18.1.4" in _fdb(h1)
    h2.close()
    assert "198.18.1.3" not in _fdb(h1) and "198.18.1.3" not in _fdb(h3)
    assert "00:00:00:00:00:00 dst 198.18.1.4" in _fdb(h1)  # the others stay
    nets[2].delete()  # deleting the network leaves the overlay too
    assert "198.18.1.4" not in _fdb(h1)


@pytest.mark.parametrize("when", ["before", "after", "midway"])
def test_a_host_joining_the_overlay_is_all_or_nothing_for_its_peers_too(lab, when):
    """A failure at each kernel change of h2 joining (before it, after it, midway through a batch)
    leaves h2 and its tunnel namespace as they were, and h1 without an entry for h2."""
    h1, h2, _ = lab.hosts
    h1.create_network("ov", "overlay", subnet="10.200.0.0/24", ip_range="10.200.0.0/26")
    peer_before, host_before, tunnels_before = _fdb(h1), _host_state(h2), kernel_state(h2.tunnels)
    k = 1
    while True:
        with FaultInjector(k, after=when == "after", midway=when == "midway") as injector:
            try:
                h2.create_network("ov", "overlay", subnet="10.200.0.0/24", ip_range="10.200.0.64/26")
            except (cnm.CNMError, Injected):
                assert injector.fired
            else:
                break
        assert _fdb(h1) == peer_before, f"change {k}: h1's entries changed"
        assert not diff(host_before, _host_state(h2)), f"change {k}: h2 changed"
        assert kernel_state(h2.tunnels) == tunnels_before, f"change {k}: h2's tunnel namespace changed"
        k += 1
        assert k < 50
    assert k >= 5  # the bridge, its sysctl and address, the vxlan, h1's entry, h2's entry
    assert "00:00:00:00:00:00 dst 198.18.1.3" in _fdb(h1) and "00:00:00:00:00:00 dst 198.18.1.2" in _fdb(h2)


def _send_udp(address: str) -> Callable[[], None]:
    def send() -> None:
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"x", (address, 9))

    return send


def test_each_host_keeps_the_anycast_gateway_to_itself(lab):
    """The gateway is on every host with one MAC. ARP for it is not flooded to the
    peers (each would answer, and note the asker as its neighbour), and what the host
    itself sends into the bridge (with that MAC) does not leave by the tunnel: a peer
    would learn its own gateway MAC there."""
    h1, h2, _ = lab.hosts
    nets = lab.create_network("ov", subnet="10.200.0.0/24")
    a = h1.create_sandbox("a", network_mode=nets[0])
    b = h2.create_sandbox("b", network_mode=nets[1])
    a_ip, b_ip = str(a.address(nets[0]).ip), str(b.address(nets[1]).ip)
    a.call(_send_udp("10.200.0.1"))  # a asks for its gateway's MAC
    h1.call(_send_udp(b_ip))  # h1 itself asks for b's, from the gateway's MAC
    with Server(b, 7000):  # what crosses the tunnel is learned by now
        assert tcp_hello(a, b_ip, 7000) == b"hello"
    gateway_mac = a.run(["ip", "neigh", "show", "10.200.0.1"], capture_output=True, text=True, check=True).stdout.split()[-2]
    a_mac = a.endpoints[0].mac
    fdb = _fdb(h2)
    assert f"{a_mac} dst {h1.tunnel_address.ip} " in fdb  # learning works in this window
    assert gateway_mac not in fdb, fdb
    neighbours = h2.run(["ip", "neigh", "show", "dev", nets[1].interface], capture_output=True, text=True, check=True).stdout
    assert a_ip not in neighbours, neighbours


def _arp_request(sender_mac: str, sender_ip: str, target_ip: str) -> bytes:
    """A broadcast ARP request: who has *target_ip*, tell *sender_ip* at *sender_mac*."""
    mac = bytes.fromhex(sender_mac.replace(":", ""))
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, socket.inet_aton(sender_ip), b"\0" * 6, socket.inet_aton(target_ip))
    return b"\xff" * 6 + mac + b"\x08\x06" + arp


def test_a_remote_sandbox_cannot_make_a_host_note_a_neighbour(lab):
    """Root in a sandbox on h1 asks, across the tunnel, for h2's uplink address with a sender
    of its choosing: h2 does not answer it, so no neighbour entry (on its overlay bridge) sends
    h2's traffic for that address into the tunnel."""
    h1, h2, _ = lab.hosts
    nets = lab.create_network("ov", subnet="10.200.0.0/24")
    a = h1.create_sandbox("a", network_mode=nets[0])
    b = h2.create_sandbox("b", network_mode=nets[1])
    frame = _arp_request(a.endpoints[0].mac, "10.200.0.99", str(h2.address.ip))

    def send() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind(("eth0", 0))
            for _ in range(3):
                s.send(frame)

    with Server(b, 7000):  # the frames cross: b (on h2) learns nothing from them, but the tunnel works
        a.call(send)
        assert tcp_hello(a, b.address(nets[1]).ip, 7000) == b"hello"
    assert f"{a.endpoints[0].mac} dst {h1.tunnel_address.ip} " in _fdb(h2)  # what a sent reached h2
    neighbours = h2.run(["ip", "neigh", "show", "dev", nets[1].interface], capture_output=True, text=True, check=True).stdout
    assert "10.200.0.99" not in neighbours, neighbours


def test_an_overlay_carries_ipv6_across_hosts(lab):
    """Dual-stack: one IPv6 /64 for the whole lab (picked by the lab), one range of it per host,
    the same gateway everywhere, IPv6 across hosts with no NAT and out with it; ND for the
    gateway stays on the host. And an IPv6-only overlay, on a subnet given."""
    h1, h2, _ = lab.hosts
    nets = lab.create_network("ov", subnet="10.200.0.0/24", ipv6=True)
    assert len({(n.subnet6, n.gateway6) for n in nets}) == 1 and nets[0].subnet6.prefixlen == 64
    assert nets[0].subnet6.subnet_of(ula_prefix(f"lab-{lab.token}"))
    a = h1.create_sandbox("a", network_mode=nets[0])
    b = h2.create_sandbox("b", network_mode=nets[1])
    a6, b6 = a.endpoints[0].addresses[1].ip, b.endpoints[0].addresses[1].ip
    assert a6 != b6 and a6 in nets[0].subnet6 and b6 in nets[0].subnet6
    with Server(b, 7000, address="::") as server:
        assert tcp_hello(a, b6, 7000) == b"hello"
    assert server.peers[0][0] == str(a6)  # no NAT inside the overlay
    with Server(lab.outside, 80, address="::") as server:
        assert tcp_hello(a, lab.outside.address6.ip, 80) == b"hello"
    assert server.peers[0][0] == str(h1.address6.ip)  # out behind its host, as on a bridge
    # a asked for its gateway's MAC (neighbour discovery) to reach the outside: h2 did not hear it.
    neighbours = h2.run(["ip", "-6", "neigh", "show", "dev", nets[1].interface], capture_output=True, text=True, check=True).stdout
    assert str(a6) not in neighbours, neighbours
    only6 = lab.create_network("ov6", subnet="fd00:77::/64", ipv4=False, ipv6=True)
    assert [n.subnet for n in only6] == [None] * 3
    c = h1.create_sandbox("c", network_mode=only6[0])
    d = h2.create_sandbox("d", network_mode=only6[1])
    with Server(d, 5353, udp=True, address="::") as server:
        assert udp_ping(c, d.endpoints[0].addresses[0].ip, 5353) == b"pong:ping"
    assert server.peers[0][0] == str(c.endpoints[0].addresses[0].ip)


def test_the_overlay_driver_passes_check_driver():
    check_driver(lambda: OverlayDriver(LocalPeers(), IPv4Address("198.18.0.2")))


def test_the_tunnel_port_cannot_be_published_while_an_overlay_is_there(lab):
    """Found in review: a published 4789/udp would DNAT the peers' tunnel traffic, every network's, to a sandbox."""
    h1, h2, _ = lab.hosts
    web = h1.create_network("web", subnet="10.40.0.0/24")
    nets = lab.create_network("ov", subnet="10.200.0.0/24")
    with pytest.raises(cnm.ConflictError, match="host port 4789/udp is already published by endpoint '\\(the overlay tunnels\\)'"):
        h1.create_sandbox("s", network_mode=web, ports=["4789:4789/udp"])
    ok = h1.create_sandbox("t", network_mode=web, ports=["4790:4789/udp"])  # another host port is fine
    assert [str(p) for p in ok.endpoints[0].published] == ["0.0.0.0:4790->4789/udp"]
    for network in nets:
        network.delete(force=True)
    h1.create_sandbox("s", network_mode=web, ports=["4789:4789/udp"])  # free again with the last overlay


def test_a_lab_checks_what_it_is_given_before_making_anything(lab):
    with pytest.raises(cnm.InvalidArgumentError, match="only overlay networks span the lab"):
        lab.create_network("x", "bridge", subnet="10.9.0.0/24")
    with pytest.raises(cnm.InvalidArgumentError, match="ip_range is the lab's to choose"):
        lab.create_network("x", subnet="10.9.0.0/24", ip_range="10.9.0.0/25")
    with pytest.raises(cnm.InvalidArgumentError, match="subnet 'banana' is not an IP network"):
        lab.create_network("x", subnet="banana")
    with pytest.raises(cnm.InvalidArgumentError, match="subnet 42 is not an IP network"):
        lab.create_network("x", subnet=[42])
    with pytest.raises(cnm.InvalidArgumentError, match="an IPv4 subnet is needed"):
        lab.create_network("x", ipv6=True)
    with pytest.raises(cnm.InvalidArgumentError, match="more than one IPv4 subnet"):
        lab.create_network("x", subnet=["10.9.0.0/24", "10.8.0.0/24"])
    with pytest.raises(cnm.InvalidArgumentError, match="ipv6 must be True or False"):
        lab.create_network("x", subnet="10.9.0.0/24", ipv6="yes")
    with pytest.raises(cnm.InvalidArgumentError, match="too small for 3 hosts"):
        lab.create_network("x", subnet="10.9.0.0/29")
    with pytest.raises(cnm.InvalidArgumentError, match="subnet 'fd00::/64' is IPv6.*ipv6=True enables it"):
        lab.create_network("x", subnet=[IPv4Network("10.9.0.0/24"), IPv6Network("fd00::/64")])  # objects, as one each
    with pytest.raises(cnm.InvalidArgumentError, match="IPv6.*ipv6=True enables it"):
        lab.create_network("x", subnet=["10.9.0.0/24", "fd00:9::/64"])
    assert all(h.networks[2:] == [] for h in lab.hosts)
    with pytest.raises(cnm.NotFoundError, match="firewall"):
        cnm.Lab(2, firewall="nope")
    with pytest.raises(cnm.InvalidArgumentError, match="drivers must be a mapping"):
        cnm.Lab(2, drivers=["x"])


def _vxlan_frame(vni: int, target: str, port: int, payload: bytes) -> bytes:
    """A VXLAN packet's payload: an inner broadcast Ethernet frame carrying UDP to *target*:*port*."""
    udp = struct.pack("!HHHH", 1234, port, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton("10.200.0.250"), socket.inet_aton(target))
    words = struct.unpack("!10H", header)
    total = sum(words)
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    header = header[:10] + struct.pack("!H", ~total & 0xFFFF) + header[12:]
    inner = b"\xff" * 6 + bytes.fromhex("020000000099") + b"\x08\x00" + header + udp
    return struct.pack("!B3xI", 0x08, vni << 8) + inner


def _inject(inside: Callable[[Callable[[], None]], object], vni: int, overlay_ip: str, port: int, vteps: list[str]) -> None:
    """With *inside* (an owner's ``call``, a namespace's ``run``): VXLAN for *vni* carrying UDP to
    *overlay_ip*:*port*, sent to each of *vteps*."""
    frame = _vxlan_frame(vni, overlay_ip, port, b"injected")

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for vtep in vteps:
                for _ in range(3):
                    try:
                        s.sendto(frame, (vtep, 4789))
                    except OSError:
                        pass  # unreachable is what the host wants: the test is what arrives

    inside(send)


def test_without_a_tunnel_namespace_no_sandbox_sends_vxlan_to_its_host_or_through_it():
    """An overlay whose VXLAN socket is on the host itself (no tunnel namespace, as a third
    party may run it). Root in a sandbox on a plain bridge sends VXLAN for the overlay's VNI to
    its gateway and to the host's uplink address: neither reaches the overlay's sandbox; nor
    does VXLAN it sends through the host reach a tunnel end in the outside. (Found in review:
    the kernel's VXLAN socket takes UDP 4789 on every address of the host.) The same frame
    from the outside does arrive: that wire must be trusted, which is why a lab has a data plane."""
    overlay = lambda: OverlayDriver(LocalPeers(), isolated.HOST_ADDRESS.ip)  # noqa: E731
    with cnm.Host.isolated(drivers={"overlay": overlay}) as host:
        ov = host.create_network("ov", "overlay", subnet="10.200.0.0/24")
        victim = host.create_sandbox("v", network_mode=ov)
        target = str(victim.address(ov).ip)
        web = host.create_network("web", subnet="10.40.0.0/24")
        attacker = host.create_sandbox("attacker", network_mode=web)
        for vtep in ("10.40.0.1", str(host.address.ip)):
            with Server(victim, 9999, udp=True) as server:
                _inject(attacker.call, FIRST_VNI, target, 9999, [vtep])
                server.thread.join(1.0)
            assert server.peers == [], f"VXLAN sent to {vtep} reached the overlay"
        with Server(host.outside, 4789, udp=True) as server:
            _inject(attacker.call, FIRST_VNI, target, 9999, [str(host.outside.address.ip)])
            server.thread.join(1.0)
        assert server.peers == [], "VXLAN went through the host"
        with Server(victim, 9999, udp=True) as server:
            _inject(host.outside.call, FIRST_VNI, target, 9999, [str(host.address.ip)])
            server.thread.join(2.0)
        assert server.peers and server.peers[0][0] == "10.200.0.250"


def test_no_one_off_the_data_plane_can_pose_as_a_tunnel_end(lab):
    """The tunnels run on a data plane only the hosts' tunnel namespaces are on. The
    outside, and a macvlan sandbox on the uplinks' wire, both root, send VXLAN to a
    host's uplink address and to its tunnel address (routed via another host): none
    of it reaches the overlay's sandbox, and no sandbox can be put on the data link."""
    h1, h2, h3 = lab.hosts
    nets = lab.create_network("ov", subnet="10.200.0.0/24")
    victim = h2.create_sandbox("v", network_mode=nets[1])
    friend = h1.create_sandbox("f", network_mode=nets[0])
    target = str(victim.address(nets[1]).ip)
    lan = h1.create_network(
        "lan", "macvlan", subnet="198.18.0.0/24", gateway="198.18.0.1", ip_range="198.18.0.128/26", options={"parent": h1.uplink}
    )
    wire = h1.create_sandbox("wire", network_mode=lan)
    vteps = [str(h2.address.ip), str(h2.tunnel_address.ip)]
    for attacker in (lab.outside, wire):
        # Root there: the data plane's addresses routed via another host.
        attacker.run(["ip", "route", "add", "198.18.1.0/24", "via", str(h3.address.ip)], check=True)
        with Server(victim, 9999, udp=True) as server:
            _inject(attacker.call, FIRST_VNI, target, 9999, vteps)
            server.thread.join(1.0)
        assert server.peers == [], f"VXLAN from {attacker!r} reached the overlay"
    # The same frame from a tunnel end does arrive: the test would see an injection.
    with Server(victim, 9999, udp=True) as server:
        _inject(h1.tunnels.run, FIRST_VNI, target, 9999, [str(h2.tunnel_address.ip)])
        server.thread.join(2.0)
    assert server.peers and server.peers[0][0] == "10.200.0.250"
    with pytest.raises(cnm.NotFoundError, match="no such interface"):
        h1.create_network("on-tunnels", "macvlan", subnet="198.18.1.0/24", options={"parent": "eth1"})
    with Server(victim, 7000):
        assert tcp_hello(friend, target, 7000) == b"hello"
