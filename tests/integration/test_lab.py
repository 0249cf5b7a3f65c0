"""cnm.Lab: several isolated hosts on one underlay, with one outside, proved with traffic."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import cnm
from cnm.testing import FaultInjector, Injected
from tests.integration.traffic import REFUSED_TIMEOUT, Server, tcp_hello
from tests.kernelstate import namespaces

ROOT = Path(__file__).resolve().parents[2]


def test_hosts_share_one_underlay_and_one_outside(lab):
    h1, h2, h3 = lab.hosts
    assert [(h.name, str(h.address.ip), str(h.address6.ip)) for h in lab.hosts] == [
        ("h1", "198.18.0.2", "2001:2::2"), ("h2", "198.18.0.3", "2001:2::3"), ("h3", "198.18.0.4", "2001:2::4"),
    ]  # fmt: skip
    assert lab.host("h2") is h2 and h1.outside.namespace.path == lab.outside.namespace.path
    with Server(h2, 9000) as server:
        assert tcp_hello(h1, h2.address.ip, 9000) == b"hello"
    assert server.peers == [("198.18.0.2", server.peers[0][1])]  # straight across, no NAT
    with Server(h3, 9000, address="::") as server:
        assert tcp_hello(h2, h3.address6.ip, 9000) == b"hello"
    assert server.peers[0][0] == "2001:2::3"
    with Server(lab.outside, 80) as server:
        assert tcp_hello(h3, lab.outside.address.ip, 80) == b"hello"
    assert server.peers[0][0] == "198.18.0.4"


def test_a_published_port_on_one_host_is_reached_from_the_others_and_the_outside(lab):
    h1, h2, h3 = lab.hosts
    web = h3.create_network("web", subnet="10.40.0.0/24")
    server_box = h3.create_sandbox("web", network_mode=web, ports=["8080:80"])
    with Server(server_box, 80, count=3) as server:
        assert tcp_hello(h1, h3.address.ip, 8080) == b"hello"
        assert tcp_hello(lab.outside, h3.address.ip, 8080) == b"hello"
        # A sandbox of another host, masqueraded as its host on the way.
        mine = h1.create_network("mine", subnet="10.41.0.0/24")
        client = h1.create_sandbox("client", network_mode=mine)
        assert tcp_hello(client, h3.address.ip, 8080) == b"hello"
    assert [p[0] for p in server.peers] == ["198.18.0.2", "198.18.0.1", "198.18.0.2"]


def test_macvlan_puts_sandboxes_of_two_hosts_on_one_wire(lab):
    h1, h2, _ = lab.hosts
    nets = [
        h.create_network("lan", "macvlan", subnet="198.18.0.0/24", gateway="198.18.0.1", ip_range=r,
                         options={"parent": h.uplink})  # fmt: skip
        for h, r in ((h1, "198.18.0.128/26"), (h2, "198.18.0.192/26"))
    ]
    a = h1.create_sandbox("a", network_mode=nets[0])
    b = h2.create_sandbox("b", network_mode=nets[1])
    assert (str(a.address(nets[0]).ip), str(b.address(nets[1]).ip)) == ("198.18.0.128", "198.18.0.192")
    with Server(b, 7000) as server:
        assert tcp_hello(a, "198.18.0.192", 7000) == b"hello"
    assert server.peers[0][0] == "198.18.0.128"


def test_closing_one_host_takes_it_off_the_underlay_and_the_lab_leaves_nothing():
    before = namespaces()
    lab = cnm.Lab(2)
    try:
        h1, h2 = lab.hosts
        assert [h.name for h in lab.hosts] == ["h1", "h2"]
        with Server(h2, 9000):
            assert tcp_hello(h1, h2.address.ip, 9000) == b"hello"
        tunnels = {h1.tunnels.name, h2.tunnels.name}
        assert tunnels == {f"cnm-{h1.token}-tunnels", f"cnm-{h2.token}-tunnels"} and tunnels <= set(namespaces())
        h2.close()
        assert tunnels & set(namespaces()) == {h1.tunnels.name}  # h2's went with it
        with pytest.raises(OSError):
            tcp_hello(h1, "198.18.0.3", 9000, timeout=REFUSED_TIMEOUT)
        with Server(lab.outside, 80):
            assert tcp_hello(h1, lab.outside.address.ip, 80) == b"hello"
    finally:
        lab.close()
    lab.close()  # idempotent
    assert namespaces() == before
    with pytest.raises(cnm.ClosedError):
        lab.outside.run(["true"])


def test_making_a_lab_is_all_or_nothing():
    """A failure at any kernel step of making a two-host lab leaves no namespace behind."""
    k = 1
    while True:
        before = namespaces()
        with FaultInjector(k, after=True) as injector:
            try:
                lab = cnm.Lab(2)
            except (cnm.CNMError, Injected):
                assert injector.fired
            else:
                lab.close()
                break
        assert namespaces() == before, f"step {k}: left {set(namespaces()) - set(before)}"
        k += 1
        assert k < 80
    assert k > 30  # the outside, the data plane and their bridges, then per host its namespaces, tunnel namespace and data link, uplink and firewall (36 here)


@pytest.mark.parametrize(
    "hosts, error, words",
    [
        (0, cnm.InvalidArgumentError, "0 hosts; a lab has 1 to 200"),
        (201, cnm.InvalidArgumentError, "201 hosts"),
        (["a", "a"], cnm.ConflictError, "'a' given more than once"),
        ("h1", cnm.InvalidArgumentError, "a count or a list of host names, not str 'h1'"),
        (True, cnm.InvalidArgumentError, "not bool True"),
        (["ok", "no good"], cnm.InvalidArgumentError, "host name 'no good'"),
    ],
)
def test_bad_labs_are_refused_before_anything_is_made(hosts, error, words):
    before = namespaces()
    with pytest.raises(error) as caught:
        cnm.Lab(hosts)
    assert words in str(caught.value)
    assert namespaces() == before


def test_gc_removes_what_a_dead_process_s_lab_left():
    before = namespaces()
    child = "import cnm, os\nlab = cnm.Lab(2)\nprint(lab.token, flush=True)\nos._exit(0)\n"
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr
    assert namespaces() != before  # the dead child's lab is still there...
    cnm.gc()
    assert namespaces() == before  # ...until gc
