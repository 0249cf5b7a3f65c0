"""The exceptions cnm raises.

Every error cnm raises is a :class:`CNMError`. Each subclass also subclasses
the builtin exception it refines, so code that knows nothing of cnm can still
catch it sensibly (``except ValueError`` catches a bad subnet)::

    CNMError (Exception)
    ├── InvalidArgumentError (ValueError)   bad input, found before any kernel change
    │   └── ConflictError                   name in use, address taken, overlapping
    │                                       subnet, host port already published
    ├── NotFoundError (LookupError)         no such network, sandbox, endpoint, driver
    ├── ExhaustedError (RuntimeError)       no free subnet, address or host port left
    ├── StateError (RuntimeError)           operation not valid now: network still has
    │   └── ClosedError                     endpoints, endpoint already joined; object
    │                                       used after it was deleted or closed
    ├── KernelError (OSError)               the kernel refused a change; has ``errno``
    │   ├── MissingKernelFeatureError       the kernel lacks a module (ipvlan, ...)
    │   └── InterfaceExistsError            an interface name is taken (also a
    │                                       ConflictError, so also a ValueError)
    └── TeardownError (ExceptionGroup)      one or more undo steps failed; every
                                            failure is in ``exceptions``

Messages name the object and the reason, for example
``network 'web': subnet 10.0.0.0/33 is not a valid prefix``.

Errors coming from pyroute2 or the socket layer are mapped to these in one
place, :func:`kernel_error`, and chained with ``raise ... from``.
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Sequence

__all__ = [
    "ALREADY_GONE",
    "CNMError",
    "ClosedError",
    "ConflictError",
    "ExhaustedError",
    "InterfaceExistsError",
    "InvalidArgumentError",
    "KernelError",
    "MissingKernelFeatureError",
    "NotFoundError",
    "StateError",
    "TeardownError",
    "kernel_error",
]

#: errno values that mean "the thing to remove is already gone": undo steps
#: treat them as success (deleting what is not there is not a failure).
ALREADY_GONE = frozenset({_errno.ENOENT, _errno.ENODEV, _errno.ESRCH, _errno.EADDRNOTAVAIL})


class CNMError(Exception):
    """Base of every exception cnm raises."""


class InvalidArgumentError(CNMError, ValueError):
    """An argument is malformed or impossible; raised before any kernel change."""


class ConflictError(InvalidArgumentError):
    """An argument collides with something that exists: a name, an address, a subnet, a port."""


class NotFoundError(CNMError, LookupError):
    """A named object (network, sandbox, endpoint, driver, ...) does not exist."""


class ExhaustedError(CNMError, RuntimeError):
    """A pool ran dry: no free subnet, address or host port is left."""


class StateError(CNMError, RuntimeError):
    """The operation is not valid in the object's current state."""


class ClosedError(StateError):
    """The object was deleted or closed and cannot be used any more."""


class KernelError(CNMError, OSError):
    """The kernel refused a change. ``errno`` holds the kernel's error number."""


class MissingKernelFeatureError(KernelError):
    """The running kernel lacks a module or feature that the operation needs."""


class InterfaceExistsError(KernelError, ConflictError):
    """An interface cnm would create has a name some link already has (``errno`` is EEXIST).

    Usually found by a look-up before any change; when another process
    creates the link in between, it is the kernel's EEXIST, mapped to this.
    Both a :class:`KernelError` and a :class:`ConflictError`: whichever way it
    was found, callers catch it as the conflict it is.
    """


class TeardownError(CNMError, ExceptionGroup):
    """Teardown went on past failures; each one is in :attr:`exceptions`."""

    def __new__(cls, message: str, exceptions: Sequence[Exception]) -> TeardownError:
        return super().__new__(cls, message, exceptions)

    def derive(self, excs: Sequence[Exception]) -> TeardownError:  # type: ignore[override]  # keeps the type on split()
        return TeardownError(self.message, excs)


def kernel_error(exc: OSError, what: str) -> KernelError:
    """Map an OSError from the netlink layer to a :class:`KernelError` naming *what* failed."""
    code = exc.errno or _errno.EIO
    reason = os.strerror(code)
    detail = exc.strerror if exc.strerror and exc.strerror != reason else None
    message = f"{what}: {reason}" + (f" ({detail})" if detail else "")
    return KernelError(code, message)
