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
  leftovers (nftables: tables ``ip cnm-TOKEN`` and ``ip6 cnm-TOKEN``), then
  its pin ``/run/cnm/TOKEN.netns``.

That namespace is found by the identity the record gives (its nsfs device
and inode). The host bind-mounts it on its pin right after its record and
before it makes anything there, and removes the pin after everything else:
so while anything of the host's can be there, the pin holds the namespace
(even once whatever else held it, a process or a mount such as ``/tmp/ns1``,
is gone). Without the pin it is looked for everywhere it can be held (see
:mod:`cnm.strays`). A host whose pin is gone and whose namespace is found
nowhere had made nothing there yet, or had removed it all: its record
goes. A host whose pin file is there but holds nothing (unmounted by someone
else) keeps its record, reported as kept: not finding a namespace is not
proof that it is gone.

Before it acts on anything, gc checks that it is what cnm makes, as the
kernel says, never following a symlink: the record root's, mode 0600, a
regular file; the sandbox directory a directory with only cnm's tmpfs on
it; each namespace file and the pin a regular file with only a network
namespace mounted on it, the pin the one the record names. A record that
fails any of it is refused, with everything it names, and reported. Mounts
are removed with ``UMOUNT_NOFOLLOW``.

A host is dead only when its pid is gone (see :meth:`OwnerRecord.alive`) and
no process holds the locks a live host keeps on its record and on its
sandbox directory: a record rewritten, or replaced, to name a dead pid does
not make a live host look dead.

Processes still in a dead host's namespaces (its own, its outside, its
sandboxes: not the existing namespace a ``cnm.Host()`` was in) are listed in
the report. Those that cnm started, found by the mark ``CNM_OWNER=TOKEN`` in
their environment (given by ``run`` and ``popen``) wherever they
are, get SIGTERM, then together one second to exit, then SIGKILL; the
others are left running, in namespaces that are no longer mounted.

Nothing else is touched: a token without a record may belong to a host being
made right now, or to something that merely looks like cnm's, and a record
whose process lives belongs to a live host. ``ip_forward``, which a host in an
existing namespace may have turned on, is left as it is (another host may
rely on it); the report says so.

The same removal runs when a :class:`cnm.Host` that was not closed is
garbage-collected, or is still open when the interpreter exits
(:func:`watch`), with a :class:`ResourceWarning`. (Garbage-collected in a
thread other than the main one, it is removed at exit.)
"""

from __future__ import annotations

import atexit
import os
import stat
import threading
import warnings
import weakref
from collections.abc import Callable

import attrs

from .errors import ALREADY_GONE, TeardownError
from .firewall import firewall_backend
from .kernel import LINKS_GONE_TIMEOUT, LINKS_STALL, LinkInfo, Rtnl
from .mounts import Mount, mounted_at, read_mounts
from .netns import MOUNT_DIRS, MountDir, Namespace, worker_free
from .owner import OwnerRecord, open_record, pin_path, record_path, record_tokens
from .strays import end_processes, find_namespace

__all__ = ["CollectedHost", "GCReport", "Outcome", "check_names", "gc", "remove_leftovers", "watch"]


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
    #: every process found in the host's namespaces or marked as started by
    #: it, and what became of it (those cnm started are ended, the others left)
    processes: tuple[str, ...] = ()

    def __str__(self) -> str:
        lines = [f"host {self.token} ({self.kind}, owner pid {self.pid} is gone):"]
        lines += [f"  {line}" for line in self.processes]
        lines += [f"  removed {item}" for item in self.removed]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


@attrs.frozen
class GCReport:
    """The outcome of :func:`gc`: what it removed, and what it left, and why."""

    #: the dead hosts whose leftovers were removed
    collected: tuple[CollectedHost, ...] = ()
    #: the tokens of hosts whose owner is alive (untouched)
    alive: tuple[str, ...] = ()
    #: owner records that cnm cannot read (untouched)
    unreadable: tuple[str, ...] = ()
    #: ``"PATH: reason"`` for each record refused, untouched with everything
    #: it names: not root's, not mode 0600, a symlink, or naming things that
    #: are not what cnm makes (a symlink, or another mount, where its
    #: directory or a namespace should be; a pin holding another namespace)
    refused: tuple[str, ...] = ()
    #: ``"TOKEN: reason"`` for each dead host whose record is kept because gc
    #: cannot prove that its namespace, with its leftovers, is gone
    kept: tuple[str, ...] = ()
    #: the tokens of records whose pid is gone but which a live process still
    #: holds locked (another gc run on it, a child the owner forked, or the
    #: live owner itself under a rewritten record): untouched
    held: tuple[str, ...] = ()

    def __str__(self) -> str:
        if not self.collected:
            lines = ["cnm.gc: nothing to remove"]
        else:
            lines = [f"cnm.gc: removed what {len(self.collected)} dead host(s) left"]
            lines += [str(host) for host in self.collected]
        if self.alive:
            lines.append(f"left {len(self.alive)} live host(s): {', '.join(self.alive)}")
        if self.held:
            lines.append(f"left records a live process holds: {', '.join(self.held)}")
        if self.unreadable:
            lines.append(f"left unreadable owner records: {', '.join(self.unreadable)}")
        lines += [f"refused {item}" for item in self.refused]
        lines += [f"kept {item}" for item in self.kept]
        return "\n".join(lines)


def gc() -> GCReport:
    """Remove everything of cnm's whose owner process is dead; say what was removed.

    Safe at any time, from any process (as root): a host whose process is
    alive is not touched, nor is anything without an owner record (see the
    module documentation for what is removed and how). A host is dead only
    when its record names a pid that is gone *and* no process holds the
    locks a live host holds (on its record and on its sandbox directory).
    Records that are not root's, not mode 0600, or symlinks are refused,
    as are records naming things that are not cnm's (a symlink or a
    foreign mount where cnm's directory or namespace file would be): each
    is reported in :attr:`GCReport.refused`, and nothing it names is
    touched. Symlinks are never followed, and only mounts the kernel says
    are cnm's (its tmpfs, nsfs namespace files) are unmounted.

    Processes in a dead host's namespaces are reported; those cnm started
    (``run``/``popen``, and their children: marked by ``CNM_OWNER=TOKEN`` in
    their environment) get SIGTERM, one second for all of them together,
    then SIGKILL.

    Two gc runs at once each take a host's record under an exclusive lock
    (``flock``), so no host is removed twice. Goes on past failures and
    raises them together as a :class:`~cnm.errors.TeardownError` (with the
    report as a note); a host whose leftovers could not all be removed keeps
    its record, so the next gc retries it.
    """
    collected: list[CollectedHost] = []
    alive: list[str] = []
    held: list[str] = []
    unreadable: list[str] = []
    refused: list[str] = []
    kept: list[str] = []
    failures: list[Exception] = []
    for token in record_tokens(refused):
        opened = open_record(token)
        if opened is None:
            continue  # gone meanwhile
        if isinstance(opened, str):
            refused.append(f"{record_path(token)}: {opened}")
            continue
        fd, locked = opened
        try:
            record = OwnerRecord.parse(token, os.read(fd, 1 << 16))
            if record is None:
                unreadable.append(record_path(token))
                continue
            if record.alive():
                alive.append(token)
                continue
            mounts = read_mounts()
            if not locked or MountDir(os.path.join(MOUNT_DIRS, token)).locked(mounts):
                held.append(token)
                continue
            mismatch = check_names(record, mounts)
            if mismatch is not None:
                refused.append(f"{record.path}: {mismatch}")
                continue
            outcome = remove_leftovers(record, mounts)
            failures += outcome.failures
            if outcome.kept is not None:
                kept.append(f"{token}: {outcome.kept}")
            else:
                collected.append(
                    CollectedHost(token, record.pid, record.kind, outcome.removed, outcome.notes, outcome.processes)
                )
        finally:
            os.close(fd)  # releases the lock
    report = GCReport(tuple(collected), tuple(alive), tuple(unreadable), tuple(refused), tuple(kept), tuple(held))
    if failures:
        error = TeardownError(f"cnm.gc: {len(failures)} removal(s) failed", failures)
        error.add_note(str(report))
        raise error
    return report


def check_names(record: OwnerRecord, mounts: list[Mount]) -> str | None:
    """Why what *record* names is not what cnm makes, or None if it is.

    Its sandbox directory must be a real directory with nothing but cnm's
    tmpfs mounted on it; its namespaces in /run/netns and its pin regular
    files with nothing but a network namespace's nsfs file mounted on them,
    and the pin the namespace the record names. Seen with ``lstat`` and
    mountinfo, never through a symlink.
    """
    token = record.token
    problems = [_not_cnms(os.path.join(MOUNT_DIRS, token), mounts, directory=True)]
    problems += [_not_cnms(n.path, mounts) for n in Namespace.named(f"cnm-{token}-")]
    if record.kind == "machine":
        problems.append(_not_cnms(pin_path(token), mounts, identity=record.netns))
    return next((p for p in problems if p is not None), None)


def _not_cnms(path: str, mounts: list[Mount], *, directory: bool = False, identity: tuple[int, int] | None = None) -> str | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if directory != stat.S_ISDIR(st.st_mode) or not (directory or stat.S_ISREG(st.st_mode)):
        return f"{path} is not a {'directory' if directory else 'regular file'}"
    for mount in mounted_at(mounts, path):
        if mount.cnm_tmpfs if directory else mount.net_inode is not None:
            if identity is not None and (mount.dev, mount.net_inode) != identity:
                return f"{path} holds namespace {mount.root}, not net:[{identity[1]}] that the record names"
            continue
        return f"{path} has a {mount.fstype} mount of {mount.source!r}, not cnm's"
    return None


@attrs.frozen
class Outcome:
    """What :func:`remove_leftovers` did."""

    removed: tuple[str, ...]
    notes: tuple[str, ...]
    processes: tuple[str, ...]
    failures: tuple[Exception, ...]
    #: why nothing was done and the record is kept, if so
    kept: str | None = None


def remove_leftovers(record: OwnerRecord, mounts: list[Mount] | None = None) -> Outcome:
    """Remove everything of *record*'s host (end the processes it started
    first); say what was done. The record goes last, and only if everything
    else went."""
    token = record.token
    removed: list[str] = []
    notes: list[str] = []
    failures: list[Exception] = []
    mounts = read_mounts() if mounts is None else mounts

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

    found = None
    if record.kind == "machine":
        found = find_namespace(record.netns, first=pin_path(token))
        if found is None:
            if os.path.lexists(pin_path(token)):
                # The pin's file is there but holds nothing: unmounted by
                # someone else (or the host was killed between making the
                # file and mounting it), so cnm's order proves nothing here.
                return Outcome((), (), (), (), "cannot prove its namespace is gone (its pin holds nothing, and no "
                               "process, mount or descriptor found holds it): the record stays")  # fmt: skip
            notes.append(
                "its namespace was not found, and its pin is gone: the host had made nothing there yet (the pin "
                "comes first) or had removed everything (the pin goes last)"
            )
    namespace = found[0] if found is not None else None
    directory = os.path.join(MOUNT_DIRS, token)
    processes = end_processes(token, directory, mounts)
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
        if stat.S_ISDIR(_lstat_mode(directory)):
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
    if record.kind == "machine" and not failures and os.path.lexists(pin_path(token)):
        if attempt(Namespace(f"pin of {token}", pin_path(token)).delete):
            removed.append(f"namespace pin {pin_path(token)}")
    if not failures and attempt(record.remove):
        removed.append(f"owner record {record.path}")
    return Outcome(tuple(removed), tuple(notes), processes, tuple(failures))


def _lstat_mode(path: str) -> int:
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return 0


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
    for failure in remove_leftovers(record).failures:
        warnings.warn(f"cnm: {what}: could not remove: {failure}", ResourceWarning, stacklevel=1)
