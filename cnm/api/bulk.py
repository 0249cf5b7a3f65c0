"""The bulk path: many sandboxes in one call, the single path's steps batched.

:func:`create_sandboxes` runs, for each sandbox, what ``create_sandbox`` and
``network.connect`` run (:func:`cnm.api.sandbox.make_namespace` and the
join protocol of :mod:`cnm.api.join`), arranged for speed: namespaces are
made on a thread of their own while this thread plumbs the ones that are
ready, and adds the port forwards of every :data:`PUBLISH_BATCH` sandboxes
in one firewall transaction, in time it would otherwise spend waiting.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING

import attrs

from .._checks import check_collection, check_mac, check_name
from ..errors import ConflictError, InvalidArgumentError
from ..ipam import parse_address
from ..ports import PortMapping, normalize_ports
from ..undo import raise_collected, transaction
from . import endpoint as endpoints
from . import join as joining
from . import sandbox as sandboxes_
from . import teardown
from ._records import NetworkRecord, SandboxRecord
from ._services import Services

if TYPE_CHECKING:
    from .host import Host

__all__ = ["PIPELINE_DEPTH", "PUBLISH_BATCH", "SandboxRequest", "create_sandboxes"]


@attrs.frozen(init=False)
class SandboxRequest:
    """One sandbox for :meth:`Host.create_sandboxes`: its name and, when the
    call connects it to a network, its address, MAC and published ports
    (as in :meth:`Network.connect`: a single string is one port spec).

    Checked when made: a bad value raises
    :class:`~cnm.errors.InvalidArgumentError` here, not in the bulk call.
    *ports* is kept as the :class:`~cnm.PortMapping` list it stands for.
    """

    name: str
    ip: str | IPv4Address | None
    mac: str | None
    ports: tuple[PortMapping, ...]
    ip6: str | IPv6Address | None

    def __init__(
        self,
        name: str,
        ip: str | IPv4Address | None = None,
        mac: str | None = None,
        ports: Iterable[str | PortMapping] | str = (),
        ip6: str | IPv6Address | None = None,
    ) -> None:
        # By hand, not by attrs converters: each message names the sandbox.
        name = check_name("sandbox", name)
        where = f"sandbox {name!r}"
        parse_address(name, "ip", ip, kind="sandbox", family=4)
        parse_address(name, "ip6", ip6, kind="sandbox", family=6)
        self.__attrs_init__(name, ip, check_mac(where, mac), tuple(normalize_ports(ports, owner=where)), ip6)


def create_sandboxes(
    services: Services, host: Host, requests: Iterable[str | SandboxRequest], network: NetworkRecord | None
) -> list[SandboxRecord]:
    """What ``host.create_sandboxes`` does; see there."""
    where = f"host {services.name!r}: create_sandboxes"
    # SandboxRequest checks each name (and ip, mac, ports) as it is made.
    items = check_collection(where, "requests", requests, "sandbox names or SandboxRequests")
    wanted = [r if isinstance(r, SandboxRequest) else SandboxRequest(r) for r in items]
    names: set[str] = set()
    for request in wanted:
        if request.name in services.sandboxes or request.name in names:
            raise ConflictError(f"sandbox {request.name!r}: a sandbox with that name already exists")
        names.add(request.name)
        if network is None and (request.ip or request.ip6 or request.mac is not None or request.ports):
            raise InvalidArgumentError(f"sandbox {request.name!r}: ip, ip6, mac and ports need a network to connect to")
    # One look at the host's sockets for every port of the call, before any change.
    sockets = None
    if network is not None:
        sockets = joining.held_by_host(services, (m for r in wanted for m in r.ports), tuple(network.pools))
    made: list[SandboxRecord] = []
    joins: list[joining.Join | None] = []
    with transaction(keep=services.keep) as undo:
        # Rollback runs the kernel step first, then (once it is clean) the books.
        undo.kernel.push(
            f"host {services.name!r}: new sandboxes",
            lambda: raise_collected("new sandboxes", teardown.delete_sandboxes(services, made, wait=True)),
        )
        for request in wanted:
            record = sandboxes_.new_record(services, host, request.name)
            record.network_mode = network.name if network is not None else None
            services.adopt(services.sandboxes, record, record.undo.books)
            made.append(record)
            step = None
            if network is not None:
                endpoint = endpoints.create(
                    services, network, request.name, ip=request.ip, ip6=request.ip6, mac=request.mac, ports=request.ports
                )
                endpoint.owned_by_connection = True
                undo.books.push(f"endpoint {endpoint.name!r}", lambda e=endpoint: raise_collected(e.name, endpoints.teardown(services, e)))  # type: ignore[misc]
                endpoints.check_host_addresses(services, endpoint)
                # Recorded as joining before the kernel work: a rollback
                # (teardown.delete_sandboxes) finds what to undo through it.
                step = joining.prepare(services, endpoint, record, endpoint.join, sockets)
            joins.append(step)

        def make_namespace(i: int) -> None:
            """Runs in a namespace thread: sandbox *i*'s namespace, lo up, a socket in it."""
            sandboxes_.make_namespace(services, made[i], made[i].undo.kernel, here=True)

        unpublished: list[joining.Join] = []

        def plumb(i: int) -> None:
            """Runs in this thread, as namespaces become ready: sandbox *i*'s
            interface, and every PUBLISH_BATCH joins their port forwards (this
            thread would otherwise wait for namespaces meanwhile)."""
            try:
                step = joins[i]
                if step is not None:
                    joining.plumb(services, services.rtnl, step)
                    unpublished.append(step)
                    if len(unpublished) == PUBLISH_BATCH:
                        joining.publish(services, unpublished)
                        unpublished.clear()
            finally:
                made[i].cool()  # descriptors stay bounded however many sandboxes

        pipeline(len(made), make_namespace, plumb)
        if unpublished:
            joining.publish(services, unpublished)
        for step in joins:
            if step is not None:
                joining.commit(step)
    return made


#: How many joins' port forwards the bulk path adds in one firewall
#: transaction while it goes on plumbing: large enough that the transactions'
#: fixed cost is small, small enough that the last one, which nothing
#: overlaps, is short.
PUBLISH_BATCH = 128

#: How many sandboxes may wait between the two stages of pipeline, each
#: holding one socket: bounds the descriptors in use whatever the number of
#: sandboxes.
PIPELINE_DEPTH = 16


def pipeline(count: int, first: Callable[[int], None], second: Callable[[int], None]) -> None:
    """Run ``first(i)`` then ``second(i)`` for every i in range(count), overlapped.

    ``first`` runs on a thread of its own, ``second`` in the calling thread
    as items come out of the first stage. Creating a namespace is mostly
    kernel work outside the RTNL lock, and plumbing a veth mostly work under
    it: one thread on each keeps both cores busy with less contention for
    the lock than two threads each doing whole sandboxes (measured, see the
    docs' explanation page). The thread is left inside the namespace it made
    last (nothing it does depends on where it is) and ends with this call.

    Stops at the first failure (no new item starts; items already through
    the first stage are left as they are, their undo registered by
    ``first``); returns when the thread has stopped, also when interrupted,
    so the caller's rollback never races it; raises the first failure, the
    other (if both stages failed) attached as a note.
    """
    ready: queue.Queue[int] = queue.Queue(maxsize=PIPELINE_DEPTH)
    failures: list[BaseException] = []
    stop = threading.Event()

    def produce() -> None:
        try:
            for i in range(count):
                first(i)
                while not stop.is_set():
                    try:
                        ready.put(i, timeout=0.05)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # handed to the caller
            failures.append(exc)
            stop.set()

    thread = threading.Thread(target=produce, name="cnm-namespaces")
    thread.start()
    try:
        done = 0
        while done < count and not stop.is_set():
            try:
                i = ready.get(timeout=0.05)
            except queue.Empty:
                continue
            second(i)
            done += 1
    except BaseException as exc:
        failures.append(exc)
    finally:
        stop.set()
        thread.join()
    if failures:
        for other in failures[1:]:
            failures[0].add_note(f"another sandbox failed too: {other!r}")
        raise failures[0]
