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
"""

from __future__ import annotations

import ctypes
import json
import os
import re

import attrs

from .errors import ALREADY_GONE, ConflictError, kernel_error
from .netns import MOUNT_DIRS

__all__ = ["RECORD_SUFFIX", "OwnerRecord", "process_start", "record_path", "token_of"]

RECORD_SUFFIX = ".owner"
_TOKEN = re.compile(r"^[0-9a-f]{1,64}$")
_KINDS = ("isolated", "machine")

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
                _write_new(MOUNT_DIRS, record.path, data)
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
        try:
            os.rmdir(MOUNT_DIRS)
        except OSError:
            pass  # still holds another host's files (ENOTEMPTY), or already gone


def record_path(token: str) -> str:
    return os.path.join(MOUNT_DIRS, token + RECORD_SUFFIX)


def token_of(name: str) -> str | None:
    """The token of a file name in ``/run/cnm`` if it is an owner record's."""
    if not name.endswith(RECORD_SUFFIX):
        return None
    token = name[: -len(RECORD_SUFFIX)]
    return token if _TOKEN.match(token) else None


def _write_new(directory: str, path: str, data: bytes) -> None:
    """Create *path* holding *data*, atomically; FileExistsError if it exists."""
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N names the unnamed file
        # (os.link calls link(), which would link the /proc symlink itself: EXDEV).
        source = f"/proc/self/fd/{fd}".encode()
        if _libc.linkat(_AT_FDCWD, source, _AT_FDCWD, path.encode(), _AT_SYMLINK_FOLLOW) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
    finally:
        os.close(fd)
