"""Small helpers the api modules share: ids, timestamps, collecting failures,
and running code inside a namespace (``run`` / ``popen`` / ``call``)."""

from __future__ import annotations

import datetime as _dt
import secrets
import subprocess
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..netns import Namespace
from ._services import serialized

if TYPE_CHECKING:
    from ._records import Processes
    from ._services import Services

__all__ = ["InNamespace", "collect", "new_id", "now"]

T = TypeVar("T")


def new_id() -> str:
    return secrets.token_hex(32)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def collect(step: Callable[[], object]) -> list[Exception]:
    """Run *step*; return its failure as a list (teardown goes on past it)."""
    try:
        step()
    except Exception as exc:  # noqa: BLE001 - collected and reported together
        return [exc]
    return []


class InNamespace:
    """run / popen / call inside a namespace (Host, Outside and Sandbox have them)."""

    namespace: Namespace
    _services: Services
    _processes: Processes

    def _check_open(self) -> None:
        raise NotImplementedError

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run(argv, **kwargs)`` inside this namespace."""
        self._check_open()
        kwargs = self._processes.marked(kwargs)
        return self.namespace.run(lambda: subprocess.run(argv, **kwargs))

    @serialized
    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen(argv, **kwargs)`` inside this namespace.

        When the owner is deleted, the process gets SIGTERM, then SIGKILL if
        it has not exited within a second (all of the owner's processes share
        that second), and is reaped. Under the host's lock, so a deletion
        cannot miss a process being started. Its environment carries
        ``CNM_OWNER=TOKEN`` (as does that of ``run``'s), by which
        :func:`cnm.gc` knows it as cnm's if this process dies.
        """
        self._check_open()
        kwargs = self._processes.marked(kwargs)
        proc = self.namespace.run(lambda: subprocess.Popen(argv, **kwargs))
        self._processes.add(proc)
        return proc

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in a thread inside this namespace; return its result.

        Sockets created by *fn* belong to this namespace.
        """
        self._check_open()
        return self.namespace.run(lambda: fn(*args, **kwargs))
