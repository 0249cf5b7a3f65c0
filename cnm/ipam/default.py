"""The built-in IPAM driver, ``"default"``, and its address allocator.

:class:`DefaultIPAM` chooses subnets the way Docker's default address pools
do (IPv4) and the way RFC 4193 suggests (IPv6: a /64 of a unique local /48),
and :class:`SubnetAllocator` hands out the addresses of one subnet of either
family, lowest free first. Both are pure: nothing here touches the kernel or
the disk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import ClassVar, Final

import attrs

from .._ip import FAMILIES, Family, IPAddress, IPNetwork, family_name
from .._lowest_free import LowestFree
from ..errors import ConflictError, ExhaustedError, InvalidArgumentError

__all__ = ["DEFAULT_POOLS", "MAX_PREFIX", "DefaultIPAM", "SubnetAllocator", "ula_prefix"]

#: Docker's default address pools, in the order they are tried: the fifteen
#: /16s from 172.17.0.0/16 to 172.31.0.0/16 (172.16.0.0/16 is left out, as
#: Docker does), then 192.168.0.0/16 cut into sixteen /20s.
DEFAULT_POOLS: tuple[IPv4Network, ...] = (
    *(IPv4Network(f"172.{second}.0.0/16") for second in range(17, 32)),
    *IPv4Network("192.168.0.0/16").subnets(new_prefix=20),
)

#: The longest prefix a subnet may have, per family: room for a gateway and
#: one address besides the addresses never handed out. An IPv4 /30 has two
#: host addresses (its network and broadcast addresses are not); an IPv6
#: /126 has three, its first address being the subnet-router anycast address
#: (RFC 4291), which no interface may take as its own; a /127 would leave the
#: gateway alone. (RFC 6164 drops the anycast address on /127 point-to-point
#: links, which a network of sandboxes is not.)
MAX_PREFIX: Final[Mapping[Family, int]] = {4: 30, 6: 126}

#: IPv6 subnets chosen by the driver: /64s (the length SLAAC and every
#: IPv6 host expect) of the host's unique local /48 (:func:`ula_prefix`).
_ULA_SUBNET_PREFIX = 64


def ula_prefix(seed: str) -> IPv6Network:
    """The unique local /48 of the host identified by *seed*: ``fdXX:XXXX:XXXX::/48``.

    RFC 4193 asks for a 40-bit Global ID drawn at random, so that two sites
    that ever meet are unlikely to clash, and suggests hashing something
    unique to the site. Here that is *seed*: the first 40 bits of its
    SHA-256. The same seed always gives the same prefix, so a host picks the
    same IPv6 subnets in every run; different hosts get different prefixes.
    """
    global_id = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:5], "big")
    return IPv6Network(((0xFD << 120) | (global_id << 80), 48))


class SubnetAllocator:
    """An :class:`~cnm.ipam.AddressPool` over one IPv4 or IPv6 subnet.

    The pool is of its subnet's family: its gateway and range are of that
    family, it hands out addresses of that family only, and an address of the
    other family is refused (:meth:`allocate`) or ignored (:meth:`release`,
    :meth:`in_use`).

    Automatic allocation hands out the lowest free address of :attr:`ip_range`
    (or of the subnet), so a released address is the next one handed out.
    Every operation is O(log n) in the number of addresses handed out so far,
    and memory grows with that number, not with the size of the subnet: an
    IPv6 /64 (2**64 addresses) costs no more to create than an IPv4 /24.

    Never handed out: the network address (in IPv6 the subnet-router anycast
    address), the IPv4 broadcast address, and the gateway. IPv6 has no
    broadcast address, so the last address of an IPv6 subnet is an ordinary
    one.

    *network* names the owning network in error messages.
    """

    __slots__ = ("_book", "_gateway", "_last_usable", "_network_address", "_where", "gateway", "ip_range", "subnet")

    # Addresses are kept as the ints of one LowestFree book over the
    # automatic range. The gateway and static addresses outside the range
    # are taken in the same book, which records them without ever handing
    # them out, so "is it taken" has one answer.

    def __init__(
        self,
        subnet: IPNetwork,
        *,
        ip_range: IPNetwork | None = None,
        gateway: IPAddress | None = None,
        network: str | None = None,
    ) -> None:
        self._where = f"network {network!r}" if network is not None else f"subnet {subnet}"
        if not isinstance(subnet, (IPv4Network, IPv6Network)):
            raise InvalidArgumentError(f"{self._where}: subnet {subnet!r} is not an IPv4 or IPv6 network")
        family: Family = 4 if subnet.version == 4 else 6
        if subnet.prefixlen > MAX_PREFIX[family]:
            raise InvalidArgumentError(
                f"{self._where}: subnet {subnet} is too small: the prefix must be"
                f" /{MAX_PREFIX[family]} or shorter to leave room for a gateway and one address"
            )
        if ip_range is not None:
            if not isinstance(ip_range, (IPv4Network, IPv6Network)):
                raise InvalidArgumentError(f"{self._where}: ip_range {ip_range!r} is not an IPv4 or IPv6 network")
            self._check_family("ip_range", ip_range, subnet)
            if not ip_range.subnet_of(subnet):  # type: ignore[arg-type]  # same family, checked above
                raise InvalidArgumentError(f"{self._where}: ip_range {ip_range} is not inside subnet {subnet}")
        network_address = int(subnet.network_address)
        # IPv6 has no broadcast address: its last address is usable.
        last_usable = int(subnet.broadcast_address) - (family == 4)
        if gateway is None:
            gateway = subnet.network_address + 1
        elif not isinstance(gateway, (IPv4Address, IPv6Address)):
            raise InvalidArgumentError(f"{self._where}: gateway {gateway!r} is not an IPv4 or IPv6 address")
        else:
            self._check_family("gateway", gateway, subnet)
            if gateway not in subnet:
                raise InvalidArgumentError(f"{self._where}: gateway {gateway} is not inside subnet {subnet}")
            if int(gateway) == network_address:
                raise InvalidArgumentError(f"{self._where}: gateway {gateway} is {_network_address_name(subnet)}")
            if int(gateway) > last_usable:
                raise InvalidArgumentError(
                    f"{self._where}: gateway {gateway} is the broadcast address of subnet {subnet}"
                )

        self.subnet = subnet
        self.ip_range = ip_range
        self.gateway = gateway
        self._network_address = network_address
        self._last_usable = last_usable
        self._gateway = int(gateway)
        auto = ip_range if ip_range is not None else subnet
        # Clipped so that a range covering the subnet's edges (or equal to the
        # subnet) never yields its network or broadcast address.
        first = max(int(auto.network_address), network_address + 1)
        last = min(int(auto.broadcast_address), last_usable)
        if last - first + 1 - (first <= self._gateway <= last) < 1:
            # Only addresses never handed out: every automatic allocation
            # would fail, which is better said now.
            never = "network and broadcast addresses" if family == 4 else "subnet-router anycast address"
            raise InvalidArgumentError(
                f"{self._where}: ip_range {ip_range} leaves no address to hand out in subnet {subnet}"
                f" (the {never} and the gateway {gateway} are never handed out)"
            )
        self._book = LowestFree(first, last)
        self._book.take(self._gateway)

    def __repr__(self) -> str:
        extra = f", ip_range={self.ip_range}" if self.ip_range is not None else ""
        return (
            f"<SubnetAllocator {self.subnet}{extra}, gateway={self.gateway},"
            f" {len(self._book) - 1} allocated>"
        )

    def _check_family(self, what: str, value: IPNetwork | IPAddress, subnet: IPNetwork) -> None:
        if value.version != subnet.version:
            raise InvalidArgumentError(
                f"{self._where}: {what} {value} is {family_name(value.version)}"
                f" but subnet {subnet} is {family_name(subnet.version)}"
            )

    def _address(self, value: int) -> IPAddress:
        return IPv4Address(value) if self.subnet.version == 4 else IPv6Address(value)

    def _ours(self, ip: object) -> bool:
        """Whether *ip* is an address of the pool's family (an int of the other would alias)."""
        return isinstance(ip, IPv4Address if self.subnet.version == 4 else IPv6Address)

    def allocate(self, ip: IPAddress | None = None) -> IPAddress:
        """Hand out *ip*, or the lowest free address if *ip* is ``None``.

        See :meth:`cnm.ipam.AddressPool.allocate` for the errors.
        """
        if ip is not None:
            self._take_static(ip)
            return ip
        value = self._book.take_lowest()
        if value is None:
            source = self.ip_range if self.ip_range is not None else self.subnet
            raise ExhaustedError(f"{self._where}: no free address left in {source}")
        return self._address(value)

    def _take_static(self, ip: IPAddress) -> None:
        if not isinstance(ip, (IPv4Address, IPv6Address)):
            raise InvalidArgumentError(f"{self._where}: address {ip!r} is not an IPv4 or IPv6 address")
        self._check_family("address", ip, self.subnet)
        if ip not in self.subnet:
            raise InvalidArgumentError(f"{self._where}: address {ip} is not inside subnet {self.subnet}")
        value = int(ip)
        if value == self._network_address:
            raise InvalidArgumentError(f"{self._where}: address {ip} is {_network_address_name(self.subnet)}")
        if value > self._last_usable:
            raise InvalidArgumentError(
                f"{self._where}: address {ip} is the broadcast address of subnet {self.subnet}"
            )
        if value == self._gateway:
            raise ConflictError(f"{self._where}: address {ip} is already in use as the gateway")
        if not self._book.take(value):
            raise ConflictError(f"{self._where}: address {ip} is already in use")

    def release(self, ip: IPAddress) -> None:
        """Give *ip* back; a no-op for an address that is not allocated."""
        if not self._ours(ip) or int(ip) == self._gateway:
            return
        self._book.release(int(ip))

    def in_use(self, ip: IPAddress) -> bool:
        """Whether *ip* is the gateway or an allocated address."""
        return self._ours(ip) and int(ip) in self._book

    def allocated(self) -> frozenset[IPAddress]:
        """The addresses handed out and not released, without the gateway."""
        return frozenset(self._address(value) for value in self._book.taken() if value != self._gateway)


def _network_address_name(subnet: IPNetwork) -> str:
    if subnet.version == 4:
        return f"the network address of subnet {subnet}"
    return f"the subnet-router anycast address of subnet {subnet}"


@attrs.frozen
class DefaultIPAM:
    """The ``"default"`` IPAM driver: Docker's default address pools, and ULA /64s.

    With no subnet requested, an IPv4 network gets the first of *pools* that
    overlaps nothing in ``in_use`` (:data:`DEFAULT_POOLS` unless given, like
    dockerd's ``--default-address-pool``), and an IPv6 network the lowest
    /64 of the host's unique local /48 (:func:`ula_prefix` of the request's
    *seed*) that overlaps nothing in ``in_use``. Pools are
    :class:`SubnetAllocator` objects; the gateway defaults to the subnet's
    first address after the network address (``x.y.z.1``, ``prefix::1``).
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
        family: Family,
        subnet: IPNetwork | None,
        ip_range: IPNetwork | None,
        gateway: IPAddress | None,
        in_use: Sequence[IPNetwork],
        seed: str,
    ) -> SubnetAllocator:
        """Return a new pool for *network*; see :meth:`cnm.ipam.IPAMDriver.request_pool`."""
        where = f"network {network!r}"
        if isinstance(family, bool) or family not in FAMILIES:
            raise InvalidArgumentError(f"{where}: address family {family!r} is not 4 or 6")
        if not isinstance(seed, str):
            raise InvalidArgumentError(f"{where}: the IPAM seed must be a string, not {type(seed).__name__}")
        # Subnets of the other family cannot overlap (``overlaps`` across
        # versions would be meaningless), so only this family's count.
        taken = [net for net in in_use if isinstance(net, (IPv4Network, IPv6Network)) and net.version == family]
        if subnet is None:
            if ip_range is not None:
                raise InvalidArgumentError(f"{where}: ip_range {ip_range} is given without a subnet")
            if gateway is not None:
                raise InvalidArgumentError(f"{where}: gateway {gateway} is given without a subnet")
            subnet = self._choose(network, taken) if family == 4 else _choose_ula(network, seed, taken)
        elif isinstance(subnet, (IPv4Network, IPv6Network)) and subnet.version != family:
            raise InvalidArgumentError(
                f"{where}: subnet {subnet} is {family_name(subnet.version)}, but an {family_name(family)} pool was asked for"
            )
        # Building the pool first validates the subnet's shape, so that a
        # malformed request is reported as such rather than as an overlap.
        pool = SubnetAllocator(subnet, ip_range=ip_range, gateway=gateway, network=network)
        clash = _first_overlap(subnet, taken)
        if clash is not None:
            raise ConflictError(f"{where}: subnet {subnet} overlaps {clash}, which is already in use")
        return pool

    def _choose(self, network: str, taken: Sequence[IPNetwork]) -> IPv4Network:
        for candidate in self.pools:
            if _first_overlap(candidate, taken) is None:
                return candidate
        raise ExhaustedError(
            f"network {network!r}: no free subnet left in the default address pools"
            f" (all {len(self.pools)} overlap subnets already in use)"
        )


def _choose_ula(network: str, seed: str, taken: Sequence[IPNetwork]) -> IPv6Network:
    """The lowest /64 of the seed's ULA /48 that overlaps none of *taken* (IPv6)."""
    prefix = ula_prefix(seed)
    shift = 128 - _ULA_SUBNET_PREFIX
    base = int(prefix.network_address) >> shift
    count = 1 << (_ULA_SUBNET_PREFIX - prefix.prefixlen)
    # The /64 indexes each taken block covers, as (first, last) intervals:
    # sorted, the lowest free index is the first gap, without looking at
    # each of the 65536 candidates.
    covered = []
    for net in taken:
        if not net.overlaps(prefix):
            continue
        first = max((int(net.network_address) >> shift) - base, 0)
        last = min((int(net.broadcast_address) >> shift) - base, count - 1)
        covered.append((first, last))
    index = 0
    for first, last in sorted(covered):
        if first > index:
            break
        index = max(index, last + 1)
    if index >= count:
        raise ExhaustedError(
            f"network {network!r}: no free /64 left in this host's unique local prefix {prefix}"
            " (every one overlaps a subnet already in use)"
        )
    return IPv6Network(((base + index) << shift, _ULA_SUBNET_PREFIX))


def _first_overlap(subnet: IPNetwork, taken: Iterable[IPNetwork]) -> IPNetwork | None:
    for other in taken:
        if subnet.version == other.version and subnet.overlaps(other):
            return other
    return None
