"""``NftablesFirewall``: what is installed, counted per family, and how each call is undone.

Each call is one batch (:mod:`.batch`) built from the policy
(:mod:`.ruleset`): the first call that needs a family's table creates it in
the same batch as its own rules, and the undo of the last call that used it
deletes it. A call that touches several tables (every network is in the
``ip`` and ``bridge`` ones, a dual-stack one in ``ip6`` too; a group of
forwards of both address families) is still one batch, and counts as a user
of each table.

Rules are removed by handle. Each network rule is sent with ``NLM_F_ECHO``;
the kernel echoes it back with the handle it assigned, and the undo step
deletes exactly those handles (handles are never reused within a table).
Set and map elements are removed by key. Elements are created with
``NLM_F_EXCL``, so publishing a key that is already in a map fails with
``EEXIST``, and so does a second network on a bridge already in ``bridges``.

"Already gone" on removal: a delete batch naming one missing rule, element
or table fails as a whole with ``ENOENT``; the backend then lists what is
still there and deletes only that (one more batch), so someone else's
partial cleanup does not stop the undo. (Linux 6.3's ``DESTROY`` messages
would do this in the kernel; using ``DEL`` keeps older kernels working.)

A lost answer (:class:`~.batch.UnknownOutcome`) is the one case where the
kernel cannot tell us what happened. The backend then removes whatever the
batch may have installed before raising: each table the batch created;
in the others, the rules carrying the network's comment, or the set and map
keys of the call, that belong to no call still outstanding (the backend
remembers the handles and keys of those). So even then the call changes
nothing.
"""

from __future__ import annotations

import errno
import re
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from ...errors import ALREADY_GONE, ClosedError, InvalidArgumentError, KernelError, kernel_error
from ...netlink import Netlink
from .. import NetworkRules, PortForward
from ._pyroute2 import marshal
from .batch import Batch, UnknownOutcome, commit, elements_listed, rules_listed, table_exists
from .expressions import BRIDGE, IPV4, IPV6, Family, comment_udata
from .ruleset import Element, RuleSpec, add_skeleton, element_label, forward_element, network_members, network_rules

if TYPE_CHECKING:
    from ...netns import Namespace
    from ...undo import UndoLog

__all__ = ["NETLINK_NETFILTER", "NftablesFirewall"]

NETLINK_NETFILTER = 12
_FAMILIES: tuple[Family, ...] = (IPV4, IPV6, BRIDGE)
_OWNER = re.compile(r"[A-Za-z0-9_-]{1,64}")

#: What one call asks for in each family's table: rules and elements.
_Plan = dict[Family, tuple[list[RuleSpec], list[Element]]]


class _Holding:
    """What one call installed in one family's table."""

    __slots__ = ("rules", "elements")

    def __init__(self, rules: list[tuple[str, int, str]], elements: list[Element]) -> None:
        self.rules = rules  # chain, handle, label
        self.elements = elements


class NftablesFirewall:
    """A :class:`~cnm.firewall.FirewallBackend` keeping its rules in tables
    ``ip cnm-<owner>`` and (while any IPv6 network or forward needs it)
    ``ip6 cnm-<owner>``.

    Opens one nfnetlink socket inside *namespace* for its whole life; every
    call is one batch on it. Thread-safe: calls are serialised.
    """

    name = "nftables"

    def __init__(self, namespace: Namespace, owner: str) -> None:
        if not _OWNER.fullmatch(owner):
            raise InvalidArgumentError(f"firewall: owner token {owner!r} must be 1-64 letters, digits, '_' or '-'")
        self.namespace = namespace
        self.table = f"cnm-{owner}"
        try:
            sock = namespace.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as exc:
            raise kernel_error(exc, f"firewall {self.table}: open nfnetlink socket in namespace {namespace.name!r}") from exc
        try:
            self._nl: Netlink | None = Netlink(sock, marshal())
        except BaseException:
            sock.close()
            raise
        self._lock = threading.Lock()
        # Calls whose undo has not run yet, per family; a family's table
        # exists exactly while its count is > 0.
        self._users = dict.fromkeys(_FAMILIES, 0)
        # What the calls not yet undone installed: (family version, rule
        # handle) and (family version, set, key). Lets the cleanup after a
        # lost answer tell this call's objects from theirs.
        self._live_rules: set[tuple[int, int]] = set()
        self._live_elements: set[tuple[int, str, bytes]] = set()

    def __repr__(self) -> str:
        return f"NftablesFirewall({self.namespace.name!r}, table={self.table!r})"

    # ---- the contract ----------------------------------------------------------

    def add_network(self, rules: NetworkRules, undo: UndoLog) -> None:
        what = f"firewall {self.table}: network {rules.name!r}"
        # Every network is in the ip table (a bridge without an IPv4 subnet
        # in ``unaddressed``) and holds the bridge table; the ip6 table only
        # for an IPv6 subnet. See the ruleset's documentation.
        plan: _Plan = {IPV4: (network_rules(rules, IPV4), network_members(rules, IPV4))}
        if rules.subnet_for(6) is not None:
            plan[IPV6] = (network_rules(rules, IPV6), network_members(rules, IPV6))
        plan[BRIDGE] = ([], [])
        (holding,) = self._install(what, [plan], rules.name)
        undo.push(f"{what}: remove firewall rules", _Remover(self, what, holding))
        if rules.subnet_for(4) is not None:
            self._route_localnet(rules.bridge, what, undo)

    def _route_localnet(self, bridge: str, what: str, undo: UndoLog) -> None:
        """Let the bridge route loopback sources (the host's own connections to
        a port published on 127.0.0.1, DNATed into the bridge), now that the
        ``loopback`` chain drops loopback destinations from it.

        This backend sets it, not the driver, so that a host without these
        rules (the "none" backend) never has it on. It is turned off again
        before the rules go, so a bridge that outlives them has it off. A
        bridge that is not there yet (rules may come first) is left alone.
        """
        key = f"net/ipv4/conf/{bridge}/route_localnet"

        def write(value: str) -> bool:
            try:
                self.namespace.write_sysctl(key, value)
            except KernelError as exc:
                if exc.errno not in ALREADY_GONE:
                    raise
                return False
            return True

        if write("1"):
            undo.push(f"{what}: route_localnet off", lambda: write("0"))

    def add_port_forwards(self, rules: NetworkRules, forwards: Sequence[PortForward], undo: UndoLog) -> None:
        self.add_port_forwards_many(rules, [(forwards, undo)])

    def add_port_forwards_many(
        self, rules: NetworkRules, groups: Sequence[tuple[Sequence[PortForward], UndoLog]]
    ) -> None:
        for forwards, _ in groups:
            rules.check_forwards(forwards)
        groups = [(forwards, undo) for forwards, undo in groups if forwards]
        if not groups:
            return
        what = f"firewall {self.table}: network {rules.name!r}"
        plans: list[_Plan] = []
        for forwards, _ in groups:
            plan: _Plan = {}
            for forward in forwards:
                family, element = forward_element(forward)
                plan.setdefault(family, ([], []))[1].append(element)
            plans.append(plan)
        holdings = self._install(what, plans, None)
        for holding, (_, undo) in zip(holdings, groups):
            undo.push(f"{what}: withdraw published ports", _Remover(self, what, holding))

    def undo_together(self, steps: Iterable[Callable[[], object]]) -> None:
        """Do what several of this backend's undo steps would do, in one transaction.

        For bulk deletion (:meth:`cnm.Host.delete_sandboxes`). Steps that are
        not this backend's, or already done, are ignored. On success the steps
        are done (running them does nothing); if the kernel refuses, nothing
        changed and nothing is raised: the steps, when run, then commit one by
        one and report their own failures.
        """
        ours = [s for s in steps if isinstance(s, _Remover) and s.backend is self and not s.done]
        if len(ours) < 2:
            return
        with self._lock:
            if self._nl is None:
                return
            try:
                self._commit(self._removal(ours), f"firewall {self.table}: {len(ours)} removals", gone_ok=True)
            except KernelError:
                return
            self._forget(ours)

    @classmethod
    def sweep(cls, namespace: Namespace, owner: str) -> list[str]:
        """Delete tables ``ip``, ``ip6`` and ``bridge cnm-OWNER`` in *namespace*, left by a host that is gone.

        For :func:`cnm.gc`: the backend's whole state is those tables, so one
        transaction removes it. Returns what was removed (nothing if no such
        table is there).
        """
        backend = cls(namespace, owner)
        try:
            there = [f for f in _FAMILIES if backend._table_there(f)]
            if not there:
                return []
            batch = Batch(backend.table)
            for family in there:
                batch.table_delete(family)
            backend._commit(batch, f"firewall {backend.table}: remove what a dead host left", gone_ok=True)
            return [f"nftables table {f.keyword} {backend.table}" for f in there]
        finally:
            backend.close()

    def close(self) -> None:
        with self._lock:
            nl, self._nl = self._nl, None
        if nl is not None:
            nl.close()

    # ---- internals ---------------------------------------------------------------

    def _link(self) -> Netlink:
        if self._nl is None:
            raise ClosedError(f"firewall {self.table}: the backend is closed")
        return self._nl

    def _commit(self, batch: Batch, what: str, gone_ok: bool = False) -> dict[int, int]:
        """:func:`.batch.commit` on this backend's socket (one place to watch in tests)."""
        return commit(self._link(), batch, what, gone_ok)

    def _install(self, what: str, plans: Sequence[_Plan], comment: str | None) -> list[dict[Family, _Holding]]:
        """Install *plans* (one per call or group) in one batch; return what each installed.

        Rules are labelled with *comment* (a network's name), so that the
        cleanup after a lost answer can find them.
        """
        with self._lock:
            self._link()
            batch = Batch(self.table)
            for family in _FAMILIES:
                if self._users[family] == 0 and any(family in plan for plan in plans):
                    add_skeleton(batch, family)
            holdings: list[dict[Family, _Holding]] = []
            echoed: list[tuple[_Holding, str, int, str]] = []  # holding, chain, seq, label
            for plan in plans:
                holding = {}
                for family, (specs, elements) in plan.items():
                    held = holding[family] = _Holding([], elements)
                    for chain, exprs, label in specs:
                        seq = batch.rule_add(family, chain, exprs, label, comment=comment, echo=True)
                        echoed.append((held, chain, seq, label))
                    for element in elements:
                        set_name, key, data, _ = element
                        batch.element(True, family, set_name, key, data, element_label(True, family, element))
                holdings.append(holding)
            handles = self._apply(batch, what, lambda cleanup: self._strays(cleanup, batch, plans, comment))
            for held, chain, seq, label in echoed:
                held.rules.append((chain, handles[seq], label))
            for holding in holdings:
                for family in holding:
                    self._users[family] += 1
            self._live(holdings, True)
            return holdings

    def _apply(self, batch: Batch, what: str, strays: Callable[[Batch], object]) -> dict[int, int]:
        """Commit an adding *batch*; if its answer is lost, remove whatever it may have installed.

        *strays(cleanup)* adds to *cleanup* the deletion of what *batch* may
        have installed.
        """
        try:
            return self._commit(batch, what)
        except UnknownOutcome as exc:
            try:
                cleanup = Batch(self.table)
                strays(cleanup)
                if len(cleanup):
                    self._commit(cleanup, f"{what}: clean up", gone_ok=True)
            except Exception as failure:
                exc.add_note(f"removing what it may have installed also failed: {failure!r}")
            else:
                exc.add_note("whatever it may have installed has been removed again")
            raise

    def _strays(self, cleanup: Batch, batch: Batch, plans: Sequence[_Plan], comment: str | None) -> None:
        """The tables *batch* created, and in the others what *plans* added that no live call holds."""
        for family in _FAMILIES:
            if not any(family in plan for plan in plans):
                continue
            elements = [e for plan in plans if family in plan for e in plan[family][1]]
            if family in batch.creates:
                cleanup.table_delete(family)
                continue
            if comment is not None:
                udata = comment_udata(comment)
                for chain, handle, their in self._rules_listed(family):
                    if their == udata and (family.version, handle) not in self._live_rules:
                        cleanup.rule_delete(family, chain, handle, "stray")
            if elements:
                listed = self._elements_listed(family, {e[0] for e in elements})
                for element in elements:
                    set_name, key, data, _ = element
                    if (set_name, key) in listed and (family.version, set_name, key) not in self._live_elements:
                        cleanup.element(False, family, set_name, key, data, element_label(False, family, element))

    def _removal(self, steps: Sequence[_Remover], listed: bool = False) -> Batch:
        """One batch undoing *steps*: a family's table goes when they are its last users.

        With *listed*, only what is still installed is deleted (after a batch
        naming something already gone was refused).
        """
        batch = Batch(self.table)
        by_family: dict[Family, list[_Holding]] = {}
        for step in steps:
            for family, holding in step.holdings.items():
                by_family.setdefault(family, []).append(holding)
        for family, using in by_family.items():
            if self._users[family] == len(using):
                if not listed or self._table_there(family):
                    batch.table_delete(family)
                continue
            if listed:
                rules_there = {handle for _, handle, _ in self._rules_listed(family)}
                elements_there = self._elements_listed(family, {e[0] for h in using for e in h.elements})
            for holding in using:
                for chain, handle, label in holding.rules:
                    if not listed or handle in rules_there:
                        batch.rule_delete(family, chain, handle, label)
                for element in holding.elements:
                    set_name, key, data, _ = element
                    if not listed or (set_name, key) in elements_there:
                        batch.element(False, family, set_name, key, data, element_label(False, family, element))
        return batch

    def _forget(self, steps: Sequence[_Remover]) -> None:
        """Count *steps* as done."""
        for step in steps:
            for family in step.holdings:
                self._users[family] -= 1
            step.done = True
        self._live([step.holdings for step in steps], False)

    def _live(self, holdings: Iterable[dict[Family, _Holding]], adding: bool) -> None:
        """Add *holdings* to the live rules and elements, or take them out."""
        change = self._live_elements.add if adding else self._live_elements.discard
        for holding in holdings:
            for family, held in holding.items():
                version = family.version
                if held.rules:
                    handles = [(version, handle) for _, handle, _ in held.rules]
                    if adding:
                        self._live_rules.update(handles)
                    else:
                        self._live_rules.difference_update(handles)
                for element in held.elements:
                    change((version, element[0], element[1]))

    def withdraw(self, step: _Remover) -> None:
        """Run one of the undo steps this backend handed out (what ``step()`` does)."""
        with self._lock:
            if step.done:
                return
            self._link()
            try:
                self._commit(self._removal([step]), step.what, gone_ok=True)
            except KernelError as exc:
                if exc.errno != errno.ENOENT or isinstance(exc, UnknownOutcome):
                    raise
                # One missing object aborts the whole batch: delete only what is left.
                batch = self._removal([step], listed=True)
                if len(batch):
                    self._commit(batch, step.what, gone_ok=True)
            self._forget([step])

    def _table_there(self, family: Family) -> bool:
        return table_exists(self._link(), self.table, family)

    def _rules_listed(self, family: Family) -> list[tuple[str, int, bytes | None]]:
        return rules_listed(self._link(), self.table, family)

    def _elements_listed(self, family: Family, names: Iterable[str]) -> set[tuple[str, bytes]]:
        return elements_listed(self._link(), self.table, family, names)


class _Remover:
    """The undo step of one :class:`NftablesFirewall` call: one batch deleting what the call added.

    The undo of the last outstanding call using a family's table deletes the
    whole table instead. Running the step again does nothing. A class, so
    that :meth:`NftablesFirewall.undo_together` can recognise and batch it.
    """

    __slots__ = ("backend", "what", "holdings", "done")

    def __init__(self, backend: NftablesFirewall, what: str, holdings: dict[Family, _Holding]) -> None:
        self.backend, self.what, self.holdings = backend, what, holdings
        self.done = False

    def __call__(self) -> None:
        self.backend.withdraw(self)
