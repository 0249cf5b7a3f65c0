"""What hosts whose process died left behind, and :func:`gc`, which removes it.

A host that is closed removes everything it made. A process that is killed
(SIGKILL, a crash, the OOM killer) never gets to: its namespaces stay
mounted, its sandbox directory stays mounted, and a host in an existing
namespace leaves its bridges, veths and firewall table there. Each host
records its owner first (:mod:`cnm.owner`), so what a dead process left is
exactly what carries the token of a record whose process is gone:

* the namespaces ``/run/netns/cnm-TOKEN-*`` (an isolated host and its
  outside; deleting them frees every link, address, route and rule inside);
* the sandbox directory ``/run/cnm/TOKEN/``: unmounting its tmpfs takes every
  sandbox namespace mounted in it along;
* for a host in an existing namespace (``cnm.Host()``): the links there whose
  alias starts with ``cnm:TOKEN:`` (its bridges and the host ends of its
  veths, which mostly vanish with the sandboxes) and its firewall backend's
  leftovers (nftables: tables ``ip cnm-TOKEN`` and ``ip6 cnm-TOKEN``). That
  namespace is found by the identity the record gives (its nsfs device and
  inode) among this process's own, those in ``/run/netns`` and those of
  running processes; if none has it, the namespace is gone and took all of
  it along.

Nothing else is touched: a token without a record may belong to a host being
made right now, or to something that merely looks like cnm's, and a record
whose process lives belongs to a live host. ``ip_forward``, which a host in an
existing namespace may have turned on, is left as it is (another host may
rely on it); the report says so. Processes that the dead host started inside
its namespaces are not killed; they keep running in namespaces that are no
longer mounted.

The same removal runs when a :class:`cnm.Host` that was not closed is
garbage-collected, or is still open when the interpreter exits
(:func:`watch`), with a :class:`ResourceWarning`. (Garbage-collected in a
thread other than the main one, it is removed at exit.)
"""

from __future__ import annotations

import atexit
import fcntl
import os
import threading
import warnings
import weakref
from collections.abc import Callable

import attrs

from .errors import ALREADY_GONE, TeardownError
from .firewall import firewall_backend
from .kernel import LINKS_GONE_TIMEOUT, LINKS_STALL, LinkInfo, Rtnl
from .netns import MOUNT_DIRS, NETNS_DIR, MountDir, Namespace, worker_free
from .owner import OwnerRecord, record_path, token_of

__all__ = ["CollectedHost", "GCReport", "gc", "remove_leftovers", "watch"]


@attrs.frozen
class CollectedHost:
    """What :func:`gc` removed of one dead host."""

    #: the host's owner token
    token: str
    #: the process that owned it
    pid: int
    #: ``"isolated"`` or ``"machine"`` (a host in an existing namespace)
    kind: str
    #: one line per thing removed
    removed: tuple[str, ...]
    #: what was noticed and left as it is
    notes: tuple[str, ...] = ()

    def __str__(self) -> str:
        lines = [f"host {self.token} ({self.kind}, owner pid {self.pid} is gone):"]
        lines += [f"  removed {item}" for item in self.removed]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


@attrs.frozen
class GCReport:
    """The outcome of :func:`gc`: what it removed, and which hosts it left because they live."""

    #: the dead hosts whose leftovers were removed
    collected: tuple[CollectedHost, ...] = ()
    #: the tokens of hosts whose owner is alive (untouched)
    alive: tuple[str, ...] = ()
    #: owner records that cnm cannot read (untouched)
    unreadable: tuple[str, ...] = ()

    def __str__(self) -> str:
        if not self.collected:
            lines = ["cnm.gc: nothing to remove"]
        else:
            lines = [f"cnm.gc: removed what {len(self.collected)} dead host(s) left"]
            lines += [str(host) for host in self.collected]
        if self.alive:
            lines.append(f"left {len(self.alive)} live host(s): {', '.join(self.alive)}")
        if self.unreadable:
            lines.append(f"left unreadable owner records: {', '.join(self.unreadable)}")
        return "\n".join(lines)


def gc() -> GCReport:
    """Remove everything of cnm's whose owner process is dead; say what was removed.

    Safe at any time, from any process (as root): a host whose process is
    alive is not touched, nor is anything without an owner record (see the
    module documentation for what is removed and how). Two gc runs at once
    each take a host's record under an exclusive lock (``flock``), so no
    host is removed twice. Goes on past failures and raises them together
    as a :class:`~cnm.errors.TeardownError` (with the report as a note); a
    host whose leftovers could not all be removed keeps its record, so the
    next gc retries it.
    """
    collected: list[CollectedHost] = []
    alive: list[str] = []
    unreadable: list[str] = []
    failures: list[Exception] = []
    try:
        names = sorted(os.listdir(MOUNT_DIRS))
    except FileNotFoundError:
        names = []
    for name in names:
        token = token_of(name)
        if token is None:
            continue
        fd = _open_record(token)
        if fd is None:
            continue  # gone meanwhile, or another gc has it
        try:
            record = OwnerRecord.parse(token, os.read(fd, 1 << 16))
            if record is None:
                unreadable.append(record_path(token))
            elif record.alive():
                alive.append(token)
            else:
                removed, notes, failed = remove_leftovers(record)
                failures += failed
                collected.append(CollectedHost(token, record.pid, record.kind, tuple(removed), tuple(notes)))
        finally:
            os.close(fd)  # releases the lock
    report = GCReport(tuple(collected), tuple(alive), tuple(unreadable))
    if failures:
        error = TeardownError(f"cnm.gc: {len(failures)} removal(s) failed", failures)
        error.add_note(str(report))
        raise error
    return report


def _open_record(token: str) -> int | None:
    """The record of *token*, open and locked against other gc runs; None if it is
    gone or another gc run holds it."""
    try:
        fd = os.open(record_path(token), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            locked = False  # another gc run is on it
        else:
            locked = os.fstat(fd).st_nlink > 0  # else another run removed it after we opened it
    except BaseException:
        os.close(fd)
        raise
    if not locked:
        os.close(fd)
        return None
    return fd


def remove_leftovers(record: OwnerRecord) -> tuple[list[str], list[str], list[Exception]]:
    """Remove everything of *record*'s host; return (removed, notes, failures).

    The record goes last, and only if everything else went.
    """
    token = record.token
    removed: list[str] = []
    notes: list[str] = []
    failures: list[Exception] = []

    def attempt(step: Callable[[], object]) -> bool:
        try:
            step()
        except OSError as exc:
            if exc.errno not in ALREADY_GONE:
                failures.append(exc)
                return False
        except Exception as exc:  # noqa: BLE001 - collected and reported together
            failures.append(exc)
            return False
        return True

    found = _find_namespace(record.netns) if record.kind == "machine" else None
    if record.kind == "machine" and found is None:
        notes.append("its namespace is gone, and everything that was in it")
    namespace = found[0] if found is not None else None
    links: list[Rtnl] = []  # the socket in that namespace, once open
    marked: list[LinkInfo] = []
    try:
        if namespace is not None:
            # Listed before the sandboxes go, to know which veths to wait for.
            def list_links() -> None:
                links.append(Rtnl(namespace))
                marked.extend(link for link in links[0].links() if (link.alias or "").startswith(f"cnm:{token}:"))

            attempt(list_links)
        # The sandboxes first: their veths' host ends go with them.
        directory = os.path.join(MOUNT_DIRS, token)
        if os.path.isdir(directory):
            count = _count_sandboxes(directory)
            if attempt(MountDir(directory).delete):
                removed.append(f"sandbox directory {directory}/ ({count} sandbox namespace(s))")
        for named in Namespace.named(f"cnm-{token}-"):
            if attempt(named.delete):
                removed.append(f"namespace {named.path}")
        if namespace is not None:
            if links:
                _remove_links(links[0], marked, removed, attempt)

            def sweep_firewall() -> None:
                sweep = getattr(firewall_backend(record.firewall), "sweep", None)
                if sweep is not None:
                    removed.extend(sweep(namespace, token))

            # The firewall's loopback and direct-access guards go only once
            # every bridge they protect is gone (the record stays for a retry).
            if not failures:
                attempt(sweep_firewall)
            notes.append("ip_forward there is left as it is (the host may have turned it on)")
    finally:
        for rtnl in links:
            rtnl.close()
        if found is not None:
            os.close(found[1])
    if not failures and attempt(record.remove):
        removed.append(f"owner record {record.path}")
    return removed, notes, failures


def _remove_links(
    rtnl: Rtnl, marked: list[LinkInfo], removed: list[str], attempt: Callable[[Callable[[], object]], bool]
) -> None:
    """Delete the host's links: first wait for its veths to go with their sandboxes
    (one by one a veth costs an RCU grace period), then delete what is left."""
    still = {link.index for link in marked if link.kind == "veth"}

    def wait() -> None:
        still.intersection_update(rtnl.wait_gone(still, LINKS_GONE_TIMEOUT, stall=LINKS_STALL))

    if still:
        attempt(wait)
    gone_with_sandboxes = 0
    for link in marked:
        if link.kind == "veth" and link.index not in still:
            gone_with_sandboxes += 1
            continue

        def delete(link: LinkInfo = link) -> None:
            # By index, and only while it is still the link listed (same alias).
            now = rtnl.link(index=link.index)
            if now is not None and now.alias == link.alias:
                rtnl.delete_link(link.index, f"link {link.name!r} ({link.alias})")
                removed.append(f"link {link.name} ({link.alias})")

        attempt(delete)
    if gone_with_sandboxes:
        removed.append(f"{gone_with_sandboxes} veth(s), with their sandboxes")


def _count_sandboxes(directory: str) -> int:
    try:
        return sum(1 for name in os.listdir(directory) if name.startswith("sb-"))
    except OSError:
        return 0


def _find_namespace(identity: tuple[int, int]) -> tuple[Namespace, int] | None:
    """The namespace whose nsfs (device, inode) is *identity*, held open by a
    descriptor (returned too, for the caller to close); None if none is found.

    Looks in this process's own namespace, the named ones and those of every
    running process. An inode number can be reused once its namespace is
    freed, so a match may be another namespace; that is harmless, because only
    what carries the dead host's token is removed there.
    """
    candidates = [f"/proc/{os.getpid()}/ns/net"]
    try:
        candidates += [os.path.join(NETNS_DIR, n) for n in sorted(os.listdir(NETNS_DIR))]
    except FileNotFoundError:
        pass
    candidates += [f"/proc/{pid}/ns/net" for pid in os.listdir("/proc") if pid.isdigit()]
    for path in candidates:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # the process exited, or the mount went
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == identity:
            return Namespace(f"namespace of {path}", f"/proc/self/fd/{fd}"), fd
        os.close(fd)
    return None


def watch(host: object, record: OwnerRecord, what: str) -> None:
    """Remove what *host* holds if it is garbage-collected, or still open at
    interpreter exit, without having been closed; warn that it was not closed.

    The finalizer holds the record, never the host.
    """
    weakref.finalize(host, _abandoned, record, what)


def _abandoned(record: OwnerRecord, what: str) -> None:
    if os.getpid() != record.pid:
        return  # a forked child's copy of the host: its owner is the parent
    try:
        with open(record.path, "rb") as f:
            if OwnerRecord.parse(record.token, f.read()) != record:
                return  # closed, and the token since claimed by another host
    except FileNotFoundError:
        return  # closed
    if threading.current_thread() is not threading.main_thread() or not worker_free():
        # Collected in whatever thread the garbage collector ran in: maybe
        # cnm's namespace worker (which the removal needs), a thread left
        # inside another namespace, or one in the middle of handing a call to
        # the worker. The removal waits for the interpreter's exit, which
        # runs in the main thread.
        atexit.register(_abandoned, record, what)
        return
    warnings.warn(
        f"cnm: {what} (token {record.token}) was not closed; removing what it left",
        ResourceWarning,
        stacklevel=1,
    )
    _, _, failures = remove_leftovers(record)
    for failure in failures:
        warnings.warn(f"cnm: {what}: could not remove: {failure}", ResourceWarning, stacklevel=1)
