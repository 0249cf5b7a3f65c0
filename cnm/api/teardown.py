"""Deleting sandboxes: namespaces first, one batch for many.

Deleting a veth by itself costs ~16 ms (an RCU grace period each, see the
docs' explanation page); deleting the namespace takes the sandbox end, and
so the pair, for a fraction of that, but the kernel does it later, on its
own. So every namespace goes first, and the veths, with the addresses and
host ports they hold, are handed to the host's :class:`~cnm.dying.DyingLinks`:
those are given back once the kernel has removed the veths.

One function serves ``sandbox.delete()``, ``host.delete_sandboxes()``,
``host.close()`` and the rollback of ``host.create_sandboxes()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..kernel import Rtnl
from ..undo import Undo
from . import endpoint as endpoints
from ._common import collect
from ._records import SandboxRecord, stop_all
from ._services import Services

__all__ = ["delete_sandboxes"]


def delete_sandboxes(services: Services, sandboxes: Sequence[SandboxRecord], *, wait: bool) -> list[Exception]:
    """Delete *sandboxes*, namespaces first; return the failures.

    With *wait*, return only once the kernel has removed their veths (one
    wait for all of them); without, as soon as the kernel has been told.
    """
    failures: list[Exception] = []
    # Their processes first, all given one grace period together.
    failures += collect(lambda: stop_all(s.processes for s in sandboxes))
    # The published ports of all of them go in one firewall transaction.
    services.firewall.undo_together(
        step for sandbox in sandboxes for endpoint in sandbox.endpoints for step in endpoint.join.kernel.steps()
    )
    for sandbox in sandboxes:
        if sandbox.deleted and not len(sandbox.undo) and not sandbox.endpoints:
            continue  # already gone
        sandbox.deleted = True
        # Straight into the sandbox's own list: an interruption loses none of them.
        sandbox.dying_links = sandbox.went_with_namespace
        known = len(sandbox.dying_links)
        try:
            for endpoint in reversed(sandbox.endpoints):
                failures += endpoint.join.kernel.unwind()  # port forwards; veths join dying_links
            failures += sandbox.undo.kernel.unwind()  # its socket, then its namespace
        finally:
            sandbox.dying_links = None
        if len(sandbox.undo.kernel):
            # The namespace is still there: its veths will not go by
            # themselves. Deleting the sandbox again deletes them first.
            for index in sandbox.went_with_namespace[known:]:
                sandbox.undo.kernel.push(f"sandbox {sandbox.name!r}: veth {index}", _link_remover(services.rtnl, index))
            continue
        for endpoint in sandbox.endpoints:  # if it joins again, or is deleted by itself
            endpoint.old_links = frozenset(sandbox.went_with_namespace)
        if any(len(e.join.kernel) for e in sandbox.endpoints):
            continue  # a port forward is still there: everything stays held until it goes
        # Names are given back now; addresses and host ports once the veths are gone.
        with services.dying.holding(sandbox.went_with_namespace):
            for endpoint in reversed(sandbox.endpoints[:]):
                failures += endpoint.join.books.unwind()
                if endpoint.owned_by_connection:
                    failures += endpoints.teardown(services, endpoint)
            failures += sandbox.undo.books.unwind()
        sandbox.went_with_namespace = []
    if wait:
        failures += services.dying.wait()
    return failures


def abandon(sandbox: SandboxRecord) -> None:
    """Forget the undo steps: the namespace, and everything in it, is gone."""
    sandbox.undo, sandbox.deleted = Undo(), True
    sandbox.endpoints.clear()


def _link_remover(rtnl: Rtnl, index: int) -> Callable[[], None]:
    """An undo step deleting link *index* (already gone is success)."""
    return lambda: rtnl.delete_link(index, f"veth index {index}")
