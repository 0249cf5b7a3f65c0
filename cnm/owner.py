"""Owner records: which process a host's kernel objects belong to.

Everything a host makes carries its *token* (namespace names
``cnm-TOKEN-...``, the directory ``/run/cnm/TOKEN/``, link aliases
``cnm:TOKEN:...``, the nftables table ``cnm-TOKEN``). Before it makes any of
it, the host writes ``/run/cnm/TOKEN.owner``, saying which process owns the
token; the record goes last, once the host is closed. So a record whose
process is gone names exactly what a dead process left (see
:func:`cnm.gc`), and a token without a record is never cnm's to remove.

A process is named by three things, because each alone can lie:

* its pid, which the kernel reuses once the process is gone;
* its start time (field 22 of ``/proc/PID/stat``, clock ticks after boot),
  which tells a reused pid from the original;
* the boot id (``/proc/sys/kernel/random/boot_id``): ``/run`` is not a tmpfs
  on every machine, so a record can outlive a reboot, and after one the pid
  and start time of an unrelated process may match by chance.

Pids and start times mean something only to a process that sees the same
pid namespace (and time namespace, which shifts start times) as the
owner did: a process in a container sharing ``/run`` would see no such pid
and take a live owner for dead. So the record also names those two
namespaces, and a process that sees others cannot judge the record and
takes its owner for alive.

The record is created whole or not at all: written into an unnamed file
(``O_TMPFILE``) and then given its name with ``linkat``, so a reader never
sees a half-written record, a process killed while writing leaves nothing,
and a token already recorded fails the claim (``EEXIST``).

The strongest proof that a host lives is not in what its record says but in
what its process holds: the owner takes an exclusive ``flock`` on the record
before it has a name, and keeps that descriptor open until the record is
removed. The kernel releases the lock when the last descriptor goes, so a
killed or crashed owner leaves it free, and a record rewritten to name a
dead pid still cannot make a live host look dead (see :func:`cnm.gc`; its
sandbox directory carries a second such lock, for a record replaced by
another file). A child forked without ``exec`` closes its copies
(``os.register_at_fork``), so it does not keep its parent's host "alive".

A record is root's own, mode 0600, a regular file with one name; gc refuses
any other (:func:`refusal`), and never follows a symlink to one.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import stat

import attrs

from .errors import ALREADY_GONE, ConflictError, kernel_error
from .netns import MOUNT_DIRS

__all__ = ["OWNER_ENV", "RECORD_MODE", "PIN_SUFFIX", "RECORD_SUFFIX", "OwnerRecord", "open_record", "pin_path", "process_start", "record_path", "record_tokens", "refusal", "token_of"]

RECORD_SUFFIX = ".owner"
PIN_SUFFIX = ".netns"
_TOKEN = re.compile(r"^[0-9a-f]{1,64}$")
_KINDS = ("isolated", "machine")
#: the environment variable that marks a process as started by a host's
#: ``run``/``popen`` (its value: the host's token), which its children inherit
OWNER_ENV = "CNM_OWNER"
#: the only mode a record cnm trusts has (and it must be root's)
RECORD_MODE = 0o600

#: the records this process owns, by token: the open, locked descriptor of each
_held: dict[str, int] = {}


def _forget_after_fork() -> None:
    # A forked child's copies of the lock descriptors would keep its
    # parent's hosts looking alive after the parent died.
    for fd in _held.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


os.register_at_fork(after_in_child=_forget_after_fork)

_AT_FDCWD = -100
_AT_SYMLINK_FOLLOW = 0x400
_libc = ctypes.CDLL(None, use_errno=True)
_libc.linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]


def _boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def _namespace_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _judging_namespaces() -> tuple[tuple[int, int], tuple[int, int] | None]:
    """This process's pid and time namespaces: what its pids and start times mean."""
    pidns = _namespace_id("/proc/self/ns/pid")
    assert pidns is not None  # every Linux with network namespaces has it
    return pidns, _namespace_id("/proc/self/ns/time")


def process_start(pid: int) -> int | None:
    """The start time of process *pid* (clock ticks after boot), or None if
    there is no such process or it has exited (a zombie holds nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may hold anything, spaces and ')' too.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # fields[0] is field 3, the state
        return None
    return int(fields[19])  # field 22


@attrs.frozen
class OwnerRecord:
    """What ``/run/cnm/TOKEN.owner`` says: who owns *token* and where its host lives.

    *kind* is ``"isolated"`` (everything is in namespaces named after the
    token) or ``"machine"`` (a :class:`cnm.Host` in an existing namespace,
    where its links and firewall table are). *netns* identifies the
    namespace the owner was in when it made the host, as the ``(st_dev,
    st_ino)`` of its namespace file: for a ``"machine"`` host, the host's.
    *firewall* is the name of the host's firewall backend.
    """

    token: str
    pid: int
    start: int
    boot: str
    kind: str
    netns: tuple[int, int]
    firewall: str
    #: the pid and time namespaces the pid and start time belong to, as
    #: (st_dev, st_ino) of their files; the time one is None on a kernel without
    pidns: tuple[int, int]
    timens: tuple[int, int] | None

    @property
    def path(self) -> str:
        return record_path(self.token)

    @classmethod
    def claim(cls, token: str, kind: str, netns_path: str, firewall: str) -> OwnerRecord:
        """Record this process as the owner of *token*; raise ConflictError if it has one."""
        pid = os.getpid()
        start = process_start(pid)
        assert start is not None  # this process is running
        st = os.stat(netns_path)
        pidns, timens = _judging_namespaces()
        record = cls(token, pid, start, _boot_id(), kind, (st.st_dev, st.st_ino), firewall, pidns, timens)
        data = json.dumps(attrs.asdict(record)).encode()
        for attempt in range(5):
            try:
                _held[token] = _write_new(MOUNT_DIRS, record.path, data)
                return record
            except FileNotFoundError:
                # A host closing just then removed the empty MOUNT_DIRS: make it again.
                if attempt == 4:
                    raise
            except FileExistsError as exc:
                raise ConflictError(f"host token {token!r} is already owned (see {record.path})") from exc
            except OSError as exc:
                raise kernel_error(exc, f"owner record {record.path}: create") from exc
        raise AssertionError("unreachable")

    @classmethod
    def parse(cls, token: str, data: bytes) -> OwnerRecord | None:
        """The record in *data*, or None if it is not one cnm wrote for *token*."""
        try:
            raw = json.loads(data)
            record = cls(
                token=raw["token"],
                pid=int(raw["pid"]),
                start=int(raw["start"]),
                boot=str(raw["boot"]),
                kind=str(raw["kind"]),
                netns=(int(raw["netns"][0]), int(raw["netns"][1])),
                firewall=str(raw["firewall"]),
                pidns=(int(raw["pidns"][0]), int(raw["pidns"][1])),
                timens=None if raw["timens"] is None else (int(raw["timens"][0]), int(raw["timens"][1])),
            )
        except (ValueError, KeyError, TypeError, IndexError):
            return None
        if record.token != token or record.kind not in _KINDS:
            return None
        return record

    def alive(self) -> bool:
        """True while the process that wrote this record is running, and when
        this process cannot tell (it sees other pids or clocks than the owner)."""
        if (self.pidns, self.timens) != _judging_namespaces():
            return True
        return self.boot == _boot_id() and process_start(self.pid) == self.start

    def remove(self) -> None:
        """Delete the record (already gone is success); ``/run/cnm`` goes too once empty."""
        try:
            os.unlink(self.path)
        except OSError as exc:
            if exc.errno not in ALREADY_GONE:
                raise kernel_error(exc, f"owner record {self.path}: remove") from exc
        fd = _held.pop(self.token, None)
        if fd is not None:
            os.close(fd)  # the lock goes only with the record's name
        try:
            os.rmdir(MOUNT_DIRS)
        except OSError:
            pass  # still holds another host's files (ENOTEMPTY), or already gone


def record_path(token: str) -> str:
    return os.path.join(MOUNT_DIRS, token + RECORD_SUFFIX)


def pin_path(token: str) -> str:
    """Where a host in an existing namespace (``cnm.Host()``) bind-mounts that
    namespace while it lives: made after its record and before anything in
    the namespace, removed after all of it, so gc can find it there."""
    return os.path.join(MOUNT_DIRS, token + PIN_SUFFIX)


def token_of(name: str) -> str | None:
    """The token of a file name in ``/run/cnm`` if it is an owner record's."""
    if not name.endswith(RECORD_SUFFIX):
        return None
    token = name[: -len(RECORD_SUFFIX)]
    return token if _TOKEN.match(token) else None


def refusal(st: os.stat_result) -> str | None:
    """Why a file with status *st* is not a record cnm trusts, or None if it is."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != 0:
        return f"owned by uid {st.st_uid}, not root"
    if stat.S_IMODE(st.st_mode) != RECORD_MODE:
        return f"mode {stat.S_IMODE(st.st_mode):04o}, not {RECORD_MODE:04o}"
    if st.st_nlink != 1:
        return f"{st.st_nlink} names, not one"
    return None


def record_tokens(refused: list[str]) -> list[str]:
    """The tokens of the records in /run/cnm, if it is a directory of root's (else none)."""
    try:
        st = os.lstat(MOUNT_DIRS)
    except FileNotFoundError:
        return []
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
        refused.append(f"{MOUNT_DIRS}: not a directory of root's (a symlink is never followed)")
        return []
    try:
        names = sorted(os.listdir(MOUNT_DIRS))
    except FileNotFoundError:
        return []
    return [token for token in map(token_of, names) if token is not None]


def open_record(token: str) -> tuple[int, bool] | str | None:
    """The record of *token*, open, and whether this call got its lock (no
    live host and no other gc run holds it); the reason it is refused; or
    None if it is gone."""
    path = record_path(token)
    try:
        # Never through a symlink; a FIFO would block a plain open.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return "a symbolic link (not followed)" if exc.errno == errno.ELOOP else f"cannot be opened: {exc.strerror}"
    try:
        st = os.fstat(fd)
        why = refusal(st) if st.st_nlink else None
        if why is not None or not st.st_nlink:
            os.close(fd)
            return why
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return fd, False
        if os.fstat(fd).st_nlink == 0:  # another run removed it after we opened it
            os.close(fd)
            return None
    except BaseException:
        os.close(fd)
        raise
    return fd, True


def _write_new(directory: str, path: str, data: bytes) -> int:
    """Create *path* holding *data*, atomically; FileExistsError if it exists.

    Returns the file's descriptor, holding an exclusive flock taken before
    the file had a name (so no reader ever sees it unlocked while its writer lives).
    """
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, RECORD_MODE)
    try:
        os.fchmod(fd, RECORD_MODE)  # whatever the umask
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, data)
        # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N names the unnamed file
        # (os.link calls link(), which would link the /proc symlink itself: EXDEV).
        source = f"/proc/self/fd/{fd}".encode()
        if _libc.linkat(_AT_FDCWD, source, _AT_FDCWD, path.encode(), _AT_SYMLINK_FOLLOW) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
    except BaseException:
        os.close(fd)
        raise
    return fd
