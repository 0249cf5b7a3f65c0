from __future__ import annotations

import errno

import pytest

import cnm
from cnm.errors import kernel_error
from cnm.undo import Undo, UndoLog, raise_collected, transaction


def test_unwind_runs_newest_first_and_goes_on_past_failures():
    ran = []
    log = UndoLog()
    log.push("one", lambda: ran.append(1))
    log.push("two", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    log.push("three", lambda: ran.append(3))
    failures = log.unwind()
    assert ran == [3, 1]
    assert [type(f) for f in failures] == [RuntimeError]
    assert "while undoing: two" in failures[0].__notes__
    assert len(log) == 1  # the failed step stays, to be retried
    (again,) = log.unwind()
    assert isinstance(again, RuntimeError) and ran == [3, 1]  # only the failed step ran again


@pytest.mark.parametrize("code", [errno.ENOENT, errno.ENODEV, errno.ESRCH])
def test_already_gone_counts_as_success(code):
    log = UndoLog()

    def gone():
        raise OSError(code, "gone")

    log.push("gone", gone)
    assert log.unwind() == []


def test_other_oserrors_are_failures():
    log = UndoLog()

    def refused():
        raise OSError(errno.EPERM, "no")

    log.push("refused", refused)
    (failure,) = log.unwind()
    assert failure.errno == errno.EPERM


def test_a_failed_step_is_retried_until_it_succeeds():
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise OSError(errno.EBUSY, "busy")

    log = UndoLog()
    log.push("flaky", flaky)
    assert len(log.unwind()) == 1 and len(log.unwind()) == 1
    assert log.unwind() == [] and len(log) == 0 and len(attempts) == 3


def test_an_interrupted_unwind_keeps_the_step_it_hit():
    log = UndoLog()
    log.push("older", lambda: None)
    log.push("interrupted", lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        log.unwind()
    assert len(log) == 2


def test_books_are_released_only_when_the_kernel_side_is_clean():
    released = []
    kernel_ok = [False]

    def kernel_step():
        if not kernel_ok[0]:
            raise OSError(errno.EBUSY, "busy")

    undo = Undo()
    undo.books.push("address", lambda: released.append("address"))
    undo.kernel.push("link", kernel_step)
    assert len(undo.unwind()) == 1 and released == []
    kernel_ok[0] = True
    assert undo.unwind() == [] and released == ["address"] and len(undo) == 0


def test_transaction_rolls_back_and_reraises_the_original():
    ran = []
    with pytest.raises(KeyError) as info:
        with transaction() as undo:
            undo.books.push("a", lambda: ran.append("a"))
            undo.kernel.push("b", lambda: ran.append("b"))
            undo.kernel.push("c", lambda: (_ for _ in ()).throw(ValueError("rollback broke")))
            raise KeyError("original")
    assert ran == ["b"]  # kernel steps all ran; the books stay, as the kernel side is not clean
    assert any("rollback also failed" in note for note in info.value.__notes__)


def test_transaction_keeps_the_log_on_success():
    with transaction() as undo:
        undo.kernel.push("a", lambda: None)
    assert len(undo) == 1


def test_raise_collected_groups_every_failure():
    errors = [RuntimeError("x"), OSError(errno.EPERM, "y")]
    with pytest.raises(cnm.TeardownError) as info:
        raise_collected("host 'h'", errors)
    assert list(info.value.exceptions) == errors
    assert isinstance(info.value, cnm.CNMError) and isinstance(info.value, ExceptionGroup)
    assert "host 'h'" in str(info.value)
    raise_collected("nothing", [])  # no failures: no exception


@pytest.mark.parametrize(
    "error, builtin",
    [
        (cnm.InvalidArgumentError, ValueError),
        (cnm.ConflictError, ValueError),
        (cnm.NotFoundError, LookupError),
        (cnm.ExhaustedError, RuntimeError),
        (cnm.StateError, RuntimeError),
        (cnm.ClosedError, RuntimeError),
        (cnm.KernelError, OSError),
        (cnm.MissingKernelFeatureError, OSError),
    ],
)
def test_every_error_is_a_cnm_error_and_its_builtin(error, builtin):
    assert issubclass(error, cnm.CNMError) and issubclass(error, builtin)


def test_kernel_error_keeps_errno_and_names_the_object():
    exc = kernel_error(OSError(errno.EEXIST, "File exists"), "link 'br0'")
    assert isinstance(exc, cnm.KernelError) and exc.errno == errno.EEXIST
    assert "link 'br0'" in str(exc)


def test_public_surface_is_sorted_and_complete():
    assert cnm.__all__ == sorted(cnm.__all__)
    for name in cnm.__all__:
        assert hasattr(cnm, name), name
    public = {n for n in dir(cnm) if not n.startswith("_") and not isinstance(getattr(cnm, n), type(cnm))}
    assert public == set(cnm.__all__) - {"__version__"}
