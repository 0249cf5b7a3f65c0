"""Tools for testing against cnm: fault injection, kernel-state snapshots, and a driver conformance check.

:func:`check_driver` is what a plug-in author runs against their network
driver (in a test suite, as root): in an isolated host it creates a
network, joins sandboxes, checks what the sandbox ends got, makes them
leave, deletes everything and checks that nothing is left; then it makes
every kernel change of ``create_network`` and of a join fail in turn, and
checks that each failure leaves the host as it was. It raises
:class:`DriverCheckError` (an ``AssertionError``) listing what went wrong.

:class:`FaultInjector` makes the k-th kernel change fail. Kernel changes
are every netlink request that expects an answer (rtnetlink and nftables
alike), creating a namespace and writing a sysctl. A failure is injected
before the step (it never happens) or, with *after*, once it has happened
(standing for an answer lost after the kernel acted: its effect must be
undone too). It patches cnm's classes for the whole process while it is
active: use it where nothing else in the process talks to the kernel.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .errors import CNMError
from .kernel import Rtnl
from .netlink import Netlink
from .netns import Namespace

__all__ = ["DriverCheckError", "FaultInjector", "Injected", "check_driver", "kernel_state"]


class Injected(OSError):
    """The failure a :class:`FaultInjector` raises."""


class DriverCheckError(AssertionError):
    """What :func:`check_driver` found wrong, one line per finding."""


class FaultInjector:
    """While active (``with``), fails the *fail_at*-th kernel change (1-based) once and counts them all."""

    _STEPS = ((Netlink, "transact", True), (Netlink, "fenced", True), (Namespace, "create", False), (Namespace, "write_sysctl", False))

    def __init__(self, fail_at: int | None, *, after: bool = False) -> None:
        self.count = 0
        self.fail_at = fail_at
        self.after = after
        self.fired = False
        self._lock = threading.Lock()  # the bulk path changes the kernel from two threads
        self._saved: list[tuple[type, str, Any]] = []

    def __enter__(self) -> FaultInjector:
        for cls, name, netlink in self._STEPS:
            raw = cls.__dict__[name]
            self._saved.append((cls, name, raw))
            setattr(cls, name, self._wrap(getattr(cls, name), isinstance(raw, classmethod), netlink))
        return self

    def __exit__(self, *exc: object) -> None:
        for cls, name, raw in reversed(self._saved):
            setattr(cls, name, raw)
        self._saved.clear()

    def _wrap(self, original: Callable[..., Any], is_classmethod: bool, netlink: bool) -> Any:
        injector = self

        def step(*args: Any, **kwargs: Any) -> Any:
            with injector._lock:
                injector.count += 1
                fire = not injector.fired and injector.count == injector.fail_at
                if fire:
                    injector.fired = True
            if fire and not (injector.after and netlink):
                raise Injected(errno.EPERM, "injected failure before the step")
            result = original(*args[1:], **kwargs) if is_classmethod else original(*args, **kwargs)
            if fire:
                raise Injected(errno.EIO, "injected failure after the step")
            return result

        return classmethod(step) if is_classmethod else step


def kernel_state(namespace: Namespace) -> dict[str, Any]:
    """What a namespace holds, read through netlink: links (name, kind, MAC, master's name, up,
    alias), addresses, and routes (destination, gateway, interface) of both
    families; for "nothing changed" checks."""
    with Rtnl(namespace) as rtnl:
        links = rtnl.links()
        names = {link.index: link.name for link in links}
        return {
            "links": sorted(
                (link.name, link.kind, link.mac, names.get(link.master or 0), link.up, link.alias) for link in links
            ),
            "addresses": sorted((names.get(index), str(address)) for index, address in rtnl.addresses(None)),
            "routes": sorted(
                (str(dst), str(via) if via else None, names.get(oif or 0))
                for family in (4, 6)
                for dst, via, oif in rtnl.route_table(family)
            ),
        }


def _differences(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    found = []
    for key in before:
        gone = [x for x in before[key] if x not in after[key]]
        new = [x for x in after[key] if x not in before[key]]
        if gone or new:
            found.append(f"{key}: gone {gone}, new {new}")
    return found


def check_driver(
    factory: Callable[[], Any],
    *,
    name: str = "checked",
    options: Mapping[str, str] | None = None,
    subnet: str = "10.250.0.0/24",
    sandboxes: int = 2,
    fault_sweep: bool = True,
) -> None:
    """Check the network driver *factory* makes in an isolated host; raise :class:`DriverCheckError` if it fails.

    The driver is handed to the host under *name*, and networks are made with
    *options* and *subnet*. Checked: ``create_network``; *sandboxes*
    sandboxes joined (each gets the interface ``eth0`` with its endpoint's
    addresses, and a default route when the join offered a gateway); one of
    them leaving and joining again; every object deleted with the host's
    namespace as before; with *fault_sweep*, a failure at each kernel change
    of ``create_network`` and of a join, before and after the change, each
    leaving the host as it was, and the operation succeeding once nothing
    fails; nothing of the host left once it is closed. Needs root.
    """
    from .api.host import (
        Host,  # the API imports this module's users, not the other way round
    )

    problems: list[str] = []
    host = Host.isolated("check", drivers={name: factory})
    try:
        before = kernel_state(host.namespace)
        _exercise(host, name, options, subnet, sandboxes, problems)
        problems += [f"after deleting everything, {d}" for d in _differences(before, kernel_state(host.namespace))]
        if fault_sweep and not problems:
            for after in (False, True):
                _sweep_both(host, name, options, subnet, after, problems)
    except CNMError as exc:
        problems.append(f"failed: {exc!r}")
    finally:
        try:
            host.close()
        except CNMError as exc:
            problems.append(f"closing the host failed: {exc!r}")
        if os.path.exists(host.namespace.path):
            problems.append(f"the host's namespace {host.namespace.path} is still there after close()")
    if problems:
        raise DriverCheckError(f"driver {name!r}:\n" + "\n".join(f"- {p}" for p in problems))


def _sweep_both(host: Any, name: str, options: Mapping[str, str] | None, subnet: str, after: bool, problems: list[str]) -> None:
    """The fault sweeps of ``create_network`` and of a join (``connect``)."""
    when = "after" if after else "before"
    _sweep(host, problems, f"create_network ({when} the change)", after,
           lambda: host.create_network("swept", name, options=options, subnet=subnet))  # fmt: skip
    network = host.network("swept")
    sandbox = host.create_sandbox("joiner")
    _sweep(host, problems, f"connect ({when} the change)", after, lambda: network.connect(sandbox), sandbox)
    sandbox.delete()
    host.settle()
    network.delete(force=True)


def _exercise(host: Any, name: str, options: Mapping[str, str] | None, subnet: str, count: int, problems: list[str]) -> None:
    network = host.create_network("net", name, options=options, subnet=subnet)
    made = [host.create_sandbox(f"s{i}") for i in range(count)]
    endpoints = [network.connect(s) for s in made]
    for sandbox, endpoint in zip(made, endpoints):
        problems += [f"sandbox {sandbox.name!r}: {p}" for p in _sandbox_end(sandbox, endpoint)]
    endpoints[0].leave()
    if "eth0" in {link[0] for link in kernel_state(made[0].namespace)["links"]}:
        problems.append("after leave(), the sandbox still has eth0")
    endpoints[0].join(made[0])
    problems += [f"joined again: {p}" for p in _sandbox_end(made[0], endpoints[0])]
    host.delete_sandboxes(made)
    network.delete()


def _sandbox_end(sandbox: Any, endpoint: Any) -> list[str]:
    state = kernel_state(sandbox.namespace)
    found = []
    if "eth0" not in {link[0] for link in state["links"]}:
        found.append(f"no eth0 (links: {[link[0] for link in state['links']]})")
    # The join may give the address another prefix (a /32 for a routed link): the address counts.
    on_eth0 = {text.split("/")[0] for name, text in state["addresses"] if name == "eth0"}
    for address in endpoint.addresses:
        if str(address.ip) not in on_eth0:
            found.append(f"eth0 lacks {address.ip} (addresses: {state['addresses']})")
    wanted = {v: g for v, g in (("IPv4", endpoint.settings()["Gateway"]), ("IPv6", endpoint.settings()["IPv6Gateway"])) if g}
    defaults = {"IPv4": "0.0.0.0/0", "IPv6": "::/0"}
    for family in wanted:
        if (defaults[family], wanted[family], "eth0") not in state["routes"]:
            found.append(f"no {family} default route though the join offered gateway {wanted[family]}")
    return found


def _sweep(host: Any, problems: list[str], what: str, after: bool, operation: Callable[[], object], sandbox: Any = None) -> None:
    """Fail each kernel change of *operation* in turn; each failure must leave the host (and *sandbox*) as they were."""
    owners = [host] if sandbox is None else [host, sandbox]
    k = 1
    while k < 100:
        before = [kernel_state(o.namespace) for o in owners]
        with FaultInjector(k, after=after) as injector:
            try:
                operation()
            except (CNMError, Injected) as exc:
                if not injector.fired:
                    problems.append(f"{what}: failed with no fault injected: {exc!r}")
                    return
            else:
                if injector.fired:
                    problems.append(f"{what}: the failure injected at kernel change {k} was swallowed")
                return
        host.settle()
        for owner, state in zip(owners, before):
            where = "" if owner is host else f" in sandbox {owner.name!r}"
            problems += [f"{what}: failure at kernel change {k} left{where} {d}" for d in _differences(state, kernel_state(owner.namespace))]
        k += 1
    problems.append(f"{what}: never succeeded in 100 attempts")

