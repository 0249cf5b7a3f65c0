"""The exceptions cnm raises.

Every error cnm raises is a :class:`CNMError`. Each subclass also subclasses
the builtin exception it refines, so code that knows nothing of cnm can still
catch it sensibly (``except ValueError`` catches a bad subnet)::

    CNMError (Exception)
    ├── InvalidArgumentError (ValueError)   bad input, found before any kernel change
    │   └── ConflictError                   name in use, address taken, overlapping
    │                                       subnet, host port already published or
    │                                       held by a socket of the host
    ├── NotFoundError (LookupError)         no such network, sandbox, endpoint, driver
    ├── ExhaustedError (RuntimeError)       no free subnet, address or host port left
    ├── StateError (RuntimeError)           operation not valid now: network still has
    │   └── ClosedError                     endpoints, endpoint already joined; object
    │                                       used after it was deleted or closed
    ├── KernelError (OSError)               the kernel refused a change; has ``errno``
    │   ├── KernelConflictError             EEXIST, EADDRINUSE: what was to be made
    │   │   │                               exists (also a ConflictError)
    │   │   └── InterfaceExistsError        an interface name is taken
    │   ├── KernelNotFoundError             ENOENT, ENODEV, ESRCH, ENXIO, EADDRNOTAVAIL
    │   │                                   (also a NotFoundError)
    │   ├── KernelBusyError                 EBUSY, ENOTEMPTY: still in use (also a
    │   │                                   StateError)
    │   ├── KernelExhaustedError            ENOSPC, ENOBUFS, ENOMEM, EMFILE, ENFILE
    │   │                                   (also an ExhaustedError)
    │   ├── KernelPermissionError           EPERM, EACCES (also a PermissionError)
    │   └── MissingKernelFeatureError       EOPNOTSUPP, EAFNOSUPPORT, EPROTONOSUPPORT,
    │                                       ENOSYS, ...: the kernel lacks a module
    └── TeardownError (ExceptionGroup)      one or more undo steps failed; every
                                            failure is in ``exceptions``

Messages name the object and the reason, for example
``network 'web': subnet 10.0.0.0/33 is not a valid prefix``.

Errors coming from pyroute2 or the socket layer are mapped to these in one
place, :func:`kernel_error`, by one table, :data:`KERNEL_ERRORS`, and
chained with ``raise ... from``. Whatever class it picks is a
:class:`KernelError` with the kernel's ``errno``, so ``except KernelError``
and checks of ``exc.errno`` (the undo log's :data:`ALREADY_GONE`) see every
kernel refusal; the second base says what the refusal means to the caller.

What the table leaves out, on purpose: ``EINVAL`` and ``ERANGE`` stay plain
:class:`KernelError`, not :class:`InvalidArgumentError`. cnm checks its
input before any change, so the kernel calling a request invalid means a
check cnm lacks or a message cnm built wrong: a bug to fix, which must not
pass for the up-front refusal that :class:`InvalidArgumentError` promises
(a test that bad input is refused before any change would otherwise pass
when the kernel refuses it instead). ``ETIMEDOUT``, ``EPROTO`` and ``EIO``
(no answer, or one cnm did not expect) stay plain too.
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Mapping, Sequence
from types import MappingProxyType

__all__ = [
    "ALREADY_GONE",
    "CNMError",
    "ClosedError",
    "ConflictError",
    "ExhaustedError",
    "InterfaceExistsError",
    "InvalidArgumentError",
    "KERNEL_ERRORS",
    "KernelBusyError",
    "KernelConflictError",
    "KernelError",
    "KernelExhaustedError",
    "KernelNotFoundError",
    "KernelPermissionError",
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
    """The kernel refused a change. ``errno`` holds the kernel's error number.

    Made by :func:`kernel_error`, which picks the subclass for the errno.
    """


class KernelConflictError(KernelError, ConflictError):
    """What the kernel was asked to make exists already (``EEXIST``, ``EADDRINUSE``).

    A :class:`ConflictError` too: cnm looks for conflicts before any change,
    and when another process makes the same thing in between, the kernel's
    refusal is the same conflict, found later.
    """


class InterfaceExistsError(KernelConflictError):
    """An interface cnm would create has a name some link already has (``errno`` is EEXIST).

    Usually found by a look-up before any change; when another process
    creates the link in between, it is the kernel's EEXIST, mapped to this.
    Both a :class:`KernelError` and a :class:`ConflictError`: whichever way it
    was found, callers catch it as the conflict it is.
    """


class KernelNotFoundError(KernelError, NotFoundError):
    """What the kernel was asked about is not there (``ENOENT``, ``ENODEV``, ``ESRCH``, ...).

    Every errno of :data:`ALREADY_GONE` maps here, so an undo step that
    checks ``exc.errno in ALREADY_GONE`` and one that catches this class agree.
    """


class KernelBusyError(KernelError, StateError):
    """What the kernel was asked to remove or change is still in use (``EBUSY``, ``ENOTEMPTY``).

    A :class:`StateError`: the request is right, the object's state is not
    (yet); the same request may succeed once the user is gone.
    """


class KernelExhaustedError(KernelError, ExhaustedError):
    """The kernel ran out of something: memory, buffer space, table room, file descriptors."""


class KernelPermissionError(KernelError, PermissionError):
    """The process may not make the change (``EPERM``, ``EACCES``): not root, or not cnm's to change."""


class MissingKernelFeatureError(KernelError):
    """The running kernel lacks a module or feature that the operation needs."""


class TeardownError(CNMError, ExceptionGroup):
    """Teardown went on past failures; each one is in :attr:`exceptions`."""

    def __new__(cls, message: str, exceptions: Sequence[Exception]) -> TeardownError:
        return super().__new__(cls, message, exceptions)

    def derive(self, excs: Sequence[Exception]) -> TeardownError:  # type: ignore[override]  # keeps the type on split()
        return TeardownError(self.message, excs)


#: errno -> the class :func:`kernel_error` raises for it; any other errno
#: gives a plain :class:`KernelError`.
KERNEL_ERRORS: Mapping[int, type[KernelError]] = MappingProxyType(
    {
        **dict.fromkeys((_errno.EEXIST, _errno.EADDRINUSE), KernelConflictError),
        **dict.fromkeys(
            (_errno.ENOENT, _errno.ENODEV, _errno.ESRCH, _errno.ENXIO, _errno.EADDRNOTAVAIL), KernelNotFoundError
        ),
        **dict.fromkeys((_errno.EBUSY, _errno.ENOTEMPTY), KernelBusyError),
        **dict.fromkeys(
            (_errno.ENOSPC, _errno.ENOBUFS, _errno.ENOMEM, _errno.EMFILE, _errno.ENFILE), KernelExhaustedError
        ),
        **dict.fromkeys((_errno.EPERM, _errno.EACCES), KernelPermissionError),
        # EOPNOTSUPP is what rtnetlink answers for a link kind whose module
        # is missing; the others are a missing address or protocol family.
        **dict.fromkeys(
            (
                _errno.EOPNOTSUPP,
                _errno.EAFNOSUPPORT,
                _errno.EPROTONOSUPPORT,
                _errno.EPFNOSUPPORT,
                _errno.ESOCKTNOSUPPORT,
                _errno.ENOSYS,
            ),
            MissingKernelFeatureError,
        ),
    }
)


def kernel_error(exc: OSError | int, what: str, *, reason: str | None = None) -> KernelError:
    """The :class:`KernelError` for a refusal of *what*, of the class :data:`KERNEL_ERRORS` gives.

    *exc* is the :class:`OSError` the netlink or socket layer raised (the
    result is chained to it), or an errno cnm found itself (in a kernel
    answer, or by a look-up). The message names *what* and says *reason*,
    by default the errno's own text (and the layer's, if it says more).
    """
    if isinstance(exc, OSError):
        code = exc.errno or _errno.EIO
        said = exc.strerror
    else:
        code, said = exc, None
    default = os.strerror(code)
    if reason is None:
        reason = default + (f" ({said})" if said and said != default else "")
    error = KERNEL_ERRORS.get(code, KernelError)(code, f"{what}: {reason}")
    if isinstance(exc, OSError):
        error.__cause__ = exc  # chained even where the caller forgets "from"
    return error
