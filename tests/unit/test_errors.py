"""The errno table: each kernel refusal becomes the class that says what it means (no root needed)."""

from __future__ import annotations

import errno
import os

import pytest

import cnm
from cnm.errors import (
    ALREADY_GONE,
    KERNEL_ERRORS,
    InterfaceExistsError,
    KernelBusyError,
    KernelConflictError,
    KernelError,
    KernelExhaustedError,
    KernelNotFoundError,
    KernelPermissionError,
    MissingKernelFeatureError,
    kernel_error,
)

# errno, the class kernel_error picks, the cnm class and the builtin it must also be
TABLE = [
    (errno.EEXIST, KernelConflictError, cnm.ConflictError, ValueError),
    (errno.EADDRINUSE, KernelConflictError, cnm.ConflictError, ValueError),
    (errno.ENOENT, KernelNotFoundError, cnm.NotFoundError, LookupError),
    (errno.ENODEV, KernelNotFoundError, cnm.NotFoundError, LookupError),
    (errno.ESRCH, KernelNotFoundError, cnm.NotFoundError, LookupError),
    (errno.ENXIO, KernelNotFoundError, cnm.NotFoundError, LookupError),
    (errno.EADDRNOTAVAIL, KernelNotFoundError, cnm.NotFoundError, LookupError),
    (errno.EBUSY, KernelBusyError, cnm.StateError, RuntimeError),
    (errno.ENOTEMPTY, KernelBusyError, cnm.StateError, RuntimeError),
    (errno.ENOSPC, KernelExhaustedError, cnm.ExhaustedError, RuntimeError),
    (errno.ENOBUFS, KernelExhaustedError, cnm.ExhaustedError, RuntimeError),
    (errno.ENOMEM, KernelExhaustedError, cnm.ExhaustedError, RuntimeError),
    (errno.EMFILE, KernelExhaustedError, cnm.ExhaustedError, RuntimeError),
    (errno.ENFILE, KernelExhaustedError, cnm.ExhaustedError, RuntimeError),
    (errno.EPERM, KernelPermissionError, KernelPermissionError, PermissionError),
    (errno.EACCES, KernelPermissionError, KernelPermissionError, PermissionError),
    (errno.EOPNOTSUPP, MissingKernelFeatureError, MissingKernelFeatureError, OSError),
    (errno.EAFNOSUPPORT, MissingKernelFeatureError, MissingKernelFeatureError, OSError),
    (errno.EPROTONOSUPPORT, MissingKernelFeatureError, MissingKernelFeatureError, OSError),
    (errno.EPFNOSUPPORT, MissingKernelFeatureError, MissingKernelFeatureError, OSError),
    (errno.ESOCKTNOSUPPORT, MissingKernelFeatureError, MissingKernelFeatureError, OSError),
    (errno.ENOSYS, MissingKernelFeatureError, MissingKernelFeatureError, OSError),
    # Deliberately plain: a kernel EINVAL is a check cnm lacks, not bad input found up front.
    (errno.EINVAL, KernelError, KernelError, OSError),
    (errno.ERANGE, KernelError, KernelError, OSError),
    (errno.EPROTO, KernelError, KernelError, OSError),
    (errno.ETIMEDOUT, KernelError, KernelError, OSError),
    (errno.EIO, KernelError, KernelError, OSError),
]


@pytest.mark.parametrize("code, cls, cnm_class, builtin", TABLE, ids=[errno.errorcode[row[0]] for row in TABLE])
def test_each_errno_maps_to_its_class(code, cls, cnm_class, builtin):  # type: ignore[no-untyped-def]
    original = OSError(code, "netlink said so")
    exc = kernel_error(original, "link 'br0': create")
    assert type(exc) is cls
    assert isinstance(exc, KernelError) and isinstance(exc, cnm.CNMError) and isinstance(exc, OSError)
    assert isinstance(exc, cnm_class) and isinstance(exc, builtin)
    assert exc.errno == code
    assert str(exc).startswith(f"[Errno {code}] link 'br0': create: {os.strerror(code)}")
    assert "(netlink said so)" in str(exc)
    assert exc.__cause__ is original
    if cls is KernelError:
        assert not isinstance(exc, (cnm.InvalidArgumentError, cnm.NotFoundError, cnm.StateError, cnm.ExhaustedError))
    with pytest.raises(cls) as raised:  # and raising it keeps the chain
        raise exc
    assert raised.value.__cause__ is original


def test_the_table_is_the_one_tested_here():
    assert {code: cls for code, cls, _, _ in TABLE if cls is not KernelError} == dict(KERNEL_ERRORS)


@pytest.mark.parametrize("code", sorted(ALREADY_GONE), ids=[errno.errorcode[c] for c in sorted(ALREADY_GONE)])
def test_what_undo_calls_already_gone_is_not_found(code):  # type: ignore[no-untyped-def]
    exc = kernel_error(OSError(code, "gone"), "address 10.0.0.2/24 on eth0: delete")
    assert isinstance(exc, KernelNotFoundError) and exc.errno in ALREADY_GONE


def test_an_errno_cnm_found_itself_and_a_reason_of_its_own():
    exc = kernel_error(errno.ENODEV, "sandbox 'a': configure", reason="interface 'eth0' not found")
    assert type(exc) is KernelNotFoundError and exc.errno == errno.ENODEV
    assert str(exc) == "[Errno 19] sandbox 'a': configure: interface 'eth0' not found"
    assert exc.__cause__ is None
    refused = kernel_error(OSError(errno.EPERM, "Operation not permitted"), "sysctl net.ipv4.ip_forward")
    assert str(refused) == "[Errno 1] sysctl net.ipv4.ip_forward: Operation not permitted"  # no repeated reason


def test_an_oserror_without_errno_is_eio():
    exc = kernel_error(OSError("socket closed"), "firewall cnm-abc: list")
    assert type(exc) is KernelError and exc.errno == errno.EIO and "firewall cnm-abc: list" in str(exc)


def test_interface_exists_is_a_kernel_conflict():
    exc = InterfaceExistsError(errno.EEXIST, "network 'web': bridge name 'br0' is already taken")
    assert isinstance(exc, KernelConflictError) and isinstance(exc, cnm.ConflictError) and isinstance(exc, ValueError)
    assert exc.errno == errno.EEXIST
