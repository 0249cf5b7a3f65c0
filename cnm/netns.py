"""Network namespaces: create, enter, delete, and sockets opened inside one.

Everything here runs in this process. Python 3.11 has no ``os.setns`` or
``os.unshare``, so libc is called through ctypes. ``setns(CLONE_NEWNET)`` and
``unshare(CLONE_NEWNET)`` only move the *calling thread*, so namespace work
happens in another thread and the caller's thread never moves. (pyroute2's
own ``netns=`` support forks a helper process per call instead: 5-8 ms each,
see :ref:`fact-pyroute2-netns` in the docs' explanation page.)

Two kinds of thread do it:

* cnm's own short kernel calls (create a namespace, open a socket in it,
  write a sysctl) go to one long-lived worker thread, which enters the
  namespace, does the call and goes back home. Handing a call over costs
  about a fifth of starting a thread (:ref:`fact-worker-handover`).
* user code (:meth:`Namespace.run`: ``sandbox.run``, ``call``, ``popen``) gets
  a fresh thread each time, because it may block for as long as it likes.

A namespace outlives the thread that made it because it is bind-mounted on
a file: a host's own namespaces on ``/run/netns/NAME``, the same place ``ip
netns`` uses, so operators can look inside with ``ip netns exec``; sandboxes
on files in a :class:`MountDir` of their host, ``/run/cnm/TOKEN/`` (as
Docker keeps its sandboxes in ``/run/docker/netns``; ``nsenter
--net=PATH`` enters one). cnm holds no file descriptor per namespace: it
opens the mount by path when it needs to, so the number of open descriptors
does not grow with the number of namespaces.

Why a directory of cnm's own, on a tmpfs cnm mounts: making the mount-point
file is part of every namespace's cost, and on a machine whose ``/run`` is
not a tmpfs (``/run/netns`` on ext4 here) creating a file where many were
recently deleted costs ~1.3 ms, more than the namespace itself (ext4's inode
allocator skips recently freed inodes one by one; :ref:`fact-netns-file`).
On a tmpfs it costs microseconds, and unmounting the tmpfs takes every
sandbox mount in it along in one call.

A socket created inside a namespace stays bound to it for its whole life,
whichever thread later uses it; that is how netlink sockets for a namespace
are made (:meth:`Namespace.socket`).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import queue
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

from .errors import ALREADY_GONE, kernel_error
from .mounts import CNM_TMPFS_SOURCE, Mount, mounted_at

__all__ = ["MOUNT_DIRS", "NETNS_DIR", "MountDir", "Namespace", "worker_free"]

T = TypeVar("T")

NETNS_DIR = "/run/netns"
#: where each host's MountDir is mounted, one directory per owner token
MOUNT_DIRS = "/run/cnm"

_CLONE_NEWNET = 0x40000000
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_SHARED = 1 << 20
_MNT_DETACH = 2
# Unmount the path itself, never what a symlink there points to.
_UMOUNT_NOFOLLOW = 8
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x2, 0x4, 0x8

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        code = ctypes.get_errno()
        raise kernel_error(OSError(code, os.strerror(code)), what)


def _in_thread(fn: Callable[[], T]) -> T:
    """Run *fn* in a fresh thread and return its result (or raise its exception)."""
    box: list[tuple[bool, object]] = []

    def target() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:  # handed back to the caller below
            box.append((False, exc))

    worker = threading.Thread(target=target, name="cnm-netns")
    worker.start()
    worker.join()
    return _unbox(box[0])


def _unbox(outcome: tuple[bool, object]) -> T:  # type: ignore[type-var]
    ok, value = outcome
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


class _Worker:
    """The long-lived thread that runs cnm's own namespace calls, one at a time.

    Between calls it is always in the process's home namespace (the main
    thread's). A call that cannot return it home kills the worker, and the
    next call starts a new one, so no call ever runs in a stale namespace.
    """

    _lock = threading.Lock()
    _current: _Worker | None = None

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[Callable[[], object], list[tuple[bool, object]], threading.Event] | None] = (
            queue.SimpleQueue()
        )
        self.alive = True
        self.thread = threading.Thread(target=self._loop, name="cnm-netns-worker", daemon=True)
        self.thread.start()

    @classmethod
    def submit(cls, fn: Callable[[], T]) -> T:
        with cls._lock:
            if cls._current is None or not cls._current.alive:
                cls._current = cls()
            worker = cls._current
        if threading.current_thread() is worker.thread:  # it would wait for itself forever
            raise RuntimeError("cnm: a namespace call made from inside another one")
        box: list[tuple[bool, object]] = []
        done = threading.Event()
        worker.jobs.put((fn, box, done))
        done.wait()
        return _unbox(box[0])

    @classmethod
    def free(cls) -> bool:
        """See :func:`worker_free`."""
        if cls._lock.acquire(blocking=False):
            cls._lock.release()
            return True
        return False

    @classmethod
    def forget_after_fork(cls) -> None:
        # A forked child has no copy of the worker thread: let it start its own.
        cls._lock = threading.Lock()
        cls._current = None

    def _loop(self) -> None:
        home = os.open(f"/proc/{os.getpid()}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            while self.alive:
                job = self.jobs.get()
                if job is None:
                    return
                fn, box, done = job
                try:
                    box.append((True, fn()))
                except BaseException as exc:  # handed back to the caller
                    box.append((False, exc))
                if _libc.setns(home, _CLONE_NEWNET) != 0:
                    self.alive = False  # stranded: a new worker takes over
                done.set()
        finally:
            os.close(home)
            # Anything queued behind a dead worker is retried by a new one.
            while True:
                try:
                    job = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    fn, box, done = job
                    try:
                        box.append((True, _Worker.submit(fn)))
                    except BaseException as exc:
                        box.append((False, exc))
                    done.set()


def worker_free() -> bool:
    """False while some thread is handing a call to the namespace worker.

    The hand-over lock is not reentrant: a finalizer that the garbage
    collector runs in the thread holding it must not make namespace calls.
    """
    return _Worker.free()


os.register_at_fork(after_in_child=_Worker.forget_after_fork)


def _enter(path: str, what: str) -> None:
    """setns the calling thread into the namespace at *path*."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, _CLONE_NEWNET), f"namespace {what!r}: setns")
    finally:
        os.close(fd)


class Namespace:
    """A network namespace reachable by a path (a bind mount or a /proc link)."""

    __slots__ = ("name", "path")

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path

    def __repr__(self) -> str:
        return f"Namespace({self.name!r}, {self.path!r})"

    @classmethod
    def current(cls) -> Namespace:
        """The namespace of this process's main thread (for ``cnm.Host()``)."""
        return cls("root", f"/proc/{os.getpid()}/ns/net")

    @property
    def owned(self) -> bool:
        """True when this namespace is a bind mount that cnm may delete."""
        return self.path.startswith((NETNS_DIR + "/", MOUNT_DIRS + "/"))

    @classmethod
    def create(
        cls, name: str, setup: Callable[[], object] | None = None, *, here: bool = False, path: str | None = None
    ) -> Namespace:
        """Create a new namespace mounted on *path* (default ``/run/netns/NAME``).

        *setup*, when given, runs inside the new namespace before this returns
        (in the thread that created it): the cheapest moment to bring ``lo`` up.
        If anything fails, nothing is left behind.

        The work runs on the namespace worker, which goes home afterwards.
        With ``here=True`` it runs in the calling thread instead, which is
        left inside the new namespace: for threads of cnm's own that exist
        only to build namespaces in parallel (:meth:`cnm.Host.create_sandboxes`)
        and never run anything that depends on where they are.
        """
        if path is None:
            path = os.path.join(NETNS_DIR, name)
            os.makedirs(NETNS_DIR, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0)
        except FileExistsError as exc:
            raise kernel_error(exc, f"namespace {name!r}", reason=f"{path} already exists") from exc
        os.close(fd)
        ns = cls(name, path)

        def make() -> None:  # in the worker, which goes home afterwards
            _check(_libc.unshare(_CLONE_NEWNET), f"namespace {name!r}: unshare")
            self_ns = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
            _check(_libc.mount(self_ns, path.encode(), b"none", _MS_BIND, None), f"namespace {name!r}: bind mount")
            if setup is not None:
                setup()

        try:
            if here:
                make()
            else:
                _Worker.submit(make)
        except BaseException:
            ns.delete()
            raise
        return ns

    @classmethod
    def bind(cls, name: str, path: str, source: str) -> Namespace:
        """The namespace at *source* mounted on *path* too (a new file); nothing
        is left behind if that fails."""
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0)
        os.close(fd)
        ns = cls(name, path)
        try:
            _check(_libc.mount(source.encode(), path.encode(), b"none", _MS_BIND, None), f"namespace {name!r}: bind mount")
        except BaseException:
            ns.delete()
            raise
        return ns

    def delete(self) -> None:
        """Unmount and remove the namespace's mount point. Already gone is success.

        The kernel frees the namespace (and every link in it, taking the other
        end of each veth with it) once nothing else holds it, asynchronously.
        """
        if not self.owned:
            raise kernel_error(errno.EPERM, f"namespace {self.name!r}", reason="not owned by cnm, so never deleted")
        rc = _libc.umount2(self.path.encode(), _MNT_DETACH | _UMOUNT_NOFOLLOW)
        if rc != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
            code = ctypes.get_errno()
            raise kernel_error(OSError(code, os.strerror(code)), f"namespace {self.name!r}: unmount")
        try:
            os.unlink(self.path)
        except OSError as exc:
            if exc.errno not in ALREADY_GONE:
                raise kernel_error(exc, f"namespace {self.name!r}: remove mount point") from exc

    @staticmethod
    def sweep(prefix: str) -> list[Exception]:
        """Delete every namespace in /run/netns whose name starts with *prefix*.

        The last step of closing an isolated host: whatever a failed step left
        behind carries the host's owner mark in its name. Returns the failures.
        """
        failures: list[Exception] = []
        for namespace in Namespace.named(prefix):
            try:
                namespace.delete()
            except Exception as exc:  # noqa: BLE001 - collected
                failures.append(exc)
        return failures

    @staticmethod
    def named(prefix: str) -> list[Namespace]:
        """The namespaces in /run/netns whose name starts with *prefix*, sorted by name."""
        try:
            names = sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
        except FileNotFoundError:
            return []
        return [Namespace(name, os.path.join(NETNS_DIR, name)) for name in names]

    def run(self, fn: Callable[[], T]) -> T:
        """Run *fn* in a fresh thread that has entered this namespace; return its result.

        For user code, which may block: it never holds up cnm's own calls.
        """

        def entered() -> T:
            _enter(self.path, self.name)
            return fn()

        return _in_thread(entered)

    def quick(self, fn: Callable[[], T]) -> T:
        """Run *fn*, a short call of cnm's own, inside this namespace; return its result.

        Runs on the shared worker thread, so *fn* must not block.
        """

        def entered() -> T:
            _enter(self.path, self.name)
            return fn()

        return _Worker.submit(entered)

    def socket(self, family: int, kind: int, proto: int = 0) -> socket.socket:
        """A socket created inside this namespace (it stays bound to it)."""
        return self.quick(lambda: socket.socket(family, kind, proto))

    def write_sysctl(self, key: str, value: str) -> None:
        """Set a per-namespace sysctl such as ``net/ipv4/ip_forward``.

        ``/proc/sys/net`` shows the namespace of the thread that opens it, so
        the write happens from a thread inside this namespace.
        """
        self.quick(lambda: _write_proc_sys(key, value))

    def read_sysctl(self, key: str) -> str:
        return self.quick(lambda: _read_proc_sys(key))


#: the MountDirs this process made, by path: the descriptor holding each one's lock
_held_dirs: dict[str, int] = {}


def _forget_dirs_after_fork() -> None:
    # A forked child's copies would keep its parent's hosts looking alive.
    for fd in _held_dirs.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _held_dirs.clear()


os.register_at_fork(after_in_child=_forget_dirs_after_fork)


class MountDir:
    """A directory on a small tmpfs of cnm's own, for namespace mount points.

    See the module documentation for why. The tmpfs is a shared mount (as
    ``ip netns`` makes ``/run/netns``), so that unmounting a namespace here
    also unmounts the copies that mount namespaces made meanwhile hold, and
    the namespace can go.

    The host that made it holds an exclusive ``flock`` on the tmpfs's root
    while it lives: a second proof of life beside the one on its owner
    record (:mod:`cnm.owner`), which an owner record replaced by another
    file cannot take away. (A descriptor on the root does not keep the
    namespaces mounted inside alive once the tmpfs is unmounted: measured,
    the nsfs mounts go with the unmount.)
    """

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"MountDir({self.path!r})"

    @classmethod
    def create(cls, token: str) -> MountDir:
        path = os.path.join(MOUNT_DIRS, token)
        for attempt in (1, 2):
            try:
                os.makedirs(path)
                break
            except FileNotFoundError:  # a closing host removed MOUNT_DIRS just then
                if attempt == 2:
                    raise
            except OSError as exc:
                raise kernel_error(exc, f"namespace directory {path}: create") from exc
        made = cls(path)
        try:
            _check(
                _libc.mount(
                    CNM_TMPFS_SOURCE.encode(), path.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, b"mode=0755,size=1m"
                ),
                f"namespace directory {path}: mount tmpfs",
            )
            _check(_libc.mount(None, path.encode(), None, _MS_SHARED, None), f"namespace directory {path}: make shared")
            _held_dirs[path] = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            fcntl.flock(_held_dirs[path], fcntl.LOCK_EX)
        except BaseException:
            made.delete()
            raise
        return made

    def locked(self, mounts: list[Mount]) -> bool:
        """Whether a live host holds the lock on this directory (see above):
        proof of life that a replaced owner record cannot hide. Only if the
        tmpfs there is cnm's (*mounts*: this process's mountinfo)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            dev = os.fstat(fd).st_dev
            if not any(m.cnm_tmpfs and m.dev == dev for m in mounted_at(mounts, self.path)):
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False
        finally:
            os.close(fd)

    def delete(self) -> None:
        """Unmount the tmpfs with every namespace mounted in it, remove the directory.

        Already gone is success; ``/run/cnm`` itself goes too once empty.
        """
        lock = _held_dirs.pop(self.path, None)  # whichever handle of it made it
        if lock is not None:
            os.close(lock)
        rc = _libc.umount2(self.path.encode(), _MNT_DETACH | _UMOUNT_NOFOLLOW)
        if rc != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
            code = ctypes.get_errno()
            raise kernel_error(OSError(code, os.strerror(code)), f"namespace directory {self.path}: unmount")
        for path in (self.path, MOUNT_DIRS):
            try:
                os.rmdir(path)
            except OSError as exc:
                if path == self.path and exc.errno not in ALREADY_GONE:
                    raise kernel_error(exc, f"namespace directory {path}: remove") from exc
                # MOUNT_DIRS still in use by another host (ENOTEMPTY) stays.


def _write_proc_sys(key: str, value: str) -> None:
    try:
        with open(f"/proc/sys/{key}", "w") as f:
            f.write(value)
    except OSError as exc:
        raise kernel_error(exc, f"sysctl {key.replace('/', '.')}") from exc


def _read_proc_sys(key: str) -> str:
    with open(f"/proc/sys/{key}") as f:
        return f.read().strip()
