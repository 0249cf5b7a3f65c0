"""Namespaces and processes found by identity anywhere on the machine, for :func:`cnm.gc`.

A network namespace lives while anything holds it, and many things can:
a process (any of its threads), a bind mount anywhere (``/run/netns``, but
as much ``/tmp/ns1``, in any mount namespace), an open descriptor of its
nsfs file, a socket made in it. Each is looked at here but the last (a
socket does not say which namespace it belongs to without being handed
over), so not finding a namespace is not proof that it is gone: gc treats
it that way only where cnm's own order proves it (see :mod:`cnm.leftovers`).

A process is named by its pid and start time (a pid is reused once its
process is gone); it is signalled through a pidfd opened while its start
time still matched, so a signal never reaches a process that merely got
its pid.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Iterator

import attrs

from .mounts import Mount, read_mounts
from .netns import NETNS_DIR, Namespace
from .owner import OWNER_ENV, process_start

__all__ = ["END_GRACE", "Stray", "end", "end_processes", "find_namespace", "processes_in"]

#: how long processes gc ends get after SIGTERM, all together, before SIGKILL (seconds)
END_GRACE = 1.0

NetId = tuple[int, int]


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _places(identity: NetId) -> Iterator[str]:
    """Paths that may open the namespace *identity*, the likeliest first."""
    yield f"/proc/{os.getpid()}/ns/net"
    try:
        yield from (os.path.join(NETNS_DIR, n) for n in sorted(os.listdir(NETNS_DIR)))
    except FileNotFoundError:
        pass
    # nsfs bind mounts anywhere, in every mount namespace (reached through a
    # process of that namespace's root); their root field names the inode.
    seen: set[int] = set()
    every: list[int | str] = ["self", *_pids()]
    for pid in every:
        try:
            mnt = os.stat(f"/proc/{pid}/ns/mnt").st_ino
            if mnt in seen:
                continue
            seen.add(mnt)
            mounts = read_mounts(pid)
        except OSError:
            continue  # the process exited
        prefix = "" if pid == "self" else f"/proc/{pid}/root"
        yield from (prefix + m.point for m in mounts if m.net_inode == identity[1])
    pids = _pids()
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        yield from (f"/proc/{pid}/task/{tid}/ns/net" for tid in tasks)
    wanted = f"net:[{identity[1]}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            path = f"/proc/{pid}/fd/{fd}"
            try:
                if os.readlink(path) == wanted:
                    yield path
            except OSError:
                continue


def find_namespace(identity: NetId, first: str | None = None) -> tuple[Namespace, int] | None:
    """The namespace whose nsfs (device, inode) is *identity*, held open by a
    descriptor (returned too, for the caller to close); None if none is found.

    Looks at *first* (a path expected to hold it), then this process's own
    namespace, those in /run/netns, nsfs mounts of every mount namespace,
    every thread of every process and every open descriptor (see the module
    documentation for what it cannot see). An inode number can be reused
    once its namespace is freed, so a match may be another namespace; that is
    harmless, because only what carries the dead host's token is removed there.
    """
    for path in [first] if first is not None else []:
        found = _open_if(path, identity)
        if found is not None:
            return found
    for path in _places(identity):
        found = _open_if(path, identity)
        if found is not None:
            return found
    return None


def _open_if(path: str, identity: NetId) -> tuple[Namespace, int] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # the process exited, or the mount went
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) == identity:
        return Namespace(f"namespace of {path}", f"/proc/self/fd/{fd}"), fd
    os.close(fd)
    return None


@attrs.frozen
class Stray:
    """A process found in a dead host's namespaces, or marked as its."""

    pid: int
    #: its start time (see :func:`cnm.owner.process_start`)
    start: int
    #: its command name
    name: str
    #: which of the host's namespaces it is in (None: elsewhere, but marked)
    where: str | None
    #: started by the host (``run``/``popen``), or by a process it started
    ours: bool

    def __str__(self) -> str:
        where = f"in {self.where}" if self.where else "outside its namespaces"
        return f"process {self.pid} ({self.name}) {where}{', started by cnm' if self.ours else ''}"


def processes_in(namespaces: dict[NetId, str], token: str) -> list[Stray]:
    """Every process one of whose threads is in one of *namespaces* (identity
    -> description), or whose environment marks it as *token*'s (see
    :data:`cnm.owner.OWNER_ENV`). Never this process."""
    mark = f"{OWNER_ENV}={token}".encode()
    found: list[Stray] = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        start = process_start(pid)
        if start is None:
            continue  # gone, or a zombie (which holds nothing)
        where = None
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                st = os.stat(f"/proc/{pid}/task/{tid}/ns/net")
                where = namespaces.get((st.st_dev, st.st_ino))
                if where is not None:
                    break
            with open(f"/proc/{pid}/environ", "rb") as f:
                ours = mark in f.read().split(b"\0")
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue  # it exited meanwhile
        if where is not None or ours:
            found.append(Stray(pid, start, name, where, ours))
    return found


def end(strays: list[Stray], grace: float = END_GRACE) -> dict[int, str]:
    """SIGTERM to each of *strays*, up to *grace* seconds for all of them
    together, then SIGKILL to the rest; return what became of each, by pid."""
    outcome: dict[int, str] = {}
    pidfds: dict[int, int] = {}
    try:
        for stray in strays:
            try:
                pidfd = os.pidfd_open(stray.pid)
            except ProcessLookupError:
                outcome[stray.pid] = "gone by itself"
                continue
            if process_start(stray.pid) != stray.start:
                os.close(pidfd)  # another process has the pid now
                outcome[stray.pid] = "gone by itself"
                continue
            pidfds[stray.pid] = pidfd
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        _wait(pidfds, grace, outcome, "ended by SIGTERM")
        for pidfd in pidfds.values():
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        _wait(pidfds, grace, outcome, f"killed (SIGKILL, {grace:g} s after SIGTERM)")
        for pid in pidfds:
            outcome[pid] = "sent SIGKILL, not yet gone"
    finally:
        for pidfd in pidfds.values():
            os.close(pidfd)
    return outcome


def _wait(pidfds: dict[int, int], timeout: float, outcome: dict[int, str], what: str) -> None:
    """Wait until the processes of *pidfds* exit, *timeout* at most for all;
    those that did leave *pidfds* with *what* as their outcome."""
    deadline = time.monotonic() + timeout
    while pidfds:
        poller = select.poll()
        for pidfd in pidfds.values():
            poller.register(pidfd, select.POLLIN)
        left = deadline - time.monotonic()
        if left <= 0:
            return
        ready = {fd for fd, _ in poller.poll(int(left * 1000) + 1)}
        for pid, pidfd in list(pidfds.items()):
            if pidfd in ready:
                os.close(pidfd)
                del pidfds[pid]
                outcome[pid] = what


def end_processes(token: str, directory: str, mounts: list[Mount]) -> tuple[str, ...]:
    """Report every process in the host's own namespaces (not the existing one
    a machine host was in) or marked as its; end those marked (cnm's)."""
    owned: dict[tuple[int, int], str] = {}
    for named in Namespace.named(f"cnm-{token}-"):
        try:
            st = os.stat(named.path)
        except OSError:
            continue
        owned[(st.st_dev, st.st_ino)] = f"namespace {named.path}"
    for mount in mounts:
        if mount.point.startswith(directory + "/") and mount.net_inode is not None:
            owned[(mount.dev, mount.net_inode)] = f"sandbox namespace {mount.point}"
    found = processes_in(owned, token)
    outcome = end([p for p in found if p.ours])
    return tuple(f"{p}: {outcome.get(p.pid, 'left running (not started by cnm)')}" for p in found)
