"""gc as an attacker would have it: records and paths that lie, namespaces held
where gc did not look, processes that outlive their host.

Every decoy (a tmpfs in a temporary directory, a namespace, a record) is made
by the test and removed by it; every process killed is a child the test
started. The record files here are written as cnm writes them (root's,
mode 0600) unless the test is about what gc does with one that is not.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

import cnm
from cnm.netns import MOUNT_DIRS, NETNS_DIR, Namespace
from cnm.owner import process_start, record_path
from tests.integration.test_gc import (
    CHILD, _ip, _leftovers, _new_token, _remove_by_token, _wait_for, _write_record, pin_path,
)  # fmt: skip

_libc = ctypes.CDLL(None, use_errno=True)
_MS_BIND = 0x1000


def _mount(source: str, target: str, fstype: str | None, flags: int = 0, data: bytes | None = None) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags, data) != 0:
        raise OSError(ctypes.get_errno(), f"mount {source} on {target}")


def _umount(target: str) -> None:
    _libc.umount2(target.encode(), 2 | 8)  # MNT_DETACH | UMOUNT_NOFOLLOW; not mounted is fine


def _mount_points() -> list[str]:
    """Every mount point, as /proc/self/mountinfo says (read here, not with cnm's own reader)."""
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4].replace("\\040", " ") for line in f]


def _mounted(path: str) -> bool:
    return path in _mount_points()


def _dead_pid() -> tuple[int, int]:
    """The pid of a process that has exited, and its start time while it ran."""
    child = subprocess.Popen(["sleep", "1000"])
    start = process_start(child.pid)
    child.kill()
    child.wait()
    assert start is not None
    return child.pid, start


@pytest.fixture
def scratch():
    """A temporary directory, with whatever a test mounted in it unmounted afterwards."""
    path = tempfile.mkdtemp(prefix="cnm-gc-test-")
    try:
        yield path
    finally:
        for point in reversed(_mount_points()):
            if point.startswith(path + "/") or point == path:
                _umount(point)
        shutil.rmtree(path, ignore_errors=True)


def _decoy_tmpfs(scratch: str) -> str:
    """A tmpfs the test mounted, looking like cnm's (same source), with a file in it."""
    path = os.path.join(scratch, "decoy")
    os.mkdir(path)
    _mount("cnm", path, "tmpfs", 0, b"size=64k")
    open(os.path.join(path, "precious"), "w").close()
    return path


# ---- 5: a symlink where cnm's directory or namespace would be ------------------------------


@pytest.mark.parametrize("where", ["sandbox directory", "namespace"])
def test_gc_never_follows_a_symlink_to_someone_elses_mount(scratch, where):
    token = _new_token()
    if where == "sandbox directory":
        target = _decoy_tmpfs(scratch)
        link = os.path.join(MOUNT_DIRS, token)
    else:
        target = os.path.join(scratch, "ns")
        Namespace.create("decoy", path=target)
        link = os.path.join(NETNS_DIR, f"cnm-{token}-host")
    _write_record(token, start=-1)  # a dead owner
    os.symlink(target, link)
    try:
        try:
            report = cnm.gc()
        finally:
            assert _mounted(target), f"gc unmounted {target}, which {link} points to"
        print(report)
        if where == "sandbox directory":
            assert os.path.exists(os.path.join(target, "precious"))
        assert any(r.startswith(record_path(token)) and "symbolic link" in r for r in report.refused), report
        assert os.path.lexists(link) and os.path.exists(record_path(token))  # refused: nothing of it touched
        assert token not in [c.token for c in report.collected]
    finally:
        os.unlink(link)
        _remove_by_token(token)


# ---- 5: a record rewritten to name a dead pid ------------------------------------------------


@pytest.mark.parametrize("how", ["in place", "replaced"])
def test_a_record_rewritten_with_a_dead_pid_does_not_destroy_a_live_host(host, how):
    net = host.create_network("live", subnet="10.66.0.0/24")
    net.connect(host.create_sandbox("s"))
    path = record_path(host.token)
    with open(path) as f:
        original = f.read()
    forged = json.loads(original)
    forged["pid"], forged["start"] = _dead_pid()
    aside = path + ".aside"
    if how == "in place":
        with open(path, "r+") as f:  # same file: mode and owner as they were
            f.truncate()
            f.write(json.dumps(forged))
    else:
        os.rename(path, aside)  # the host's own file, kept to put back
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(json.dumps(forged))
    try:
        report = cnm.gc()
        print(report)
        assert host.token not in [c.token for c in report.collected]
        assert host.token in report.held
        assert os.path.exists(os.path.join(MOUNT_DIRS, host.token, "sb-s"))
        assert os.path.exists(os.path.join(NETNS_DIR, f"cnm-{host.token}-host"))
        assert f"table ip cnm-{host.token}" in _ip("nft", "list", "tables", netns=host.namespace.path)
        net.connect(host.create_sandbox("after-gc"))  # and it still works
    finally:
        if how == "in place":
            with open(path, "r+") as f:
                f.truncate()
                f.write(original)
        else:
            os.replace(aside, path)


# ---- 5: records gc cannot trust --------------------------------------------------------------


def _pinned_decoy(token: str, scratch: str) -> None:
    """/run/cnm/TOKEN.netns holding a namespace the test made (not the one its record names)."""
    decoy = os.path.join(scratch, "other")
    Namespace.create("other", path=decoy)
    _ip("ip", "link", "add", "br-decoy", "type", "bridge", netns=decoy)
    _ip("ip", "link", "set", "br-decoy", "alias", f"cnm:{token}:network/x", netns=decoy)
    open(pin_path(token), "x").close()
    _mount(decoy, pin_path(token), None, _MS_BIND)


@pytest.mark.parametrize("flaw", ["mode 0644", "not root's", "a symlink", "a pin of another namespace"])
def test_records_gc_cannot_trust_are_refused_and_reported(scratch, flaw):
    token = _new_token()
    Namespace.create(f"cnm-{token}-host")  # what a trusted dead record would have gc delete
    fields: dict[str, object] = {"start": -1}
    if flaw == "a pin of another namespace":
        fields.update(kind="machine", netns=[os.stat("/proc/self/ns/net").st_dev, 1])
    _write_record(token, **fields)
    if flaw == "a pin of another namespace":
        _pinned_decoy(token, scratch)
    path = record_path(token)
    if flaw == "mode 0644":
        os.chmod(path, 0o644)
    elif flaw == "not root's":
        os.chown(path, 1000, 1000)
    elif flaw == "a symlink":
        elsewhere = os.path.join(scratch, "record")
        shutil.move(path, elsewhere)
        os.symlink(elsewhere, path)
    try:
        report = cnm.gc()
        print(report)
        assert os.path.lexists(path)
        assert os.path.exists(os.path.join(NETNS_DIR, f"cnm-{token}-host"))
        if flaw == "a pin of another namespace":
            assert _mounted(pin_path(token))
            assert f"cnm:{token}:network/x" in _ip("ip", "-d", "link", "show", "br-decoy", netns=os.path.join(scratch, "other"))
        (refused,) = [r for r in report.refused if r.startswith(path)]
        assert {
            "mode 0644": "mode 0644",
            "not root's": "uid 1000",
            "a symlink": "symbolic link",
            "a pin of another namespace": "not net:[1]",
        }[flaw] in refused
    finally:
        if os.path.islink(path):
            os.unlink(path)
        _remove_by_token(token)


# ---- 6: a machine host in a namespace held outside /run/netns -----------------------------


def _machine_leftovers(token: str, netns: str) -> list[str]:
    found = [line for line in _ip("ip", "-d", "-o", "link", "show", netns=netns).splitlines() if f"cnm:{token}:" in line]
    found += [line for line in _ip("nft", "list", "tables", netns=netns).splitlines() if f"cnm-{token}" in line]
    found += [line for line in _ip("ip", "route", "show", netns=netns).splitlines() if "10.77." in line]
    return found


@pytest.mark.parametrize("held", ["by its pin", "by /tmp only", "by a socket only"])
def test_gc_finds_a_dead_machine_hosts_namespace_wherever_it_is_held(scratch, held):
    """The issue's case: ``cnm.Host()`` in a namespace mounted on a file in /tmp,
    whose process died. With its pin there, gc finds it there; with the pin
    unmounted (by someone else) it finds it through mountinfo; held by nothing
    it can see, it keeps the record and says why."""
    ns1 = os.path.join(scratch, "ns1")
    Namespace.create("ns1", path=ns1)
    token = _new_token()
    child = subprocess.Popen(
        ["nsenter", f"--net={ns1}", sys.executable, "-c", CHILD, token, "machine"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    holder: socket.socket | None = None
    try:
        _wait_for(child, "built")
        child.kill()
        child.wait()
        assert _machine_leftovers(token, ns1)  # bridge, routes, tables
        if held != "by its pin":
            _umount(pin_path(token))
        if held == "by a socket only":
            holder = Namespace("ns1", ns1).socket(socket.AF_INET, socket.SOCK_DGRAM)
            _umount(ns1)
        report = cnm.gc()
        print(report)
        if held == "by a socket only":
            assert os.path.exists(record_path(token))
            assert token not in [c.token for c in report.collected]
            assert any(k.startswith(token) and "cannot prove" in k for k in report.kept), report
        else:
            (collected,) = [c for c in report.collected if c.token == token]
            assert f"owner record {record_path(token)}" in collected.removed
            assert _machine_leftovers(token, ns1) == []
            assert _leftovers(token) == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if holder is not None:
            holder.close()
        _remove_by_token(token)


# ---- 7: processes ----------------------------------------------------------------------------

# Writes "TERM" to the file it is given when it gets SIGTERM; with a second
# argument it ignores the signal afterwards (so only SIGKILL ends it).
TRAPPER = r"""
import os, signal, sys, time
out, stubborn = sys.argv[1], len(sys.argv) > 2
def on_term(signum, frame):
    with open(out, "w") as f:
        f.write("TERM")
    if not stubborn:
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


@pytest.mark.parametrize("how", ["sandbox.delete()", "host.close()"])
def test_popen_processes_get_sigterm_first(scratch, how):
    made = cnm.Host.isolated()
    try:
        sandboxes = [made.create_sandbox(f"s{i}") for i in range(2)]
        procs = []
        for i, where in enumerate([*sandboxes, made, made.outside, sandboxes[0]]):
            stubborn = ["stubborn"] if i == 4 else []
            proc = where.popen([sys.executable, "-c", TRAPPER, os.path.join(scratch, f"p{i}"), *stubborn], stdout=subprocess.PIPE, text=True)
            _wait_for(proc, "ready")
            procs.append(proc)
        if how == "sandbox.delete()":
            sandboxes[0].delete()
            ended = [procs[0], procs[4]]
        else:
            made.close()
            ended = procs
        for proc in ended:
            assert proc.returncode is not None
        got_term = [open(os.path.join(scratch, f"p{i}")).read() if os.path.exists(os.path.join(scratch, f"p{i}")) else None for i, p in enumerate(procs) if p in ended]
        assert got_term == ["TERM"] * len(ended)
        assert procs[4].returncode == -9  # ignored SIGTERM: SIGKILL after the grace
    finally:
        made.close()


# Builds an isolated host with a sandbox, starts a process there with popen,
# says where things are, and waits to be killed.
LEAVES_PROCESSES = r"""
import sys
import cnm
out = sys.argv[1]
host = cnm.Host.isolated()
sandbox = host.create_sandbox("s")
proc = sandbox.popen([sys.executable, "-c", sys.argv[2], out], stdout=__import__("subprocess").PIPE, text=True)
assert proc.stdout.readline().strip() == "ready"
print(host.token, sandbox.key, proc.pid, flush=True)
sys.stdin.read()
"""


def test_gc_reports_and_ends_what_a_killed_host_started(scratch):
    out = os.path.join(scratch, "term")
    child = subprocess.Popen(
        [sys.executable, "-c", LEAVES_PROCESSES, out, TRAPPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    token = None
    stranger = None
    try:
        token, key, pid = child.stdout.readline().split()
        # Someone else's process in the sandbox: reported, left running.
        stranger = subprocess.Popen(["nsenter", f"--net={key}", "sleep", "1000"])
        time.sleep(0.2)
        child.kill()
        child.wait()
        assert process_start(int(pid)) is not None  # the host's process outlived it
        report = cnm.gc()
        print(report)
        assert process_start(int(pid)) is None
        assert open(out).read() == "TERM"
        assert stranger.poll() is None
        (collected,) = [c for c in report.collected if c.token == token]
        lines = "\n".join(collected.processes)
        assert f"process {pid} (python" in lines and "started by cnm: ended by SIGTERM" in lines, lines
        assert f"process {stranger.pid} (sleep)" in lines and "left running (not started by cnm)" in lines, lines
        assert _leftovers(token) == []
    finally:
        if stranger is not None:
            stranger.kill()
            stranger.wait()
        if child.poll() is None:
            child.kill()
            child.wait()
        if token is not None:
            _remove_by_token(token)


# A host's process forks (without exec) and is then killed; the fork lives on.
FORKS = r"""
import os, sys, time
import cnm
host = cnm.Host.isolated()
host.create_sandbox("s")
pid = os.fork()
if pid == 0:
    time.sleep(1000)
    os._exit(0)
print(host.token, pid, flush=True)
sys.stdin.read()
"""


def test_a_fork_of_a_dead_hosts_process_does_not_keep_it_alive():
    """The locks that prove a host alive are not inherited by a fork, which
    would otherwise hold them (and the host's leftovers) for its whole life."""
    child = subprocess.Popen([sys.executable, "-c", FORKS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    token, fork = None, None
    try:
        token, fork = child.stdout.readline().split()
        child.kill()
        child.wait()
        assert process_start(int(fork)) is not None
        report = cnm.gc()
        print(report)
        assert token not in report.held
        assert token in [c.token for c in report.collected]
        assert _leftovers(token) == []
    finally:
        if fork is not None:
            try:
                os.kill(int(fork), 9)
            except ProcessLookupError:
                pass
        if child.poll() is None:
            child.kill()
            child.wait()
        if token is not None:
            _remove_by_token(token)
