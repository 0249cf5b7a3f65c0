"""The built-in IPAM driver, ``"default"``, and its address allocator.

:class:`DefaultIPAM` chooses subnets the way Docker's default address pools
do, and :class:`SubnetAllocator` hands out the addresses of one subnet, lowest
free first. Both are pure: nothing here touches the kernel or the disk.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import ClassVar

import attrs

from ..errors import ConflictError, ExhaustedError, InvalidArgumentError

__all__ = ["DEFAULT_POOLS", "DefaultIPAM", "SubnetAllocator"]

#: Docker's default address pools, in the order they are tried: the fifteen
#: /16s from 172.17.0.0/16 to 172.31.0.0/16 (172.16.0.0/16 is left out, as
#: Docker does), then 192.168.0.0/16 cut into sixteen /20s.
DEFAULT_POOLS: tuple[IPv4Network, ...] = (
    *(IPv4Network(f"172.{second}.0.0/16") for second in range(17, 32)),
    *IPv4Network("192.168.0.0/16").subnets(new_prefix=20),
)

#: The longest prefix a subnet may have: a /30 has two host addresses, one for
#: the gateway and one for an endpoint; a /31 or /32 has no room for both.
MAX_PREFIX = 30


class SubnetAllocator:
    """An :class:`~cnm.ipam.AddressPool` over one IPv4 subnet.

    Automatic allocation hands out the lowest free address of :attr:`ip_range`
    (or of the subnet), so a released address is the next one handed out.
    Every operation is O(log n) in the number of addresses handed out so far,
    and memory grows with that number, not with the size of the subnet: a /8
    costs no more to create than a /24.

    *network* names the owning network in error messages.
    """

    __slots__ = (
        "_broadcast",
        "_cursor",
        "_first",
        "_freed",
        "_gateway",
        "_in_heap",
        "_last",
        "_network",
        "_subnet_start",
        "_taken",
        "_where",
        "gateway",
        "ip_range",
        "subnet",
    )

    # How lowest-free is kept cheap: addresses are plain ints. Everything
    # below ``_cursor`` in the automatic range has been looked at once: it is
    # either taken, the gateway, or (once released) on the ``_freed`` heap.
    # Everything from ``_cursor`` up has never been handed out automatically,
    # though some of it may be taken by static requests; the cursor steps over
    # those when it reaches them. So the lowest free address is the smallest
    # live heap entry if there is one (all of them lie below the cursor), else
    # the first untaken address at or after the cursor. A static request for an
    # address that sits on the heap leaves it there: the entry is skipped when
    # popped because the address is taken ("lazy deletion"), which spares an
    # O(n) removal from the middle of the heap.

    def __init__(
        self,
        subnet: IPv4Network,
        *,
        ip_range: IPv4Network | None = None,
        gateway: IPv4Address | None = None,
        network: str | None = None,
    ) -> None:
        self._where = f"network {network!r}" if network is not None else f"subnet {subnet}"
        if not isinstance(subnet, IPv4Network):
            raise InvalidArgumentError(f"{self._where}: subnet {subnet!r} is not an IPv4 network")
        if subnet.prefixlen > MAX_PREFIX:
            raise InvalidArgumentError(
                f"{self._where}: subnet {subnet} is too small: the prefix must be"
                f" /{MAX_PREFIX} or shorter to leave room for a gateway and one address"
            )
        if ip_range is not None:
            if not isinstance(ip_range, IPv4Network):
                raise InvalidArgumentError(f"{self._where}: ip_range {ip_range!r} is not an IPv4 network")
            if not ip_range.subnet_of(subnet):
                raise InvalidArgumentError(f"{self._where}: ip_range {ip_range} is not inside subnet {subnet}")
        if gateway is None:
            gateway = subnet.network_address + 1
        elif not isinstance(gateway, IPv4Address):
            raise InvalidArgumentError(f"{self._where}: gateway {gateway!r} is not an IPv4 address")
        elif gateway not in subnet:
            raise InvalidArgumentError(f"{self._where}: gateway {gateway} is not inside subnet {subnet}")
        elif gateway == subnet.network_address:
            raise InvalidArgumentError(f"{self._where}: gateway {gateway} is the network address of subnet {subnet}")
        elif gateway == subnet.broadcast_address:
            raise InvalidArgumentError(
                f"{self._where}: gateway {gateway} is the broadcast address of subnet {subnet}"
            )

        self.subnet = subnet
        self.ip_range = ip_range
        self.gateway = gateway
        self._network = network
        self._subnet_start = int(subnet.network_address)
        self._broadcast = int(subnet.broadcast_address)
        self._gateway = int(gateway)
        auto = ip_range if ip_range is not None else subnet
        # Clipped so that a range covering the subnet's edges (or equal to the
        # subnet) never yields its network or broadcast address.
        self._first = max(int(auto.network_address), self._subnet_start + 1)
        self._last = min(int(auto.broadcast_address), self._broadcast - 1)
        assignable = self._last - self._first + 1 - (self._first <= self._gateway <= self._last)
        if assignable < 1:
            # Only the network, broadcast or gateway address: every automatic
            # allocation would fail, which is better said now.
            raise InvalidArgumentError(
                f"{self._where}: ip_range {ip_range} leaves no address to hand out in subnet {subnet}"
                f" (the network and broadcast addresses and the gateway {gateway} are never handed out)"
            )
        self._cursor = self._first
        self._taken: set[int] = set()
        self._freed: list[int] = []
        # The values on the heap, live or stale. A value is pushed only if it
        # is not there already, which bounds the heap by the size of the range
        # even when one static address is released and re-taken forever.
        self._in_heap: set[int] = set()

    def __repr__(self) -> str:
        extra = f", ip_range={self.ip_range}" if self.ip_range is not None else ""
        return (
            f"<SubnetAllocator {self.subnet}{extra}, gateway={self.gateway},"
            f" {len(self._taken)} allocated>"
        )

    def allocate(self, ip: IPv4Address | None = None) -> IPv4Address:
        """Hand out *ip*, or the lowest free address if *ip* is ``None``.

        See :meth:`cnm.ipam.AddressPool.allocate` for the errors.
        """
        if ip is not None:
            self._take_static(ip)
            return ip
        while self._freed:
            candidate = heapq.heappop(self._freed)
            self._in_heap.discard(candidate)
            if candidate not in self._taken:
                self._taken.add(candidate)
                return IPv4Address(candidate)
        while self._cursor <= self._last:
            candidate = self._cursor
            self._cursor += 1
            if candidate != self._gateway and candidate not in self._taken:
                self._taken.add(candidate)
                return IPv4Address(candidate)
        source = self.ip_range if self.ip_range is not None else self.subnet
        raise ExhaustedError(f"{self._where}: no free address left in {source}")

    def _take_static(self, ip: IPv4Address) -> None:
        if not isinstance(ip, IPv4Address):
            raise InvalidArgumentError(f"{self._where}: address {ip!r} is not an IPv4 address")
        if ip not in self.subnet:
            raise InvalidArgumentError(f"{self._where}: address {ip} is not inside subnet {self.subnet}")
        value = int(ip)
        if value == self._subnet_start:
            raise InvalidArgumentError(f"{self._where}: address {ip} is the network address of subnet {self.subnet}")
        if value == self._broadcast:
            raise InvalidArgumentError(
                f"{self._where}: address {ip} is the broadcast address of subnet {self.subnet}"
            )
        if value == self._gateway:
            raise ConflictError(f"{self._where}: address {ip} is already in use as the gateway")
        if value in self._taken:
            raise ConflictError(f"{self._where}: address {ip} is already in use")
        self._taken.add(value)

    def release(self, ip: IPv4Address) -> None:
        """Give *ip* back; a no-op for an address that is not allocated."""
        if not isinstance(ip, IPv4Address):
            return
        value = int(ip)
        if value not in self._taken:
            return
        self._taken.remove(value)
        # Only addresses the cursor has passed go on the heap; the cursor will
        # find the others by itself.
        if self._first <= value < self._cursor and value not in self._in_heap:
            heapq.heappush(self._freed, value)
            self._in_heap.add(value)

    def in_use(self, ip: IPv4Address) -> bool:
        """Whether *ip* is the gateway or an allocated address."""
        if not isinstance(ip, IPv4Address):
            return False
        value = int(ip)
        return value == self._gateway or value in self._taken

    def allocated(self) -> frozenset[IPv4Address]:
        """The addresses handed out and not released, without the gateway."""
        return frozenset(IPv4Address(value) for value in self._taken)


@attrs.frozen
class DefaultIPAM:
    """The ``"default"`` IPAM driver: Docker's default address pools.

    With no subnet requested, the first of *pools* that overlaps nothing in
    ``in_use`` becomes the network's subnet (:data:`DEFAULT_POOLS` unless
    given, like dockerd's ``--default-address-pool``). Pools are
    :class:`SubnetAllocator` objects; the gateway defaults to the subnet's
    first host address.
    """

    name: ClassVar[str] = "default"
    pools: tuple[IPv4Network, ...] = attrs.field(
        default=DEFAULT_POOLS, converter=tuple, repr=lambda pools: f"<{len(pools)} subnets>"
    )

    @pools.validator
    def _check_pools(self, _attribute: attrs.Attribute[tuple[IPv4Network, ...]], value: tuple[object, ...]) -> None:
        for pool in value:
            if not isinstance(pool, IPv4Network):
                raise InvalidArgumentError(f"default IPAM: pool {pool!r} is not an IPv4Network")

    def request_pool(
        self,
        *,
        network: str,
        subnet: IPv4Network | None,
        ip_range: IPv4Network | None,
        gateway: IPv4Address | None,
        in_use: Sequence[IPv4Network],
    ) -> SubnetAllocator:
        """Return a new pool for *network*; see :meth:`cnm.ipam.IPAMDriver.request_pool`."""
        # IPv6 routes on the host cannot overlap an IPv4 subnet (and
        # ``overlaps`` across versions would be meaningless), so drop them.
        taken = [net for net in in_use if isinstance(net, IPv4Network)]
        if subnet is None:
            if ip_range is not None:
                raise InvalidArgumentError(f"network {network!r}: ip_range {ip_range} is given without a subnet")
            if gateway is not None:
                raise InvalidArgumentError(f"network {network!r}: gateway {gateway} is given without a subnet")
            subnet = self._choose(network, taken)
        # Building the pool first validates the subnet's shape, so that a
        # malformed request is reported as such rather than as an overlap.
        pool = SubnetAllocator(subnet, ip_range=ip_range, gateway=gateway, network=network)
        clash = _first_overlap(subnet, taken)
        if clash is not None:
            raise ConflictError(f"network {network!r}: subnet {subnet} overlaps {clash}, which is already in use")
        return pool

    def _choose(self, network: str, taken: Sequence[IPv4Network]) -> IPv4Network:
        for candidate in self.pools:
            if _first_overlap(candidate, taken) is None:
                return candidate
        raise ExhaustedError(
            f"network {network!r}: no free subnet left in the default address pools"
            f" (all {len(self.pools)} overlap subnets already in use)"
        )


def _first_overlap(subnet: IPv4Network, taken: Iterable[IPv4Network]) -> IPv4Network | None:
    for other in taken:
        if subnet.overlaps(other):
            return other
    return None
