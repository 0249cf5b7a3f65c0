"""Behaviour 6: teardown removes everything, is idempotent, and reports failures together."""

from __future__ import annotations

import errno
import os

import pytest

import cnm
from cnm.kernel import Rtnl
from tests.kernelstate import diff, snapshot


def _build(host):
    net = host.create_network("web")
    internal = host.create_network("db", internal=True)
    sandboxes = []
    for i in range(4):
        s = host.create_sandbox(f"s{i}")
        net.connect(s, ports=[f"{8000 + i}:80", f"{9000 + i}:53/udp"])
        internal.connect(s)
        sandboxes.append(s)
    return net, internal, sandboxes


def test_deleting_everything_returns_the_host_namespace_to_its_first_state(host):
    before = snapshot(host.namespace.name)
    net, internal, sandboxes = _build(host)
    built = snapshot(host.namespace.name)
    assert "cnm-" in built["nftables"] and len(built["links"]) > len(before["links"])
    for s in sandboxes:
        s.delete()
    net.delete()
    internal.delete()
    assert not diff(before, snapshot(host.namespace.name))
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"cnm-{host.token}-sb-")]


def test_close_removes_every_namespace_and_is_idempotent():
    host = cnm.Host.isolated()
    _build(host)
    names = [host.namespace.name, host.outside.namespace.name] + [s.namespace.name for s in host.sandboxes]
    assert all(os.path.exists(f"/run/netns/{n}") for n in names)
    host.close()
    assert [n for n in names if os.path.exists(f"/run/netns/{n}")] == []
    host.close()
    assert host.networks == [] or all(n._deleted for n in host.networks)


def test_close_goes_on_past_failures_and_reports_them_together(monkeypatch):
    host = cnm.Host.isolated()
    net, internal, sandboxes = _build(host)
    real_delete = Rtnl.delete_link
    refused = []

    def refuse_bridges(self, index, what):
        if "bridge" in what:
            refused.append(what)
            raise cnm.KernelError(errno.EBUSY, f"{what}: injected refusal")
        return real_delete(self, index, what)

    monkeypatch.setattr(Rtnl, "delete_link", refuse_bridges)
    names = [host.namespace.name, host.outside.namespace.name] + [s.namespace.name for s in sandboxes]
    with pytest.raises(cnm.TeardownError) as info:
        host.close()
    assert len(refused) == 2
    assert len(info.value.exceptions) == 2
    assert all(isinstance(e, cnm.KernelError) for e in info.value.exceptions)
    # Everything else still went: the namespaces (and with the host's, the refused bridges).
    assert [n for n in names if os.path.exists(f"/run/netns/{n}")] == []
    host.close()  # a second close does nothing, and raises nothing


def test_sandbox_delete_is_idempotent_and_cheap_path_leaves_no_veth(host):
    net = host.create_network("web")
    sandbox = host.create_sandbox("a")
    endpoint = net.connect(sandbox)
    host_links_before = {l.name for l in host._rtnl.links()}
    assert f"veth{endpoint.id[:7]}" in host_links_before
    sandbox.delete()
    sandbox.delete()
    assert f"veth{endpoint.id[:7]}" not in {l.name for l in host._rtnl.links()}
    assert net.endpoints == []
