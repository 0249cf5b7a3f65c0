"""Every example in examples/ runs, prints what it promises, and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_example(name: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_quickstart():
    out = run_example("quickstart.py")
    assert "'hello from b' (server saw 172.17.0.2)" in out  # same bridge, no NAT
    assert "'hello from outside' (server saw 198.18.0.2)" in out  # masquerade
    assert out.count("'hello from a'") == 3  # published port: from outside, hairpin, localhost
    assert '"Name": "web"' in out and '"HostPort": "8080"' in out
    assert "torn down: 4 namespaces removed, 0 left" in out


def test_endpoints():
    out = run_example("endpoints.py")
    assert "joined: eth0 10.30.0.10/24 ['127.0.0.1:9000->9000/tcp', '0.0.0.0:49153->53/udp']" in out
    assert "left; address kept: 10.30.0.10/24 sandbox: None" in out
    assert "connected: 10.30.0.128/24" in out
    assert out.count("Error: network") == 3


def test_many():
    out = run_example("many.py")
    assert "built 200 sandboxes in" in out
    assert "first: node0 10.77.0.2/16 last: node199 10.77.0.201/16" in out
    assert "outside -> 198.18.0.2:30199: hello from node199, you are 198.18.0.1" in out
    assert "sandboxes left: 0" in out


def test_dual_stack():
    out = run_example("dual_stack.py")
    assert "reached a (server saw 2001:2::1)" in out  # published on IPv6, no source NAT
    assert "(server saw 2001:2::2, the host's address)" in out  # masquerade over IPv6
    assert "{'HostIp': '::', 'HostPort': '8080'}" in out
    assert out.rstrip().endswith("torn down")


def test_p2p_driver():
    out = run_example("p2p_driver.py")
    assert "b got: hello over p2p from 10.77.0.2" in out
    assert "host routes: 2 (one /32 per sandbox, no bridge)" in out


def test_network_modes():
    out = run_example("network_modes.py")
    assert "networks: [('host', 'host'), ('none', 'null')]" in out
    assert "pod -> 127.0.0.1:9000: hello over the pod's loopback" in out  # container: shares loopback
    assert "outside -> host:8080: hello from app, through the pod's port" in out
    assert "outside -> host:7000: hello from the host network" in out  # host mode, nothing published
    assert "none -> outside: failed: Network is unreachable" in out
    assert out.count("Error: sandbox") == 2
    assert "sandboxes left: ['h', 'n']" in out and out.rstrip().endswith("torn down")


def test_macvlan():
    out = run_example("macvlan.py")
    assert "a: 198.18.0.128/24 MAC" in out and "on eth0" in out
    assert "a -> outside: the outside saw 198.18.0.128 (its own address: no NAT)" in out
    assert out.rstrip().endswith("torn down")


def test_lab():
    out = run_example("lab.py")
    assert "h3 on the underlay at 198.18.0.4/24 and 2001:2::4/64 - tunnels from 198.18.1.4/24" in out
    assert "h1 -> h3:8080: seen from 198.18.0.2" in out
    assert "outside -> h3:8080: seen from 198.18.0.1" in out
    assert "a on h1 -> b on h2: seen from 198.18.0.128" in out  # one wire, no NAT
    assert "x (10.200.0.2) on h1 -> y (10.200.0.128) on h3: seen from 10.200.0.2" in out  # the overlay
    assert out.rstrip().endswith("torn down")


def test_ipvlan():
    out = run_example("ipvlan.py")
    if os.path.exists("/sys/module/ipvlan") or os.path.isdir(f"/lib/modules/{os.uname().release}"):
        assert "a: 198.18.0.128/24 sharing the MAC of eth0" in out
    else:
        assert "no ipvlan here:" in out and "module 'ipvlan'" in out  # the clear refusal
    assert out.rstrip().endswith("torn down")
