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
undone too), or, with *midway*, inside a batch: the kernel acts on every
request of a pipelined rtnetlink write but its last, which it refuses (one
request alone, or a write that only asks, fails before it happens). It patches cnm's classes for the whole process while it is
active: use it where nothing else in the process talks to the kernel.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .errors import CNMError, InvalidArgumentError
from .kernel import Rtnl
from .netlink import Netlink, NetlinkReply
from .netns import Namespace

__all__ = ["DriverCheckError", "FaultInjector", "Injected", "check_driver", "kernel_state"]


class Injected(OSError):
    """The failure a :class:`FaultInjector` raises."""


class DriverCheckError(AssertionError):
    """What :func:`check_driver` found wrong, one line per finding."""


class FaultInjector:
    """While active (``with``), fails the *fail_at*-th kernel change (1-based) once and counts them all."""

    _STEPS = ((Netlink, "transact", True), (Netlink, "fenced", True), (Namespace, "create", False), (Namespace, "write_sysctl", False))

    def __init__(self, fail_at: int | None, *, after: bool = False, midway: bool = False) -> None:
        if after and midway:
            raise InvalidArgumentError("fault injector: a failure is injected after the step or midway through it, not both")
        self.count = 0
        self.fail_at = fail_at
        self.after = after
        self.midway = midway
        self.fired = False
        self._lock = threading.Lock()  # the bulk path changes the kernel from two threads
        self._saved: list[tuple[type, str, Any]] = []

    def __enter__(self) -> FaultInjector:
        for cls, name, netlink in self._STEPS:
            raw = cls.__dict__[name]
            self._saved.append((cls, name, raw))
            batch = cls is Netlink and name == "transact"  # a pipelined rtnetlink write; an nfnetlink batch is atomic
            setattr(cls, name, self._wrap(getattr(cls, name), isinstance(raw, classmethod), netlink, batch))
        return self

    def __exit__(self, *exc: object) -> None:
        for cls, name, raw in reversed(self._saved):
            setattr(cls, name, raw)
        self._saved.clear()

    def _wrap(self, original: Callable[..., Any], is_classmethod: bool, netlink: bool, batch: bool) -> Any:
        injector = self

        def step(*args: Any, **kwargs: Any) -> Any:
            with injector._lock:
                injector.count += 1
                fire = not injector.fired and injector.count == injector.fail_at
                if fire:
                    injector.fired = True
            if fire and injector.midway and batch and len(args[1]) > 1 and not _reads_only(args[1]):
                return _refuse_last(original, *args, **kwargs)
            if fire and not (injector.after and netlink):
                raise Injected(errno.EPERM, "injected failure before the step")
            result = original(*args[1:], **kwargs) if is_classmethod else original(*args, **kwargs)
            if fire:
                raise Injected(errno.EIO, "injected failure after the step")
            return result

        return classmethod(step) if is_classmethod else step


#: The sysctls :func:`kernel_state` reads: of the namespace, and of each link (``{}``).
SYSCTLS = ("ipv4/ip_forward", "ipv6/conf/all/forwarding", "ipv6/conf/default/disable_ipv6")
LINK_SYSCTLS = (
    "ipv4/conf/{}/forwarding",
    "ipv4/conf/{}/route_localnet",
    "ipv4/conf/{}/proxy_arp",
    "ipv6/conf/{}/disable_ipv6",
    "ipv6/conf/{}/forwarding",
)


def _reads_only(requests: Any) -> bool:
    """Whether every request of a pipelined rtnetlink write only asks (RTM_GET*: type 2 mod 4)."""
    return all(struct.unpack_from("=H", data, 4)[0] % 4 == 2 for _, data in requests)


def _refuse_last(transact: Callable[..., Any], nl: Netlink, requests: Any, echoed: Any = ()) -> Any:
    """``nl.transact(requests)`` with its last request refused (EPERM) instead of sent."""
    *sent, (last, _) = requests
    replies = transact(nl, sent, echoed=[seq for seq in echoed if seq != last])
    replies[last] = NetlinkReply(errno.EPERM, "injected refusal of the last request of a batch")
    return replies


def kernel_state(namespace: Namespace) -> dict[str, Any]:
    """What a namespace holds, read through netlink: links (name, kind, MAC, master's name, up,
    alias), addresses, and routes (destination, gateway, interface) of both
    families; the :data:`SYSCTLS` and each link's :data:`LINK_SYSCTLS`; and
    every nftables table, rule and set element (see
    :func:`cnm.firewall.nftables.ruleset_state`). For "nothing changed" checks."""
    from .firewall.nftables import ruleset_state  # the firewall imports what imports this module

    with Rtnl(namespace) as rtnl:
        links = rtnl.links()
        names = {link.index: link.name for link in links}
        keys = list(SYSCTLS) + [key.format(link.name) for link in links for key in LINK_SYSCTLS]
        return {
            "sysctls": namespace.quick(lambda: _read_sysctls(keys)),
            "nftables": ruleset_state(namespace),
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


def _read_sysctls(keys: list[str]) -> list[tuple[str, str]]:
    """(key, value) of each of *keys* under /proc/sys/net there is (a link's IPv6 ones are not, with IPv6 off)."""
    found = []
    for key in keys:
        try:
            with open(f"/proc/sys/net/{key}") as f:
                found.append((key, f.read().strip()))
        except FileNotFoundError:
            pass
    return found


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
    of ``create_network`` and of a join, before, after and midway through the
    change (see :class:`FaultInjector`), each leaving the host as it was, and the operation succeeding once nothing
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
            for when in ("before", "after", "midway"):
                _sweep_both(host, name, options, subnet, when, problems)
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


def _sweep_both(host: Any, name: str, options: Mapping[str, str] | None, subnet: str, when: str, problems: list[str]) -> None:
    """The fault sweeps of ``create_network`` and of a join (``connect``), failing each change *when*
    (``"before"``, ``"after"`` or ``"midway"``: see :class:`FaultInjector`)."""
    _sweep(host, problems, f"create_network ({when} the change)", when,
           lambda: host.create_network("swept", name, options=options, subnet=subnet))  # fmt: skip
    network = host.network("swept")
    sandbox = host.create_sandbox("joiner")
    _sweep(host, problems, f"connect ({when} the change)", when, lambda: network.connect(sandbox), sandbox)
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


def _sweep(host: Any, problems: list[str], what: str, when: str, operation: Callable[[], object], sandbox: Any = None) -> None:
    """Fail each kernel change of *operation* in turn; each failure must leave the host (and *sandbox*) as they were."""
    owners = [host] if sandbox is None else [host, sandbox]
    k = 1
    while k < 100:
        before = [kernel_state(o.namespace) for o in owners]
        with FaultInjector(k, after=when == "after", midway=when == "midway") as injector:
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

