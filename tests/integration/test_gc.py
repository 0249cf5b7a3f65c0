"""Owner records, cnm.gc(), and hosts that are never closed or whose close is interrupted.

Every process killed here is a child the test started; every decoy is made
by the test and removed by it. gc runs against the whole machine, so the
decoys check what it must leave: a live host (the ``host`` fixture), and
namespaces, links, tables and records that only look like cnm's.
"""

from __future__ import annotations

import gc as python_gc
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest

import cnm
from cnm.netns import MOUNT_DIRS, NETNS_DIR, MountDir, Namespace
from cnm.owner import process_start, record_path

# The child builds a host with the token it is given (so that the test knows
# what to look for even when the child dies before saying anything), then a
# network, 20 sandboxes one by one and 100 in bulk, saying how far it got.
CHILD = r"""
import secrets, sys
import cnm, cnm.api.host
token, where = sys.argv[1], sys.argv[2]
real = secrets.token_hex
cnm.api.host.secrets = type("S", (), {"token_hex": staticmethod(lambda n: token if n == 3 else real(n))})
print("started", flush=True)
host = cnm.Host.isolated() if where == "isolated" else cnm.Host()
print("host", flush=True)
net = host.create_network("n", subnet="10.77.0.0/16")
print("network", flush=True)
for i in range(20):
    net.connect(host.create_sandbox(f"a{i}"), ports=[f"{20000 + i}:80"])
    print(f"sandbox {i}", flush=True)
host.create_sandboxes([cnm.SandboxRequest(f"b{i}", ports=[f"{21000 + i}:80"]) for i in range(100)], network=net)
print("built", flush=True)
if len(sys.argv) > 3:
    sys.exit(0)  # without closing the host
sys.stdin.read()
"""

#: Where to kill the child: after it printed *line*, plus *delay* seconds.
#: The first four land inside Host.isolated() or Host() at varying points,
#: the last ones inside the bulk build.
POINTS = [
    ("started", 0.0),
    ("started", 0.002),
    ("started", 0.006),
    ("started", 0.015),
    ("host", 0.0),
    ("network", 0.0),
    ("sandbox 0", 0.0),
    ("sandbox 9", 0.0),
    ("sandbox 19", 0.0),
    ("sandbox 19", 0.02),
    ("sandbox 19", 0.05),
    ("built", 0.0),
]


def pin_path(token: str) -> str:
    """Where a ``cnm.Host()`` pins its namespace (spelled out: it is part of what gc promises)."""
    return os.path.join(MOUNT_DIRS, token + ".netns")


def _ip(*argv: str, netns: str | None = None) -> str:
    prefix = ["nsenter", f"--net={netns}"] if netns else []
    return subprocess.run([*prefix, *argv], check=True, capture_output=True, text=True).stdout


def _leftovers(token: str, netns: str | None = None) -> list[str]:
    """Everything on the machine that carries *token* (and, with *netns*, in that namespace)."""
    found = [f"/run/netns/{n}" for n in os.listdir(NETNS_DIR) if n.startswith(f"cnm-{token}-")] if os.path.isdir(NETNS_DIR) else []
    found += [p for p in (os.path.join(MOUNT_DIRS, token), record_path(token), pin_path(token)) if os.path.lexists(p)]
    with open("/proc/self/mounts") as f:
        found += [line.strip() for line in f if f"/run/cnm/{token}" in line or f"cnm-{token}-" in line]
    if netns is not None:
        found += [line for line in _ip("ip", "-d", "-o", "link", "show", netns=netns).splitlines() if f"cnm:{token}:" in line]
        found += [line for line in _ip("nft", "list", "tables", netns=netns).splitlines() if f"cnm-{token}" in line]
    return found


def _remove_by_token(token: str) -> None:
    """Whatever a failed test left of *token* (so that one failure does not spoil the session)."""
    Namespace.sweep(f"cnm-{token}-")
    MountDir(os.path.join(MOUNT_DIRS, token)).delete()
    Namespace(f"pin of {token}", pin_path(token)).delete()
    try:
        os.unlink(record_path(token))
    except FileNotFoundError:
        pass
    try:
        os.rmdir(MOUNT_DIRS)
    except OSError:
        pass


def _reap(children, tokens) -> None:
    """Kill the children still running, then remove whatever their tokens left."""
    for child in children:
        if child.poll() is None:
            child.kill()
            child.wait()
    for token in tokens:
        _remove_by_token(token)


def _new_token() -> str:
    while True:
        token = secrets.token_hex(3)
        if not _leftovers(token):
            return token


def _wait_for(child: subprocess.Popen[str], line: str) -> list[str]:
    seen = []
    while True:
        got = child.stdout.readline() if child.stdout else ""
        if not got:
            raise AssertionError(f"the child ended before printing {line!r}; it printed {seen}")
        seen.append(got.strip())
        if got.strip() == line:
            return seen


def _decoy_namespace(name: str) -> Namespace:
    """A namespace mounted on /run/netns/NAME, made the way cnm makes one.

    Not with ``ip netns add``: on a /run/netns that is not a mount point, it
    bind-mounts the directory on itself, which hides every namespace mounted
    there before (of concurrent test runs too) so that it can never be
    unmounted by its path.
    """
    return Namespace.create(name)


@pytest.fixture
def decoys(host):
    """Things gc must leave alone: a namespace named like an isolated host's
    (no record), and a live host with a network and a sandbox."""
    decoy = _decoy_namespace(f"cnm-{_new_token()}-host")
    net = host.create_network("live", subnet="10.66.0.0/24")
    net.connect(host.create_sandbox("s"), ports=["8080:80"])
    try:
        yield decoy.name
    finally:
        decoy.delete()


def _check_decoys_untouched(decoy: str, host: cnm.Host) -> None:
    assert os.path.exists(os.path.join(NETNS_DIR, decoy))
    assert os.path.exists(record_path(host.token))
    assert os.path.exists(os.path.join(MOUNT_DIRS, host.token, "sb-s"))
    assert os.path.exists(os.path.join(NETNS_DIR, f"cnm-{host.token}-host"))
    assert f"cnm:{host.token}:network/live" in _ip("ip", "-d", "link", "show", netns=host.namespace.path)
    assert f"table ip cnm-{host.token}" in _ip("nft", "list", "tables", netns=host.namespace.path)
    # And it still works.
    host.network("live").connect(host.create_sandbox("after-gc"))


def _kill_at(child: subprocess.Popen[str], line: str, delay: float) -> None:
    _wait_for(child, line)
    if delay:
        time.sleep(delay)
    child.kill()
    child.wait()


@pytest.mark.parametrize(("line", "delay"), POINTS)
def test_gc_removes_everything_of_an_isolated_host_killed_mid_build(decoys, host, line, delay):
    token = _new_token()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, token, "isolated"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        _kill_at(child, line, delay)
        left = _leftovers(token)
        if line != "started":
            # The host was made before the kill: its record and namespaces are there to collect.
            assert record_path(token) in left and f"/run/netns/cnm-{token}-host" in left, left
        report = cnm.gc()
        print(f"killed after {line!r} + {delay}s; {len(left)} leftovers\n{report}")
        assert token not in report.alive
        assert host.token in report.alive
        assert _leftovers(token) == []
        if record_path(token) in left:
            (collected,) = [c for c in report.collected if c.token == token]
            assert collected.pid == child.pid and collected.kind == "isolated"
            assert f"owner record {record_path(token)}" in collected.removed
        else:
            assert left == []  # nothing is made before the record
        _check_decoys_untouched(decoys, host)
    finally:
        _reap([child], [token])


@pytest.mark.parametrize(("line", "delay"), [("started", 0.003), ("network", 0.0), ("sandbox 19", 0.02), ("built", 0.0)])
def test_gc_removes_links_and_table_of_a_machine_host_killed_mid_build(decoys, host, line, delay):
    """A ``cnm.Host()`` leaves its things in a namespace that outlives it: here
    the live host's, run in by the child (never the machine's own)."""
    where = host.namespace.path
    decoy = _new_token()
    # Look-alikes in the same namespace, with no record: a bridge with a cnm alias, a cnm table.
    _ip("ip", "link", "add", f"br-{decoy}", "type", "bridge", netns=where)
    _ip("ip", "link", "set", f"br-{decoy}", "alias", f"cnm:{decoy}:network/x", netns=where)
    _ip("nft", "add", "table", "ip", f"cnm-{decoy}", netns=where)
    token = _new_token()
    child = host.popen([sys.executable, "-c", CHILD, token, "machine"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        _kill_at(child, line, delay)
        left = _leftovers(token, where)
        if line != "started":
            assert any(f"cnm:{token}:network/n" in item for item in left), left
            assert any(f"table ip cnm-{token}" in item for item in left), left
        report = cnm.gc()
        print(f"killed after {line!r} + {delay}s; {len(left)} leftovers\n{report}")
        assert _leftovers(token, where) == []
        if left:
            (collected,) = [c for c in report.collected if c.token == token]
            assert collected.kind == "machine"
            assert any("ip_forward" in note for note in collected.notes)
        assert f"cnm:{decoy}:network/x" in _ip("ip", "-d", "link", "show", f"br-{decoy}", netns=where)
        assert f"table ip cnm-{decoy}" in _ip("nft", "list", "tables", netns=where)
        _check_decoys_untouched(decoys, host)
    finally:
        _reap([child], [token])


# The same kind of build, smaller, killed right after its k-th kernel change
# (the change is made, its undo not yet registered: the most a kill can
# leave). With k = 0 it runs through and says how many changes it made.
STEPPED = r"""
import os, secrets, signal, sys, threading
import cnm, cnm.api.host
from cnm.netlink import Netlink
from cnm.netns import MountDir, Namespace
from cnm.owner import OwnerRecord
token, where, kill_at, subnet = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
real = secrets.token_hex
cnm.api.host.secrets = type("S", (), {"token_hex": staticmethod(lambda n: token if n == 3 else real(n))})
count, lock = [0], threading.Lock()
def counted(original):
    def step(*args, **kwargs):
        result = original(*args, **kwargs)
        with lock:
            count[0] += 1
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return result
    return step
for cls, name in [(Netlink, "transact"), (Netlink, "fenced"), (Namespace, "write_sysctl")]:
    setattr(cls, name, counted(getattr(cls, name)))
for cls, name in [(Namespace, "create"), (MountDir, "create"), (OwnerRecord, "claim")]:
    setattr(cls, name, staticmethod(counted(getattr(cls, name))))
host = cnm.Host.isolated() if where == "isolated" else cnm.Host()
net = host.create_network("n", subnet=subnet)
for i in range(3):
    net.connect(host.create_sandbox(f"a{i}"), ports=[f"{20000 + i}:80"])
host.create_sandboxes([cnm.SandboxRequest(f"b{i}", ports=[f"{21000 + i}:80"]) for i in range(5)], network=net)
print("steps", count[0], flush=True)
"""


#: children of test_gc_after_a_kill_at_every_kernel_change_of_a_build that run at once
AT_ONCE = 6


@pytest.mark.parametrize("where", ["isolated", "machine"])
def test_gc_after_a_kill_at_every_kernel_change_of_a_build(decoys, host, where):
    """Children run a few at a time and gc runs as each one dies, so it also
    runs while the others are building: a child disturbed by it would fail
    with an error instead of dying at its own kill point."""
    netns = host.namespace.path if where == "machine" else None

    def start(token: str, kill_at: int) -> subprocess.Popen[str]:
        # Children side by side in one namespace (machine) need subnets of their own.
        argv = [sys.executable, "-c", STEPPED, token, where, str(kill_at), f"10.{100 + kill_at % AT_ONCE}.0.0/16"]
        launch = host.popen if where == "machine" else subprocess.Popen
        return launch(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    token = _new_token()
    try:
        child = start(token, 0)
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        steps = int(out.split()[-1])
        assert steps > 20  # the record, namespaces, links, addresses, routes, rules...
        cnm.gc()  # what the finished child did not close
        assert _leftovers(token, netns) == []
    finally:
        _remove_by_token(token)
    removed_by_token: dict[str, int] = {}  # what gc removed of each token (it may be an earlier run's gc)
    for first in range(1, steps + 1, AT_ONCE):
        batch = {kill_at: _new_token() for kill_at in range(first, min(first + AT_ONCE, steps + 1))}
        children: dict[int, subprocess.Popen[str]] = {}
        try:
            for kill_at, token in batch.items():
                children[kill_at] = start(token, kill_at)
            for kill_at, child in children.items():
                token = batch[kill_at]
                _, err = child.communicate(timeout=60)
                assert child.returncode == -signal.SIGKILL, (kill_at, err)
                report = cnm.gc()
                removed_by_token.update((c.token, len(c.removed)) for c in report.collected)
                assert _leftovers(token, netns) == [], (kill_at, report)
                # The first change is the record: every kill point leaves one, and gc collected it.
                assert token in removed_by_token, (kill_at, report)
        finally:
            _reap(children.values(), batch.values())
    print(f"{where}: killed after each of {steps} kernel changes; gc removed {sorted(removed_by_token.values())} things")
    _check_decoys_untouched(decoys, host)


def test_two_gc_runs_at_once_remove_each_dead_host_once():
    tokens = [_new_token() for _ in range(4)]
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, token, "isolated"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for token in tokens
    ]
    try:
        for child in children:
            _kill_at(child, "sandbox 0", 0.0)
        reports: list[cnm.GCReport] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                reports.append(cnm.gc())
            except BaseException as exc:  # handed to the test below
                errors.append(exc)

        runs = [threading.Thread(target=run) for _ in range(2)]
        for thread in runs:
            thread.start()
        for thread in runs:
            thread.join()
        assert errors == []
        collected = sorted(c.token for report in reports for c in report.collected if c.token in tokens)
        assert collected == sorted(tokens)  # each once, by one run or the other
        for token in tokens:
            assert _leftovers(token) == []
    finally:
        _reap(children, tokens)


def _namespace_id(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return [st.st_dev, st.st_ino]


def _write_record(token: str, **fields: object) -> None:
    record = {
        "token": token,
        "pid": os.getpid(),
        "start": process_start(os.getpid()),
        "boot": open("/proc/sys/kernel/random/boot_id").read().strip(),
        "kind": "isolated",
        "netns": [0, 0],
        "firewall": "nftables",
        "pidns": _namespace_id("/proc/self/ns/pid"),
        "timens": _namespace_id("/proc/self/ns/time"),
    }
    record.update(fields)
    os.makedirs(MOUNT_DIRS, exist_ok=True)
    # As cnm writes it: root's, mode 0600 (gc refuses any other).
    with os.fdopen(os.open(record_path(token), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        json.dump(record, f)


@pytest.mark.parametrize(
    ("fields", "owner_alive"),
    [
        ({}, True),  # this very process
        ({"start": -1}, False),  # its pid, reused: another start time
        ({"boot": "00000000-0000-0000-0000-000000000000"}, False),  # a record from an earlier boot
        # Written in another pid namespace (a container sharing /run): its pid
        # means nothing here, so gc cannot tell and must keep it.
        ({"pidns": [0, 1], "pid": 2**22 + 1, "start": -1}, True),
    ],
    ids=["alive", "reused-pid", "earlier-boot", "other-pid-namespace"],
)
def test_liveness_is_pid_start_time_and_boot(host, fields, owner_alive):
    token = _new_token()
    _decoy_namespace(f"cnm-{token}-host")
    _write_record(token, **fields)
    try:
        report = cnm.gc()
        if owner_alive:
            assert token in report.alive
            assert os.path.exists(f"/run/netns/cnm-{token}-host") and os.path.exists(record_path(token))
        else:
            assert token not in report.alive
            assert [c.removed for c in report.collected if c.token == token] == [
                (f"namespace /run/netns/cnm-{token}-host", f"owner record {record_path(token)}")
            ]
            assert _leftovers(token) == []
    finally:
        _remove_by_token(token)


def test_gc_leaves_records_it_cannot_read(host):
    token = _new_token()
    _decoy_namespace(f"cnm-{token}-host")
    os.makedirs(MOUNT_DIRS, exist_ok=True)
    with os.fdopen(os.open(record_path(token), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write("not a record")
    try:
        report = cnm.gc()
        assert record_path(token) in report.unreadable
        assert os.path.exists(f"/run/netns/cnm-{token}-host") and os.path.exists(record_path(token))
    finally:
        _remove_by_token(token)


@pytest.mark.parametrize("where", ["isolated", "machine"])
def test_a_process_that_exits_without_closing_its_host_leaves_nothing(host, where):
    token = _new_token()
    argv = [sys.executable, "-W", "always::ResourceWarning", "-c", CHILD, token, where, "exit"]
    if where == "isolated":
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    else:
        child = host.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = child.communicate(timeout=60)
        done = subprocess.CompletedProcess(argv, child.returncode, out, err)
    try:
        assert done.returncode == 0, done.stderr
        assert "built" in done.stdout
        assert "ResourceWarning" in done.stderr and f"token {token}) was not closed" in done.stderr, done.stderr
        assert _leftovers(token, host.namespace.path if where == "machine" else None) == []
    finally:
        _remove_by_token(token)


def test_a_host_garbage_collected_unclosed_is_removed_with_a_warning():
    made = cnm.Host.isolated()
    made.create_network("n").connect(made.create_sandbox("s"))
    token = made.token
    assert _leftovers(token) != []
    with pytest.warns(ResourceWarning, match=f"token {token}. was not closed"):
        del made
        python_gc.collect()
    try:
        assert _leftovers(token) == []
    finally:
        _remove_by_token(token)


COLLECTED_IN_A_THREAD = r"""
import gc, os, threading
import cnm
host = cnm.Host.isolated()
host.create_sandbox("s")
token = host.token
del host
collector = threading.Thread(target=gc.collect)
collector.start()
collector.join()
print(token, os.path.exists(f"/run/cnm/{token}.owner"), flush=True)
"""


def test_a_host_collected_in_another_thread_is_removed_at_exit():
    done = subprocess.run(
        [sys.executable, "-W", "always::ResourceWarning", "-c", COLLECTED_IN_A_THREAD],
        capture_output=True, text=True, timeout=60,
    )
    token, still_there = done.stdout.split()
    try:
        assert done.returncode == 0, done.stderr
        assert still_there == "True"  # not removed from the collecting thread...
        assert f"token {token}) was not closed" in done.stderr
        assert _leftovers(token) == []  # ...but at exit
    finally:
        _remove_by_token(token)


def test_a_closed_host_gives_no_warning():
    python_gc.collect()  # earlier tests' garbage warns about its own sockets
    made = cnm.Host.isolated()
    made.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del made
        python_gc.collect()
    assert not [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


# Closes the host in a `with` block while SIGINTs arrive. The sandbox
# directory's removal (a step of close) is made slow and says when it starts,
# so the test knows the signals land inside close; then the child lists what
# its close left, before it exits (and before any finalizer could help).
INTERRUPTED = r"""
import os, sys, time
import cnm, cnm.netns
delete = cnm.netns.MountDir.delete
def slow_delete(self):
    print("closing", flush=True)
    time.sleep(0.5)
    delete(self)
cnm.netns.MountDir.delete = slow_delete
host = cnm.Host.isolated()
token = host.token
try:
    with host:
        net = host.create_network("n")
        host.create_sandboxes([f"s{i}" for i in range(300)], network=net)
        print("built", flush=True)
        time.sleep(60)
except KeyboardInterrupt:
    left = [n for n in os.listdir("/run/netns") if n.startswith(f"cnm-{token}-")]
    left += [p for p in (f"/run/cnm/{token}", f"/run/cnm/{token}.owner") if os.path.exists(p)]
    print("left", left, flush=True)
    sys.exit(0)
print("not interrupted", flush=True)
"""


def test_ctrl_c_twice_during_close_waits_for_it():
    child = subprocess.Popen([sys.executable, "-c", INTERRUPTED], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(child, "built")
        child.send_signal(signal.SIGINT)  # leaves the `with` block: close starts
        _wait_for(child, "closing")
        child.send_signal(signal.SIGINT)  # two more, in quick succession, inside close
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert out.strip().splitlines() == ["left []"], (out, err)
    finally:
        _reap([child], [])


def test_deferred_interrupts_deliver_the_signal_once_after_the_block():
    from cnm.interrupts import deferred_interrupts

    ran = []
    delivered = []
    counting = lambda signum, frame: delivered.append(signum)  # noqa: E731 - does not raise, so a second delivery shows
    before = signal.signal(signal.SIGINT, counting)
    try:
        with deferred_interrupts():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            ran.append("after the signals")
            assert delivered == []  # held back inside the block
        assert ran == ["after the signals"]
        assert delivered == [signal.SIGINT]  # two arrived, one delivered, after the block
        assert signal.getsignal(signal.SIGINT) is counting
    finally:
        signal.signal(signal.SIGINT, before)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
