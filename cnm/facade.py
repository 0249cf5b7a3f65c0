"""The kernel as cnm's orchestration sees it: one injectable object.

Everything :mod:`cnm.api` asks of the machine goes through a :class:`Kernel`:
making and sweeping namespaces, netlink sockets in them (rtnetlink, and
sock_diag for the ports the host's own sockets hold), trips into a
namespace, the directory sandboxes are mounted in, and the host's owner
record. The namespaces it returns carry the rest (``delete``, ``run``,
``quick``, sysctls), and the sockets are :class:`~cnm.kernel.Rtnl` verbs.

``cnm.Host(kernel=...)`` and ``cnm.Host.isolated(kernel=...)`` take another
implementation: the test suite's in-memory fake (``tests/fakekernel.py``)
runs the orchestration (rollback order, default-route election, the books)
without root and without a kernel, beside the real-kernel tests.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import TypeVar

from .kernel import Rtnl
from .leftovers import watch
from .netns import MOUNT_DIRS, MountDir, Namespace
from .owner import OwnerRecord, pin_path
from .sock_diag import SockDiag

__all__ = ["Kernel"]

T = TypeVar("T")


def _new_namespace_socket(ipv6_off: bool) -> Rtnl:
    """Runs inside a namespace just made: loopback up (and, with *ipv6_off*,
    IPv6 off for the interfaces to come); returns the socket, still open."""
    rtnl = Rtnl(Namespace("new", "/proc/thread-self/ns/net"), here=True)
    try:
        rtnl.loopback_up()
        if ipv6_off:
            with open("/proc/sys/net/ipv6/conf/default/disable_ipv6", "w") as f:
                f.write("1")
    except BaseException:
        rtnl.close()
        raise
    return rtnl


class Kernel:
    """The real kernel (Linux, through netlink and a few syscalls)."""

    def current_namespace(self) -> Namespace:
        """The namespace of this process's main thread (for ``cnm.Host()``)."""
        return Namespace.current()

    def create_namespace(
        self, name: str, *, path: str | None = None, here: bool = False, ipv6_off: bool = False
    ) -> tuple[Namespace, Rtnl]:
        """A new namespace with loopback up, and the socket inside it that did
        that, still open (the caller closes it, or keeps it for a first join).

        With *here*, made in the calling thread, which is left inside it (see
        :meth:`cnm.netns.Namespace.create`). With *ipv6_off*, interfaces made
        in it later start with IPv6 disabled.
        """
        sockets: list[Rtnl] = []
        namespace = Namespace.create(name, setup=lambda: sockets.append(_new_namespace_socket(ipv6_off)), here=here, path=path)
        return namespace, sockets[0]

    def rtnl(self, namespace: Namespace) -> Rtnl:
        """A socket inside *namespace*, opened from here."""
        return Rtnl(namespace)

    def inside(self, namespace: Namespace, fn: Callable[[Rtnl], T]) -> T:
        """``fn(rtnl)`` with a socket made inside *namespace*, on a quick trip into it."""

        def entered() -> T:
            with Rtnl(namespace, here=True) as rtnl:
                return fn(rtnl)

        return namespace.quick(entered)

    def sock_diag(self, namespace: Namespace) -> SockDiag:
        """A sock_diag socket inside *namespace*, opened from here: which ports its sockets hold."""
        return SockDiag(namespace)

    def sweep(self, prefix: str) -> list[Exception]:
        """Delete every namespace in /run/netns named with *prefix*; return the failures."""
        return Namespace.sweep(prefix)

    def mount_dir(self, token: str) -> MountDir:
        """The directory a host's sandboxes are mounted in, made anew."""
        return MountDir.create(token)

    def remove_mount_dir(self, token: str) -> None:
        """Remove a host's mount directory, whatever is left in it (made or not)."""
        MountDir(os.path.join(MOUNT_DIRS, token)).delete()

    def claim_owner(self, token: str, kind: str, netns_path: str, firewall: str) -> OwnerRecord:
        """Record *token* as this process's host (ConflictError if taken; see :mod:`cnm.owner`)."""
        return OwnerRecord.claim(token, kind, netns_path, firewall)

    def pin_namespace(self, token: str, namespace: Namespace) -> Namespace:
        """*namespace* bind-mounted on the pin of *token* (see :func:`cnm.owner.pin_path`)."""
        return Namespace.bind(f"pin of {token}", pin_path(token), namespace.path)

    def machine_id(self) -> str:
        """Stable text naming this machine for cnm: what the machine's own host
        derives its IPv6 prefix from, so that it survives restarts as Docker's
        does. A keyed hash of ``/etc/machine-id`` (else of this boot's id), as
        systemd asks of applications, since every sandbox sees the prefix."""
        for path in ("/etc/machine-id", "/proc/sys/kernel/random/boot_id"):
            try:
                with open(path) as f:
                    text = f.read().strip()
            except OSError:
                continue
            if text:
                return hmac.new(text.encode(), b"cnm: the IPv6 prefix of the machine's host", "sha256").hexdigest()
        return "cnm"

    def watch(self, host: object, record: OwnerRecord, what: str) -> None:
        """Remove what *host* holds if it is never closed (see :func:`cnm.leftovers.watch`)."""
        watch(host, record, what)
