"""Network modes: where a sandbox's network stack comes from (Docker's ``--network``).

``host.create_sandbox(name, network_mode=...)`` takes what Docker's
``HostConfig.NetworkMode`` takes:

==============================  ==================================================
Docker                          cnm
==============================  ==================================================
``--network NAME``              ``network_mode=network`` (or its name): a namespace
                                of its own, connected in the same call (with
                                ``ip``, ``ip6``, ``mac``, ``ports``)
``--network host``              ``network_mode="host"``: the host's own namespace
``--network none``              ``network_mode="none"``: loopback only, for good
``--network container:NAME``    ``network_mode="container:NAME"`` or a Sandbox:
                                that sandbox's namespace, shared (a pod)
(none given)                    no ``network_mode``: a namespace of its own with
                                loopback up, to ``connect`` later
==============================  ==================================================

A sandbox in mode ``host`` or ``none`` is an endpoint of the host's predefined
network of that name (drivers ``host`` and ``null``, see
:mod:`cnm.drivers.predefined`), with no MAC and no address, as Docker shows it.
Sandboxes of those modes and sharers join no other network and publish no
ports: there is nothing of their own to connect (Docker refuses the same).
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING

import attrs

from .._checks import check_name
from ..drivers import NetworkPlumbing, NetworkSpec, network_driver
from ..errors import ClosedError, ConflictError, InvalidArgumentError, NotFoundError, StateError
from ..ports import PortMapping, normalize_ports
from ..undo import Undo, raise_collected, transaction
from . import bulk
from . import sandbox as sandboxes_
from ._common import new_id, now
from ._records import EndpointRecord, NetworkRecord, SandboxRecord
from ._services import Services

if TYPE_CHECKING:
    from .host import Host

__all__ = [
    "PREDEFINED",
    "Mode",
    "add_predefined",
    "check_deletable",
    "check_not_predefined",
    "check_own_stack",
    "create_sandbox",
    "enter_predefined",
    "parse",
]

#: The networks every host has, by name, with their drivers' names.
PREDEFINED = {"host": "host", "none": "null"}


@attrs.frozen
class Mode:
    """A network mode, checked: the Docker text, and what it refers to."""

    #: as Docker writes it, or None for a sandbox made without one
    text: str | None
    #: the network to connect to (``--network NAME``), or the predefined one
    network: NetworkRecord | None = None
    #: the sandbox whose namespace is shared (``container:NAME``)
    shares: SandboxRecord | None = None


def create_sandbox(
    services: Services,
    host: Host,
    name: str,
    network_mode: object,
    *,
    ip: str | IPv4Address | None,
    ip6: str | IPv6Address | None,
    mac: str | None,
    ports: Iterable[str | PortMapping] | str,
) -> SandboxRecord:
    """What ``host.create_sandbox`` does; see there."""
    check_name("sandbox", name)
    if name in services.sandboxes:
        raise ConflictError(f"sandbox {name!r}: a sandbox with that name already exists")
    mode = parse(services, name, network_mode)
    if mode.network is not None and not mode.network.predefined:
        # The bulk path's steps for one: every book (address, host ports)
        # before the namespace, so that a refusal changes nothing.
        request = bulk.SandboxRequest(name, ip=ip, mac=mac, ports=ports, ip6=ip6)
        (record,) = bulk.create_sandboxes(services, host, [request], mode.network)
        return record  # its network_mode is the network's name, as the bulk path sets it
    if ip is not None or ip6 is not None or mac is not None or normalize_ports(ports, owner=f"sandbox {name!r}"):
        what = "made without one" if mode.text is None else f"in network mode {mode.text}"
        raise InvalidArgumentError(f"sandbox {name!r}: ip, ip6, mac and ports need a network to connect to ({what})")
    if mode.text is None:
        return sandboxes_.create(services, host, name)
    if mode.network is not None and name in mode.network.endpoints:
        raise ConflictError(f"network {mode.network.name!r}: an endpoint named {name!r} already exists")
    record = sandboxes_.new_record(services, host, name)
    record.network_mode = mode.text
    with transaction(keep=services.keep) as undo:
        owner = mode.shares
        if mode.text == "host":
            record.namespace = services.namespace
        elif owner is not None:
            record.namespace, record.shares = owner.namespace, owner
            owner.sharers.append(record)
            undo.books.push(
                f"sandbox {name!r}: a sharer of {owner.name!r}",
                lambda: owner.sharers.remove(record) if record in owner.sharers else None,
            )
        else:
            sandboxes_.make_namespace(services, record, undo.kernel, here=False)
        if mode.network is not None:
            enter_predefined(services, record, mode.network, undo)
        services.adopt(services.sandboxes, record, undo.books)
    record.undo = undo
    if record.socket is not None:
        services.keep_warm(record)
    return record


def parse(services: Services, name: str, value: object) -> Mode:
    """*value* as a mode for a new sandbox *name*; a typed error if it is none."""
    from .network import Network
    from .sandbox import Sandbox

    where = f"sandbox {name!r}: network_mode"
    if value is None:
        return Mode(None)
    if isinstance(value, Sandbox):
        return _shared(where, services.live_sandbox(where, value))
    if isinstance(value, Network):
        return _network(where, services.network(where, value))
    if not isinstance(value, str):
        raise InvalidArgumentError(
            f"{where} must be 'host', 'none', 'container:NAME', a network's name, a Network or a Sandbox, "
            f"not {type(value).__name__} {value!r}"
        )
    known = ", ".join(repr(n) for n in [*PREDEFINED, "container:NAME"])
    target = value.removeprefix("container:")
    if not target:
        raise InvalidArgumentError(f"{where} {value!r} names nothing (a mode is {known} or a network's name)")
    if value.startswith("container:"):
        owner = services.sandboxes.get(target)
        if owner is None:
            raise NotFoundError(f"{where}: no sandbox named {target!r} to share")
        if owner.deleted:
            raise ClosedError(f"{where}: sandbox {target!r} was deleted")
        return _shared(where, owner)
    named = services.networks.get(value)
    if named is None:
        raise NotFoundError(f"{where}: no network named {value!r} (a mode is {known} or a network's name)")
    return _network(where, named)


def _network(where: str, network: NetworkRecord) -> Mode:
    if network.deleted:
        raise ClosedError(f"{where}: network {network.name!r} was deleted")
    return Mode(network.name, network)


def _shared(where: str, owner: SandboxRecord) -> Mode:
    if owner.shares is not None:
        raise InvalidArgumentError(
            f"{where}: sandbox {owner.name!r} shares the namespace of {owner.shares.name!r}; name that one instead"
        )
    if owner.network_mode == "host":
        raise InvalidArgumentError(f"{where}: sandbox {owner.name!r} is in network mode host; use network_mode='host'")
    return Mode(f"container:{owner.name}", shares=owner)


def check_not_predefined(network: NetworkRecord, what: str) -> None:
    """Refuse *what* for a predefined network (or its endpoints): a sandbox is on one by its mode only."""
    if network.predefined:
        raise InvalidArgumentError(
            f"network {network.name!r} is predefined and cannot {what}: a sandbox is on it by "
            f"host.create_sandbox(name, network_mode={network.name!r}) and leaves it by being deleted"
        )


def check_own_stack(sandbox: SandboxRecord, what: str) -> None:
    """Refuse *what* (joining a network) for a sandbox with no network stack of its own."""
    if sandbox.own_stack:
        return
    if sandbox.shares is not None:
        why = f"shares the namespace of sandbox {sandbox.shares.name!r} (connect that one)"
    else:
        why = f"is in network mode {sandbox.network_mode}"
    raise ConflictError(f"sandbox {sandbox.name!r} {why}: it cannot {what}")


def add_predefined(services: Services, host: Host) -> None:
    """The networks ``host`` and ``none`` of a new host: records only, nothing in the
    kernel, gone with the host (each forgets itself when the host tears it down)."""
    from .network import Network

    for name, driver in PREDEFINED.items():
        spec = NetworkSpec(
            name=name, id=new_id(), subnets=(), gateways=(), internal=False, options={}, owner=services.token
        )
        record = NetworkRecord(
            handle=None,  # type: ignore[arg-type]  # set just below: the handle needs its record
            spec=spec,
            driver=network_driver(driver),
            ipam="default",
            pools={},
            plumbing=NetworkPlumbing(interface="", index=0, owner=services.token),
            rules=None,
            labels={},
            created=now(),
            predefined=True,
        )
        record.handle = Network(services, host, record)
        services.adopt(services.networks, record, record.undo.books)


def enter_predefined(services: Services, sandbox: SandboxRecord, network: NetworkRecord, undo: Undo) -> None:
    """*sandbox* as an endpoint of the predefined *network*: no MAC, no address, no link."""
    from .endpoint import Endpoint

    endpoint = EndpointRecord(
        handle=None,  # type: ignore[arg-type]
        network=network,
        name=sandbox.name,
        id=new_id(),
        addresses=(),
        mac="",
        ports=[],
        static=frozenset(),
        sandbox=sandbox,
        joined=True,
        owned_by_connection=True,
    )
    endpoint.handle = Endpoint(services, network.handle, endpoint)
    network.endpoints[endpoint.name] = endpoint
    endpoint.undo.books.push(f"forget endpoint {endpoint.name!r}", lambda: network.endpoints.pop(endpoint.name, None))
    sandbox.endpoints.append(endpoint)

    def leave() -> None:
        if endpoint in sandbox.endpoints:
            sandbox.endpoints.remove(endpoint)
        endpoint.sandbox, endpoint.joined = None, False

    endpoint.join.books.push(f"endpoint {endpoint.name!r}: joined", leave)

    def remove() -> None:  # with the sandbox, or its rollback
        endpoint.deleted = True
        raise_collected(f"endpoint {endpoint.name!r}", endpoint.join.unwind() + endpoint.undo.unwind())

    undo.books.push(f"endpoint {endpoint.name!r}", remove)


def check_deletable(sandbox: SandboxRecord, doomed: list[SandboxRecord]) -> None:
    """Refuse to delete *sandbox* while a sandbox that is not in *doomed* shares its namespace."""
    left = [s.name for s in sandbox.sharers if not s.deleted and s not in doomed]
    if left:
        raise StateError(
            f"sandbox {sandbox.name!r}: sandboxes {', '.join(map(repr, left))} share its namespace; "
            "delete them first, or delete(sharers=True)"
        )
