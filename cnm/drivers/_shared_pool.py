"""One overlay network's addresses across its hosts: the book they share, and each host's pool over it.

Each host of an overlay has its own network object and address pool (cnm's
IPAM is per host), so two hosts could give one address twice. A
:class:`SharedAddresses` is the network's book across hosts: which host
holds which address, and each host's ``ip_range``. A :class:`SharedPool`
wraps one host's pool: a static address is refused if another host holds it
or has it in its range (and this host does not), and an automatic one is
never one another host holds. The book is kept by the overlay's
:class:`~cnm.drivers.overlay.Peers` (in the process, for a lab), so it is
what every host of the network sees.
"""

from __future__ import annotations

import threading

from .._ip import IPAddress, IPNetwork
from ..errors import ConflictError
from ..ipam import AddressPool

__all__ = ["SharedAddresses", "SharedPool"]

#: a host of the overlay: its tunnel end, and a name for messages
HostKey = tuple[IPAddress, str]


def _named(host: HostKey) -> str:
    vtep, name = host
    return f"host {name!r}" if name else f"the host at tunnel end {vtep}"


class SharedAddresses:
    """The addresses of one overlay network on all its hosts (thread-safe: hosts call from their own threads)."""

    def __init__(self, network: str) -> None:
        self.network = network
        self._lock = threading.Lock()
        self._holders: dict[IPAddress, HostKey] = {}
        self._ranges: dict[HostKey, list[IPNetwork]] = {}

    def add_range(self, host: HostKey, ip_range: IPNetwork) -> None:
        with self._lock:
            self._ranges.setdefault(host, []).append(ip_range)

    def remove_range(self, host: HostKey, ip_range: IPNetwork) -> None:
        with self._lock:
            ranges = self._ranges.get(host, [])
            if ip_range in ranges:
                ranges.remove(ip_range)
            if not ranges:
                self._ranges.pop(host, None)

    def claim(self, host: HostKey, address: IPAddress, *, static: bool) -> None:
        """Hold *address* for *host*; ConflictError if another host holds it,
        or (*static*) has it in its range while *host* has not."""
        with self._lock:
            holder = self._holders.get(address)
            if holder is not None and holder[0] != host[0]:
                raise ConflictError(f"network {self.network!r}: address {address} is in use on the overlay: {_named(holder)} has it")
            if static and not any(address in r for r in self._ranges.get(host, [])):
                for other, ranges in self._ranges.items():
                    for ip_range in ranges:
                        if other[0] != host[0] and address in ip_range:
                            raise ConflictError(
                                f"network {self.network!r}: address {address} is in the ip_range {ip_range} of {_named(other)}"
                                " on the overlay (a static address must be in this host's range, or in none)"
                            )
            self._holders[address] = host

    def release(self, host: HostKey, address: IPAddress) -> None:
        """Give *address* back, if *host* holds it (releasing twice is silent)."""
        with self._lock:
            if self._holders.get(address, (None,))[0] == host[0]:
                del self._holders[address]


class SharedPool:
    """An :class:`~cnm.ipam.AddressPool` of one host whose addresses are unique across the overlay."""

    def __init__(self, pool: AddressPool, book: SharedAddresses, host: HostKey) -> None:
        self._pool = pool
        self._book = book
        self._host = host

    def __repr__(self) -> str:
        return f"<SharedPool {self._pool!r} of {_named(self._host)}>"

    @property
    def subnet(self) -> IPNetwork:
        return self._pool.subnet

    @property
    def ip_range(self) -> IPNetwork | None:
        return self._pool.ip_range

    @property
    def gateway(self) -> IPAddress:
        return self._pool.gateway

    def allocate(self, ip: IPAddress | None = None) -> IPAddress:
        if ip is not None:
            self._book.claim(self._host, ip, static=True)
            try:
                return self._pool.allocate(ip)
            except BaseException:
                self._book.release(self._host, ip)
                raise
        # The lowest free one that no other host holds: those are kept taken
        # here while looking (so the pool hands out the next), then given back.
        skipped: list[IPAddress] = []
        try:
            while True:
                address = self._pool.allocate()
                try:
                    self._book.claim(self._host, address, static=False)
                except ConflictError:
                    skipped.append(address)
                    continue
                return address
        finally:
            for address in skipped:
                self._pool.release(address)

    def release(self, ip: IPAddress) -> None:
        self._pool.release(ip)
        if not self._pool.in_use(ip):
            self._book.release(self._host, ip)

    def in_use(self, ip: IPAddress) -> bool:
        return self._pool.in_use(ip)

    def allocated(self) -> frozenset[IPAddress]:
        return self._pool.allocated()
