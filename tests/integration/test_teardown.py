"""Behaviour 6: teardown removes everything, is idempotent, and reports failures together."""

from __future__ import annotations

import errno
import os

import pytest

import cnm
from cnm.drivers.bridge import host_end_name
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
    assert os.listdir(host._services.mounts.path) == []  # no sandbox namespace is mounted any more


def test_close_removes_every_namespace_and_is_idempotent(host):
    _build(host)
    paths = [host.namespace.path, host.outside.namespace.path] + [s.namespace.path for s in host.sandboxes]
    assert all(os.path.exists(p) for p in paths)
    host.close()
    assert [p for p in paths if os.path.exists(p)] == []
    assert host.networks == [] and host.sandboxes == []
    host.close()
    with pytest.raises(cnm.ClosedError):
        host.create_network("again")


def test_close_goes_on_past_failures_reports_them_together_and_can_be_retried(host, monkeypatch):
    """An isolated host's close deletes its sandbox directory (every sandbox
    namespace at once), the outside's namespace and its own; two of those
    three refuse, the third still goes, and a second close finishes."""
    from cnm.netns import MountDir, Namespace

    _build(host)
    paths = [host.namespace.path, host.outside.namespace.path] + [s.namespace.path for s in host.sandboxes]
    real_delete, real_unmount = Namespace.delete, MountDir.delete

    def refuse_outside(self):
        if self.name.endswith("-outside"):
            raise cnm.KernelError(errno.EBUSY, f"namespace {self.name!r}: injected refusal")
        return real_delete(self)

    def refuse(self):
        raise cnm.KernelError(errno.EBUSY, f"namespace directory {self.path}: injected refusal")

    monkeypatch.setattr(Namespace, "delete", refuse_outside)
    monkeypatch.setattr(MountDir, "delete", refuse)
    with pytest.raises(cnm.TeardownError) as info:
        host.close()
    assert len(info.value.exceptions) == 2
    assert all(isinstance(e, cnm.KernelError) and e.errno == errno.EBUSY for e in info.value.exceptions)
    # Everything else went regardless: the host's own namespace.
    assert [p for p in paths if not os.path.exists(p)] == [host.namespace.path]
    monkeypatch.setattr(Namespace, "delete", real_delete)
    monkeypatch.setattr(MountDir, "delete", real_unmount)
    host.close()  # retries what is left
    assert [p for p in paths if os.path.exists(p)] == []
    assert not os.path.exists(os.path.dirname(paths[-1]))
    host.close()  # and then does nothing


def test_deleting_objects_goes_on_past_failures_and_reports_them_together(host, monkeypatch):
    net, internal, sandboxes = _build(host)
    for s in sandboxes:
        s.delete()
    real_delete = Rtnl.delete_link
    refused = []

    def refuse_bridges(self, index, what):
        if "bridge" in what:
            refused.append(what)
            raise cnm.KernelError(errno.EBUSY, f"{what}: injected refusal")
        return real_delete(self, index, what)

    monkeypatch.setattr(Rtnl, "delete_link", refuse_bridges)
    for network in (net, internal):
        with pytest.raises(cnm.TeardownError) as info:
            network.delete()
        assert len(info.value.exceptions) == 1
    assert len(refused) == 2
    # The bridges stay, so do the networks (their subnets are still in use).
    assert [n.name for n in host.networks] == ["host", "none", "web", "db"]
    monkeypatch.setattr(Rtnl, "delete_link", real_delete)
    net.delete()
    internal.delete()
    assert host.networks[2:] == []


def test_sandbox_delete_is_idempotent_and_cheap_path_leaves_no_veth(host):
    net = host.create_network("web")
    sandbox = host.create_sandbox("a")
    endpoint = net.connect(sandbox)
    host_links_before = {l.name for l in host._services.rtnl.links()}
    assert host_end_name(endpoint.id) in host_links_before
    sandbox.delete()
    sandbox.delete()
    assert net.endpoints == []
    host.settle()  # the kernel removes the veth with the namespace, a little later
    assert host_end_name(endpoint.id) not in {l.name for l in host._services.rtnl.links()}


def test_a_failed_firewall_step_is_retried_and_keeps_the_host_port_reserved(host, monkeypatch):
    from cnm.firewall.nftables import NftablesFirewall

    net = host.create_network("web")
    a, b = host.create_sandbox("a"), host.create_sandbox("b")
    net.connect(a, ports=["8080:80"])
    real_commit = NftablesFirewall._commit
    refusals = []

    def refuse_withdrawals_once(self, batch, what, gone_ok=False):
        if not refusals and any(label.startswith("withdraw") for label in batch.labels.values()):
            refusals.append(what)
            raise cnm.KernelError(errno.EBUSY, f"{what}: injected refusal")
        return real_commit(self, batch, what, gone_ok)

    monkeypatch.setattr(NftablesFirewall, "_commit", refuse_withdrawals_once)
    with pytest.raises(cnm.TeardownError):
        net.disconnect(a)
    assert len(refusals) == 1
    # The forward may still be installed, so its host port and address stay taken.
    assert [e.name for e in net.endpoints] == ["a"]
    with pytest.raises(cnm.ConflictError, match="8080"):
        net.connect(b, ports=["8080:80"])
    net.disconnect(a)  # the retry removes what was left
    assert net.endpoints == []
    net.connect(b, ports=["8080:80"])
    elements = snapshot(host.namespace.name)["nftables"]
    assert elements.count(": 172.17.0.") == 1  # only b's forward is in the map


def test_an_interrupted_close_can_be_finished(host, monkeypatch):
    from cnm.netns import MountDir

    _build(host)
    paths = [host.namespace.path, host.outside.namespace.path] + [s.namespace.path for s in host.sandboxes]
    real_unmount = MountDir.delete

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(MountDir, "delete", interrupted)
    with pytest.raises(KeyboardInterrupt):
        host.close()
    assert all(os.path.exists(p) for p in paths)  # the sandbox directory comes first
    monkeypatch.setattr(MountDir, "delete", real_unmount)
    host.close()
    assert [p for p in paths if os.path.exists(p)] == []


def test_deleting_a_sandbox_takes_the_cheap_path(host, monkeypatch):
    net = host.create_network("web")
    sandboxes = [host.create_sandbox(f"s{i}") for i in range(3)]
    for s in sandboxes:
        net.connect(s)
    deleted = []
    real_delete = Rtnl.delete_link
    monkeypatch.setattr(Rtnl, "delete_link", lambda self, index, what: deleted.append(what) or real_delete(self, index, what))
    for s in sandboxes:
        s.delete()  # the namespace goes, and its veth with it: no link is deleted by itself
    assert net.endpoints == []
    host.settle()
    assert deleted == []
    assert not [l for l in host._services.rtnl.links() if l.kind == "veth" and l.master]


def test_a_deleted_sandboxs_address_and_port_stay_taken_until_its_veth_is_gone(host, monkeypatch):
    net = host.create_network("web")
    a, b = host.create_sandbox("a"), host.create_sandbox("b")
    first = net.connect(a, ports=["8080:80"])
    veth = _veth_index(host, first)
    real_wait_gone = Rtnl.wait_gone

    def slow_kernel(self, indexes, timeout, stall=None):
        """The veth outlives every check; a wait for it is cut short by Ctrl-C."""
        if timeout:
            raise KeyboardInterrupt
        return [i for i in real_wait_gone(self, indexes, 0)] + [veth]

    monkeypatch.setattr(Rtnl, "wait_gone", slow_kernel)
    a.delete()  # returns at once: nothing waits for the kernel
    assert net.endpoints == [] and host.sandboxes == [b]  # names go at once...
    second = net.connect(b)
    assert second.ip != first.ip  # ...the address does not (the lowest free one would be first.ip)
    c = host.create_sandbox("a")  # the name is free again
    with pytest.raises(KeyboardInterrupt):  # the host port is still taken: cnm waits for the kernel
        net.connect(c, ports=["8080:80"])
    assert c.endpoints == [] and [e.name for e in net.endpoints] == ["b"]  # that connect rolled back
    monkeypatch.undo()
    third = net.connect(c, ports=["8080:80"])  # waits for the kernel this time, and gets the port
    assert third.published[0].host_port == 8080
    assert _veth_index(host, first) is None
    assert net.create_endpoint("d").ip == first.ip  # and the address came back with it


def _veth_index(host, endpoint):
    return host._services.rtnl.link_index(host_end_name(endpoint.id))


def _join_whose_ports_will_be_refused(host, monkeypatch):
    """A network, a sandbox and an endpoint publishing 8080, whose join's firewall step fails."""
    from cnm.firewall.nftables import NftablesFirewall

    net = host.create_network("web")
    a = host.create_sandbox("a")
    endpoint = net.create_endpoint("e", ports=["8080:80"])
    monkeypatch.setattr(
        NftablesFirewall, "add_port_forwards", lambda *a, **k: (_ for _ in ()).throw(cnm.KernelError(errno.EPERM, "injected"))
    )
    return net, a, endpoint


def test_what_a_failed_join_could_not_roll_back_is_cleaned_up_by_the_next_join(host, monkeypatch):
    net, a, endpoint = _join_whose_ports_will_be_refused(host, monkeypatch)
    real_delete = Rtnl.delete_link
    refusals = []

    def refuse_once(self, index, what):
        if not refusals:
            refusals.append(what)
            raise cnm.KernelError(errno.EBUSY, f"{what}: injected refusal")
        return real_delete(self, index, what)

    monkeypatch.setattr(Rtnl, "delete_link", refuse_once)
    with pytest.raises(cnm.KernelError) as info:
        endpoint.join(a)
    assert any("retried" in note for note in info.value.__notes__)
    assert _veth_index(host, endpoint) is not None  # the rollback could not remove it
    monkeypatch.undo()
    endpoint.join(a)  # first removes the leftover veth and frees the port, then joins
    assert endpoint.published[0].host_port == 8080 and endpoint.interface == "eth0"


def test_a_failed_join_leaves_the_endpoint_as_before(host, monkeypatch):
    net, a, endpoint = _join_whose_ports_will_be_refused(host, monkeypatch)
    with pytest.raises(cnm.KernelError):
        endpoint.join(a)
    assert endpoint.sandbox is None and endpoint.interface is None and endpoint.published == []
    assert a.endpoints == []
    monkeypatch.undo()
    other = net.connect(a, ports=["8080:80"])  # the host port was given back
    assert other.published[0].host_port == 8080


def test_after_closing_an_isolated_host_its_objects_show_nothing(host):
    net = host.create_network("web")
    a = host.create_sandbox("a")
    endpoint = net.connect(a, ports=["8080:80"])
    host.close()
    assert net.endpoints == [] and a.endpoints == [] and endpoint.sandbox is None
    assert net.inspect()["Containers"] == {} and a.inspect()["Ports"] == {}
