"""The example driver of examples/p2p_driver.py, registered as a third party would
register it, passes the real-kernel checks the built-in driver passes: traffic,
teardown with nothing left, and all-or-nothing at every kernel step."""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

import pytest

import cnm
from cnm.drivers import DRIVERS
from tests.integration.test_all_or_nothing import _sweep
from tests.kernelstate import snapshot

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def p2p():
    spec = importlib.util.spec_from_file_location("p2p_driver", ROOT / "examples" / "p2p_driver.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["p2p_driver"] = module
    spec.loader.exec_module(module)
    DRIVERS.register("p2p", module.PointToPointDriver)
    yield module
    DRIVERS.unregister("p2p")


def _links(host):
    return sorted(l.name for l in host._services.rtnl.links())


def _talk(client, server, ip: str, port: int) -> bytes:
    listener = server.call(lambda: socket.create_server((ip, port)))
    try:
        with client.call(lambda: socket.create_connection((ip, port), timeout=5)) as conn:
            peer, _ = listener.accept()
            conn.sendall(b"ping")
            with peer:
                return peer.recv(10)
    finally:
        listener.close()


def test_sandboxes_on_the_example_driver_reach_each_other_and_the_host(host, p2p):
    net = host.create_network("routed", "p2p", subnet="10.77.0.0/24")
    a, b = host.create_sandbox("a"), host.create_sandbox("b")
    net.connect(a)
    net.connect(b)
    assert net.driver == "p2p"
    assert _talk(a, b, str(b.address(net).ip), 7000) == b"ping"
    assert _talk(host, a, str(a.address(net).ip), 7001) == b"ping"
    routes = a.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    assert "default via 169.254.1.1 dev eth0" in routes
    assert a.inspect()["Networks"]["routed"]["Gateway"] == "169.254.1.1", "inspect shows the gateway the driver gave"
    assert not [l for l in host._services.rtnl.links() if l.kind == "bridge"], "no bridge: every link is a veth of its own"


def test_the_example_driver_leaves_nothing(host, p2p):
    before = _links(host)
    net = host.create_network("routed", "p2p", subnet="10.77.0.0/24")
    a = host.create_sandbox("a")
    net.connect(a)
    assert len(_links(host)) == len(before) + 1
    net.disconnect(a)
    assert _links(host) == before, "leave deletes the link (the sandbox stays)"
    net.connect(a)
    a.delete()
    host.settle()
    net.delete()
    assert _links(host) == before


@pytest.mark.parametrize("after", [False, True], ids=["refused", "failed-after"])
def test_the_example_driver_is_all_or_nothing(host, p2p, monkeypatch, after):
    net = host.create_network("routed", "p2p", subnet="10.77.0.0/24")
    sandbox = host.create_sandbox("a")
    steps = _sweep(host, monkeypatch, lambda: net.connect(sandbox), after, [sandbox])
    assert steps >= 3  # the veth, its sysctl and route, the sandbox end
    assert str(sandbox.address(net).ip) == "10.77.0.2"


def test_the_example_driver_refuses_options_before_any_change(host, p2p):
    before = snapshot(host.namespace.name)
    with pytest.raises(cnm.InvalidArgumentError, match="the p2p driver takes no options"):
        host.create_network("routed", "p2p", options={"mtu": "1400"})
    assert snapshot(host.namespace.name) == before and host.networks[2:] == []
