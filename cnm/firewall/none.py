"""The ``"none"`` firewall backend: installs nothing.

For hosts whose packet filtering belongs to someone else (an administrator's
own nftables rules, firewalld), and for testing everything else without
touching netfilter. Networks still get their bridges and addresses, but no
outbound NAT, no isolation (between networks, or of internal ones) and no
published ports: whoever owns the firewall must provide those.

Because it changes nothing, it has nothing to undo and pushes no undo steps
(an undo log is a list of inverses of changes; there was no change).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from ..errors import ClosedError
from . import NetworkRules, PortForward

if TYPE_CHECKING:
    from ..netns import Namespace
    from ..undo import UndoLog

__all__ = ["NoFirewall"]


class NoFirewall:
    """A complete :class:`~cnm.firewall.FirewallBackend` that does nothing."""

    name = "none"

    def __init__(self, namespace: Namespace, owner: str) -> None:
        self.namespace = namespace
        self.owner = owner
        self._closed = False

    def __repr__(self) -> str:
        return f"NoFirewall({self.namespace.name!r}, {self.owner!r})"

    def add_network(self, rules: NetworkRules, undo: UndoLog) -> None:
        self._check_open()

    def add_port_forwards(self, rules: NetworkRules, forwards: Sequence[PortForward], undo: UndoLog) -> None:
        self._check_open()
        rules.check_forwards(forwards)

    def add_port_forwards_many(
        self, rules: NetworkRules, groups: Sequence[tuple[Sequence[PortForward], UndoLog]]
    ) -> None:
        self._check_open()
        for forwards, _ in groups:
            rules.check_forwards(forwards)

    def undo_together(self, steps: Iterable[Callable[[], object]]) -> None:
        pass  # its steps do nothing already

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        # Same behaviour as a real backend, so code tested with "none" is not
        # surprised by another one.
        if self._closed:
            raise ClosedError(f"firewall none ({self.owner}): the backend is closed")
