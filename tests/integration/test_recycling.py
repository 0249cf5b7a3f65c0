"""A deleted sandbox's address and host ports are reused only once the kernel has removed its veth.

``sandbox.delete()`` returns once the kernel has been told; the kernel takes
the veth apart a little later. These tests watch the host namespace's link
notifications (a netlink socket of the test's own, reading what the kernel
announces in the order it happens) while sandboxes come and go on a tiny
subnet, and check that no veth carrying a recycled address (or host port)
appears before the veth that had it before is gone.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from cnm.drivers.bridge import host_end_name

_RTMGRP_LINK = 1
_RTM_NEWLINK, _RTM_DELLINK = 16, 17
_IFLA_IFNAME = 3


class LinkEvents:
    """Every link notification in *owner*'s namespace, in the kernel's order: (type, name)."""

    def __init__(self, owner) -> None:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            s.bind((0, _RTMGRP_LINK))
            return s

        self.sock = owner.call(make)
        self.sock.settimeout(0.1)
        self.events: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            offset = 0
            while offset + 16 <= len(data):
                length, mtype = struct.unpack_from("=IH", data, offset)
                if mtype in (_RTM_NEWLINK, _RTM_DELLINK):
                    self.events.append((mtype, _ifname(data[offset + 32 : offset + length])))
                offset += (length + 3) & ~3

    def stop(self) -> list[tuple[int, str]]:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return self.events


def _ifname(attrs: bytes) -> str:
    offset = 0
    while offset + 4 <= len(attrs):
        length, kind = struct.unpack_from("=HH", attrs, offset)
        if length < 4:
            break
        if kind == _IFLA_IFNAME:
            return attrs[offset + 4 : offset + length].rstrip(b"\0").decode()
        offset += (length + 3) & ~3
    return ""


def _assert_each_holder_went_before_the_next_came(holders: dict[object, list[str]], events) -> None:
    first_seen: dict[str, int] = {}
    gone_at: dict[str, int] = {}
    for position, (mtype, name) in enumerate(events):
        if mtype == _RTM_NEWLINK:
            first_seen.setdefault(name, position)
        else:
            gone_at.setdefault(name, position)
    reuses = 0
    for thing, names in holders.items():
        for old, new in zip(names, names[1:]):
            assert old in gone_at, f"{thing}: the veth {old} that had it never went"
            assert gone_at[old] < first_seen[new], f"{thing}: {new} appeared before {old} was gone"
            reuses += 1
    assert reuses  # the loop really recycled something


@pytest.mark.parametrize("ports", [False, True], ids=["addresses", "addresses-and-ports"])
def test_a_tight_delete_create_loop_on_a_29_never_meets_the_old_veth(host, ports):
    net = host.create_network("tiny", subnet="10.99.0.0/29")  # five addresses for sandboxes
    watch = LinkEvents(host)
    by_address: dict[object, list[str]] = {}
    by_port: dict[object, list[str]] = {}
    live = []
    for i in range(30):
        if len(live) == 5:
            live.pop(0).delete()  # and at once, a new one needs what it had
        sandbox = host.create_sandbox(f"s{i}")
        endpoint = net.connect(sandbox, ports=[f"{9000 + i % 6}:80"] if ports else [])
        veth = host_end_name(endpoint.id)
        by_address.setdefault(endpoint.ip, []).append(veth)
        for published in endpoint.published:
            by_port.setdefault(published.host_port, []).append(veth)
        live.append(sandbox)
    for sandbox in live:
        sandbox.delete()
    host.settle()
    events = watch.stop()
    _assert_each_holder_went_before_the_next_came(by_address, events)
    if ports:
        _assert_each_holder_went_before_the_next_came(by_port, events)
    assert not [e for e in net.endpoints]


def test_deleted_sandboxes_release_what_they_held_once_the_kernel_is_done(host):
    """No allocation needs to fail for the books to catch up: the next one settles first."""
    net = host.create_network("web", subnet="10.98.0.0/24")
    sandboxes = [host.create_sandbox(f"s{i}") for i in range(5)]
    for s in sandboxes:
        net.connect(s)
    taken = [s.address(net).ip for s in sandboxes]
    for s in sandboxes:
        s.delete()
    assert len(host._services.dying) > 0  # held: the kernel has not confirmed yet
    deadline = time.monotonic() + 10
    while [l for l in host._services.rtnl.links() if l.kind == "veth" and l.master]:  # wait for the kernel, not for cnm
        assert time.monotonic() < deadline
        time.sleep(0.01)
    fresh = host.create_sandbox("fresh")
    assert net.connect(fresh).ip == taken[0]  # the lowest address is free again
    assert len(host._services.dying) == 0


CHILD = """
import json, subprocess, cnm
with cnm.Host() as machine:  # this process's namespace: the isolated host's, here
    net = machine.create_network("web")
    sandboxes = [machine.create_sandbox(f"s{i}") for i in range(20)]
    for s in sandboxes:
        net.connect(s, ports=["80"])
    for s in sandboxes:
        s.delete()  # returns before the kernel is done
    dying = len(machine._services.dying)
links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
print(json.dumps({"dying": dying, "links": [l.split(": ")[1].split("@")[0] for l in links.splitlines()], "tables": tables}))
"""


def test_a_host_closed_right_after_a_delete_loop_waits_and_leaves_nothing(host):
    """``cnm.Host()`` in a namespace of its own (a child process started in the
    isolated host's): its close after fast deletes still leaves only what was there."""
    import json
    import sys

    before = {l.name for l in host._services.rtnl.links()}
    done = host.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    assert report["dying"] > 0  # the close really had dying veths to wait for
    assert set(report["links"]) == before
    assert report["tables"] == ""  # the child's table is gone (the isolated host has made none yet)


def test_an_endpoint_deleted_after_its_sandbox_keeps_its_address_until_the_veth_is_gone(host, monkeypatch):
    """An endpoint made apart from its sandbox outlives it: deleting it then
    must not hand its address out while the veth of its last join is dying."""
    from cnm.kernel import Rtnl

    net = host.create_network("web", subnet="10.97.0.0/29")
    endpoint = net.create_endpoint("e")
    sandbox = host.create_sandbox("a")
    endpoint.join(sandbox)
    veth = host._services.rtnl.link_index(host_end_name(endpoint.id))
    real_wait_gone = Rtnl.wait_gone
    # As far as cnm can see, the kernel has not removed the veth yet.
    monkeypatch.setattr(Rtnl, "wait_gone", lambda self, indexes, timeout, stall=None: [*real_wait_gone(self, indexes, 0), veth])
    sandbox.delete()
    endpoint.delete()
    assert net.create_endpoint("next").ip != endpoint.ip
    monkeypatch.undo()
    host.settle()
    assert net.create_endpoint("after").ip == endpoint.ip


def test_a_failing_release_is_retried_and_blocks_nothing_else(host, monkeypatch):
    """A release that fails (a third-party IPAM, say) stays queued and is
    reported by the next wait, not by unrelated allocations."""
    import cnm

    web, other = host.create_network("web"), host.create_network("other")
    a = host.create_sandbox("a")
    held = web.connect(a).ip
    pool = host._services.networks["web"].pools[4]
    pool_type = type(pool)
    real_release = pool_type.release

    def refuse(self, ip):
        if self is pool:
            raise RuntimeError("injected: release refused")
        return real_release(self, ip)

    monkeypatch.setattr(pool_type, "release", refuse)
    a.delete()
    with pytest.raises(cnm.TeardownError, match="settle"):
        host.settle()  # the kernel is done; the release is not
    other.connect(host.create_sandbox("b"))  # another network's allocation goes ahead
    monkeypatch.undo()
    host.settle()  # retried, and it goes through now
    assert len(host._services.dying) == 0
    assert web.create_endpoint("again").ip == held
