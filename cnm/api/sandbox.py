"""Sandboxes: a network namespace that endpoints join (a container's network stack)."""

from __future__ import annotations

from ipaddress import IPv4Interface, IPv6Interface
from typing import TYPE_CHECKING, Any, Literal, overload

from .._checks import check_flag, check_name
from ..errors import ClosedError, ConflictError, InvalidArgumentError, NotFoundError
from ..netns import Namespace
from ..undo import UndoLog, raise_collected, transaction
from . import modes, teardown, views
from ._common import InNamespace, new_id
from ._records import Processes, SandboxRecord
from ._services import Services, serialized

if TYPE_CHECKING:
    from .endpoint import Endpoint
    from .host import Host
    from .network import Network

__all__ = ["Sandbox", "create", "make_namespace", "new_record"]


class Sandbox(InNamespace):
    """A network namespace that endpoints join (a container's network stack)."""

    def __init__(self, services: Services, host: Host, record: SandboxRecord) -> None:
        self._services = services
        self._record = record
        self._processes = record.processes
        self.host = host
        self.name = record.name
        self.id = record.id

    def __repr__(self) -> str:
        return f"<Sandbox {self.name!r} {'deleted' if self._record.deleted else self.namespace.path}>"

    @property
    def namespace(self) -> Namespace:  # type: ignore[override]
        return self._record.namespace

    @property
    def key(self) -> str:
        """The namespace's path (Docker's SandboxKey): ``nsenter --net=KEY`` enters it.

        For a sandbox sharing another's namespace, that one's path (where
        Docker's inspect shows an empty SandboxKey)."""
        return self._record.namespace.path

    @property
    def network_mode(self) -> str | None:
        """As Docker writes it (``host``, ``none``, ``container:NAME``, a
        network's name), or None for a sandbox made without one."""
        return self._record.network_mode

    @property
    @serialized
    def endpoints(self) -> list[Endpoint]:
        return [e.handle for e in self._record.endpoints if e.joined]

    @overload
    def address(self, network: Network) -> IPv4Interface: ...
    @overload
    def address(self, network: Network, family: Literal[4]) -> IPv4Interface: ...
    @overload
    def address(self, network: Network, family: Literal[6]) -> IPv6Interface: ...

    @serialized
    def address(self, network: Network, family: int = 4) -> IPv4Interface | IPv6Interface:
        """The sandbox's interface address of *family* (4 or 6) on *network*."""
        where = f"sandbox {self.name!r}: address"
        target = self._services.network(where, network)
        if family not in (4, 6) or isinstance(family, bool):
            raise InvalidArgumentError(f"{where}: family {family!r} is not 4 or 6")
        for endpoint in self._record.endpoints:
            if endpoint.network is target and endpoint.joined:
                address = endpoint.address(family)
                if address is None:
                    raise NotFoundError(f"sandbox {self.name!r}: network {network.name!r} has no IPv{family}")
                return address
        raise NotFoundError(f"sandbox {self.name!r} is not connected to network {network.name!r}")

    @serialized
    def inspect(self) -> dict[str, Any]:
        """This sandbox in the shape of a container's ``NetworkSettings``."""
        return views.sandbox_inspect(self._record)

    @serialized
    def delete(self, *, sharers: bool = False) -> None:
        """Delete the sandbox: its processes, its namespace and its interfaces.

        Processes started with ``popen`` get SIGTERM, then SIGKILL if they
        have not exited within a second (see :meth:`popen`).

        Endpoints made by ``network.connect`` are deleted; endpoints that were
        created separately and joined are left (they keep their address).
        Idempotent; after a failed step, calling it again retries what is left.

        A sandbox sharing another's namespace (network mode ``container:``)
        leaves the namespace; one in mode ``host`` leaves the host's alone. A
        sandbox whose namespace others share is refused
        (:class:`~cnm.errors.StateError`) unless *sharers* is true, which
        deletes them first.

        Returns once the kernel has been told: it removes the sandbox's
        interfaces a little later, and until it has, their addresses and
        host ports are not given to anyone else (:meth:`Host.settle` waits).
        """
        check_flag(f"sandbox {self.name!r}: delete", "sharers", sharers)
        record = self._record
        doomed = [s for s in record.sharers if not s.deleted] if sharers else []
        modes.check_deletable(record, doomed)
        raise_collected(f"sandbox {self.name!r}", teardown.delete_sandboxes(self._services, [*doomed, record], wait=False))

    def _check_open(self) -> None:
        if self._record.deleted:
            raise ClosedError(f"sandbox {self.name!r} was deleted")
        self._services.check_open()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete(sharers=True)


def new_record(services: Services, host: Host, name: str) -> SandboxRecord:
    """The record (and handle) of a sandbox whose namespace is still to be made."""
    namespace = Namespace(f"cnm-{services.token}-sb-{name}", services.sandbox_path(name))
    record = SandboxRecord(handle=None, name=name, id=new_id(), namespace=namespace, processes=Processes(services.token))  # type: ignore[arg-type]
    record.handle = Sandbox(services, host, record)
    return record


def make_namespace(services: Services, record: SandboxRecord, kernel: UndoLog, *, here: bool) -> None:
    """The sandbox's namespace, loopback up, and a socket in it kept open
    (the first join uses it, saving a trip into the namespace).

    With *here*, in the calling thread (a thread of the bulk path's own,
    left inside the namespace), else on the namespace worker.
    """
    record.namespace, record.socket = services.kernel.create_namespace(
        record.namespace.name, path=record.namespace.path, here=here
    )
    kernel.push(f"sandbox {record.name!r}: namespace", record.namespace.delete)
    # The socket must be closed before the namespace can go, hence after it on the log.
    kernel.push(f"sandbox {record.name!r}: socket", record.cool)


def create(services: Services, host: Host, name: str) -> SandboxRecord:
    """What ``host.create_sandbox`` does: a sandbox with loopback up."""
    check_name("sandbox", name)
    if name in services.sandboxes:
        raise ConflictError(f"sandbox {name!r}: a sandbox with that name already exists")
    record = new_record(services, host, name)
    with transaction(keep=services.keep) as undo:
        make_namespace(services, record, undo.kernel, here=False)
        services.adopt(services.sandboxes, record, undo.books)
    record.undo = undo
    services.keep_warm(record)
    return record
