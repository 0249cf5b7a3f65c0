"""IP address management: the contract between cnm and an IPAM driver.

An IPAM driver decides *which addresses a network uses*; it never touches the
kernel. The work is split in two, mirroring the two moments of a network's
life where addresses matter:

1. **When a network is created**, cnm asks the driver for an address pool
   with :meth:`IPAMDriver.request_pool`, once per address family the network
   has (a dual-stack network has an IPv4 pool and an IPv6 pool, as in Docker
   28 and Podman). The driver either validates the subnet the user asked for
   or picks a free one itself, settles the gateway address, and returns an
   :class:`AddressPool`. The pool belongs to that network alone.

2. **When an endpoint is created** on the network, cnm asks the network's pool
   for an address with :meth:`AddressPool.allocate`, and gives it back with
   :meth:`AddressPool.release` when the endpoint is deleted (or when the
   endpoint's creation is rolled back).

Deleting a network simply drops its pool. There is no "release pool" call:
the driver is *stateless* about pools. It does not remember which subnets it
handed out; instead, every call to :meth:`~IPAMDriver.request_pool` receives
``in_use``, the subnets that are already taken on the host (the subnets of
the other networks and the routes the host already has). This keeps the only
record of "which subnets are taken" in one place, the host, so a pool can
never be leaked by a driver that was not told a network went away.

The lifecycle, as cnm drives it::

    driver = ipam_driver("default")
    pool4 = driver.request_pool(network="web", family=4, subnet=None,  # create_network
                                ip_range=None, gateway=None, in_use=[...], seed=host_id)
    pool6 = driver.request_pool(network="web", family=6, subnet=None,  # (if dual-stack)
                                ip_range=None, gateway=None, in_use=[...], seed=host_id)
    ip = pool4.allocate()             # create_endpoint (or allocate(static_ip))
    pool4.release(ip)                 # endpoint deleted or rolled back
    del pool4, pool6                  # network deleted

Writing a driver
----------------
A third-party driver subclasses nothing: any object with the attributes and
methods of :class:`IPAMDriver` will do, and its pools need only look like
:class:`AddressPool`. Register a zero-argument factory (usually the class) in
the ``cnm.ipam`` entry-point group of your distribution::

    [project.entry-points."cnm.ipam"]
    mine = "my_package.ipam:MyIPAM"

:func:`ipam_driver` finds it the first time the name ``mine`` is asked for.

Rules every driver and pool keeps
---------------------------------
* **Pure.** Neither a driver nor a pool may change the kernel. They answer
  questions about numbers; cnm applies the answers, so rolling back an
  endpoint never has to undo an IPAM side effect other than
  :meth:`~AddressPool.release`.
* **Errors** are cnm's own (see :mod:`cnm.errors`) and name the network and
  the reason, e.g. ``network 'web': address 172.17.0.5 is already in use``:

  - :class:`~cnm.errors.InvalidArgumentError` for a request that can never
    succeed (a prefix too long, a gateway outside the subnet);
  - :class:`~cnm.errors.ConflictError` for one that collides with what exists
    (an overlapping subnet, an address already handed out);
  - :class:`~cnm.errors.ExhaustedError` when nothing free is left.

* **Releasing is idempotent.** Releasing an address the pool does not hold is
  a silent no-op: "already gone" is success, which lets teardown run twice or
  after a partial failure without special cases.
* **Not thread-safe.** cnm serialises calls per host; a driver needs no locks.
* **In memory only.** A pool keeps no files and lives as long as its
  network: nothing outlives the process. cnm does not restore a host's
  networks in a later process today; a host whose process ended without
  closing it is removed by :func:`cnm.gc`, addresses and all. (When cnm
  keeps state, it will rebuild a pool by requesting it again with the
  network's subnet and allocating each endpoint's address with
  ``allocate(ip)``, so a driver that follows this contract needs nothing
  more.)
* **One family per pool.** A pool's subnet, range, gateway and addresses are
  all IPv4 or all IPv6 (``pool.subnet.version``). A value of the other
  family is an :class:`~cnm.errors.InvalidArgumentError` where it is an
  argument to refuse, and "not ours" where it is a question (releasing it
  does nothing; it is not in use).

IPv4 and IPv6 differ in which addresses are never handed out: IPv4 keeps the
subnet's network and broadcast addresses; IPv6 has no broadcast address (the
last address is an ordinary one) and keeps the first, the subnet-router
anycast address (RFC 4291), which no interface may take as its own.

String input from users is turned into :mod:`ipaddress` objects before it
reaches a driver, by :func:`parse_subnet` and :func:`parse_address`, so
drivers never parse text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Protocol, runtime_checkable

from .._checks import describe
from .._ip import Family, IPAddress, IPNetwork, family_name
from .._plugins import Registry
from ..errors import InvalidArgumentError
from .default import DefaultIPAM

__all__ = [
    "AddressPool",
    "IPAMDriver",
    "IPAM_DRIVERS",
    "RESERVED_SUBNETS",
    "RESERVED_SUBNETS_IPV6",
    "ipam_driver",
    "parse_address",
    "parse_subnet",
]


# The attributes below are declared as read-only properties rather than plain
# annotations so that a pool may expose them either as ordinary attributes or
# as properties; a plain annotation would demand that they be writable.
@runtime_checkable
class AddressPool(Protocol):
    """The addresses of one network's subnet, and which of them are handed out.

    A pool is created by :meth:`IPAMDriver.request_pool` and lives exactly as
    long as its network. Its three attributes never change after creation.
    Everything a pool holds is of its subnet's family (see the module
    documentation).
    """

    @property
    def subnet(self) -> IPNetwork:
        """The network's subnet of this family. Every address the pool hands out lies inside it."""
        ...

    @property
    def ip_range(self) -> IPNetwork | None:
        """The part of :attr:`subnet` that automatic allocation draws from.

        ``None`` means the whole subnet. A static request may still name an
        address of the subnet outside this range (as Docker allows), so that
        users can reserve the range for dynamic endpoints and place fixed
        ones elsewhere.
        """
        ...

    @property
    def gateway(self) -> IPAddress:
        """The address the host side of the network uses.

        It is inside :attr:`subnet`, is not its network address (for IPv6
        the subnet-router anycast address) nor its IPv4 broadcast address,
        and is never handed out by :meth:`allocate`.
        """
        ...

    def allocate(self, ip: IPAddress | None = None) -> IPAddress:
        """Hand out an address and return it; it stays in use until released.

        With ``ip=None`` the pool chooses: a free address inside
        :attr:`ip_range` if one was given, else inside :attr:`subnet`. Which
        free address is chosen is the pool's policy (the default pool takes
        the lowest free one, so released addresses are reused first).

        With an ``ip``, exactly that address is handed out, or an error is
        raised. It must be of the pool's family and inside :attr:`subnet` (it
        may lie outside :attr:`ip_range`) and must not be the subnet's network
        address or IPv4 broadcast address
        (:class:`~cnm.errors.InvalidArgumentError`), the gateway or an
        address already in use (:class:`~cnm.errors.ConflictError`).

        Raises :class:`~cnm.errors.ExhaustedError` when ``ip`` is ``None`` and
        no free address is left. A failed call changes nothing.
        """
        ...

    def release(self, ip: IPAddress) -> None:
        """Give *ip* back so that it can be handed out again.

        Releasing an address the pool does not hold (never allocated, released
        already, the gateway, not in the subnet at all, or of the other
        family) does nothing and raises nothing.
        """
        ...

    def in_use(self, ip: IPAddress) -> bool:
        """Whether *ip* cannot be handed out because it is taken.

        True for the gateway and for every allocated address; false for
        anything else, including addresses outside the subnet and addresses
        of the other family.
        """
        ...

    def allocated(self) -> frozenset[IPAddress]:
        """Every address handed out and not yet released (not the gateway)."""
        ...


@runtime_checkable
class IPAMDriver(Protocol):
    """Chooses and validates the address pools of new networks."""

    @property
    def name(self) -> str:
        """The name the driver is registered under, e.g. ``"default"``."""
        ...

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
    ) -> AddressPool:
        """Return a new, empty pool of address *family* for the network called *network*.

        *network* is used only to name the network in error messages.

        *family* is 4 or 6: the pool's subnet, range and gateway are of that
        family. A dual-stack network asks twice, once per family.

        *subnet* is the subnet the user asked for (of *family*), or ``None``
        to let the driver choose one. Either way the resulting subnet must
        not overlap any of *in_use*, the subnets already present on the host
        (of both families: overlap is checked within a family); an explicit
        subnet that does raises :class:`~cnm.errors.ConflictError` naming the
        subnet it overlaps, and a driver with no free subnet left to choose
        raises :class:`~cnm.errors.ExhaustedError`.

        *seed* is stable text identifying the host (the same after a
        restart, different on another host). A driver that invents IPv6
        subnets derives them from it, so that they stay put and differ
        between hosts: the default driver hands out the lowest free /64 of
        the unique local /48 ``fdXX:XXXX:XXXX::/48`` whose 40-bit Global ID
        is a hash of the seed (RFC 4193). For IPv4 it takes Docker's default
        pools, whatever the seed.

        *ip_range* and *gateway* may only be given together with *subnet*,
        and must lie inside it and be of its family; the gateway may not be
        the subnet's network address or IPv4 broadcast address. When
        *gateway* is ``None`` the driver picks one (the default driver takes
        the first address after the network address: ``x.y.z.1`` of a
        ``/24``, ``prefix::1`` of a ``/64``). Invalid combinations raise
        :class:`~cnm.errors.InvalidArgumentError`.

        The driver keeps no record of the pool: requesting the same subnet
        twice succeeds unless the caller lists the first one in *in_use*.
        """
        ...


#: The IPAM drivers by name (zero-argument factories): the built-ins, then the
#: ``cnm.ipam`` entry points, loaded the first time their name is asked for
#: (see :class:`cnm._plugins.Registry`). Applications and tests may
#: :meth:`~cnm._plugins.Registry.register` their own.
IPAM_DRIVERS: Registry[Callable[[], IPAMDriver]] = Registry("IPAM driver", "cnm.ipam", lambda: {"default": DefaultIPAM})


def ipam_driver(name: str) -> IPAMDriver:
    """A new instance of the IPAM driver called *name* (see :data:`IPAM_DRIVERS`).

    Raises :class:`~cnm.errors.NotFoundError` naming the known drivers.
    """
    return IPAM_DRIVERS.lookup(name)()


#: IPv4 address blocks no network may use, with what they are for (RFC 6890).
#: The kernel accepts them on a bridge, but they are not unicast subnets:
#: 0.0.0.0/8 and 127.0.0.0/8 mean "this host" to the kernel and to every
#: program, 224.0.0.0/4 holds group addresses, and 240.0.0.0/4 is reserved
#: (its last address, 255.255.255.255, is the limited broadcast). Link-local
#: 169.254.0.0/16 is not here: it is unicast confined to one link, which a
#: bridge network is, and deployments use it on purpose (Docker even lets a
#: container have link-local addresses of its own, ``--link-local-ip``).
RESERVED_SUBNETS: tuple[tuple[IPv4Network, str], ...] = (
    (IPv4Network("0.0.0.0/8"), "'this network' (RFC 1122)"),
    (IPv4Network("127.0.0.0/8"), "loopback"),
    (IPv4Network("224.0.0.0/4"), "multicast"),
    (IPv4Network("240.0.0.0/4"), "future use and the limited broadcast address"),
)

#: IPv6 address blocks no network may use, with what they are for (RFC 4291,
#: RFC 6890). ``::/128`` is "no address" and ``::1/128`` this host, as their
#: IPv4 counterparts are. ``::ffff:0:0/96`` holds IPv4 addresses written as
#: IPv6 (a socket sees IPv4 traffic as such), never addresses of an IPv6
#: interface. ``ff00::/8`` holds group addresses. Link-local ``fe80::/10`` is
#: refused, unlike IPv4's 169.254.0.0/16: every interface already has its own
#: ``fe80::/64`` address and route, and the kernel never forwards a packet
#: with a link-local source, so neither outbound NAT nor published ports
#: could work for a network there.
RESERVED_SUBNETS_IPV6: tuple[tuple[IPv6Network, str], ...] = (
    (IPv6Network("::/128"), "the unspecified address"),
    (IPv6Network("::1/128"), "loopback"),
    (IPv6Network("::ffff:0:0/96"), "IPv4-mapped addresses"),
    (IPv6Network("fe80::/10"), "link-local addresses, which the kernel does not forward"),
    (IPv6Network("ff00::/8"), "multicast"),
)


def _check_family(where: str, shown: str, version: int, family: Family | IPNetwork | None) -> None:
    """Refuse a value of *version* when *family* asks for the other family.

    *family* is a family (4 or 6) or a subnet whose family the value must
    share; *shown* is the value as given, for the message.
    """
    if family is None:
        return
    if isinstance(family, (IPv4Network, IPv6Network)):
        if version != family.version:
            raise InvalidArgumentError(
                f"{where} {shown} is {family_name(version)} but subnet {family} is {family_name(family.version)}"
            )
    elif version != family:
        raise InvalidArgumentError(f"{where} {shown} is {family_name(version)}, not {family_name(family)}")


def _guess_family(text: str) -> str:
    """The family text that failed to parse was meant to be, for the message."""
    return "IPv6" if ":" in text else "IPv4"


def parse_subnet(
    network_name: str,
    value: str | IPNetwork | None,
    *,
    what: str = "subnet",
    family: Family | IPNetwork | None = None,
) -> IPNetwork | None:
    """Turn user input into an :class:`~ipaddress.IPv4Network` or
    :class:`~ipaddress.IPv6Network`, or ``None`` for ``None``.

    *value* must be written in CIDR form (``"10.0.0.0/24"``, ``"fd00::/64"``)
    with no host bits set. *what* names the argument in messages
    (``"subnet"``, ``"ip_range"``). *family*, when the caller expects one,
    is 4 or 6, or a subnet the value must share a family with (an
    ``ip_range`` with its network's subnet): a value of the other family is
    refused, e.g. ``network 'web': ip_range 'fd00::/80' is IPv6 but subnet
    10.0.0.0/24 is IPv4``.

    Raises :class:`~cnm.errors.InvalidArgumentError` naming *network_name* and
    the bad value, e.g. ``network 'web': subnet '10.0.0.0/33' is not a valid
    IPv4 prefix``. A prefix that overlaps one of :data:`RESERVED_SUBNETS` or
    :data:`RESERVED_SUBNETS_IPV6` is refused too, whether given as text or as
    a network object. Whether the prefix is usable as a subnet (long enough
    for a gateway) is the driver's decision, not this function's.
    """
    if value is None:
        return None
    where = f"network {network_name!r}: {what}"
    if isinstance(value, (IPv4Network, IPv6Network)):
        net: IPNetwork = value
    elif isinstance(value, str):
        net = _parse_prefix(where, value)
    else:
        raise InvalidArgumentError(f"{where} must be a string, an IPv4Network or an IPv6Network, not {describe(value)}")
    _check_family(where, repr(str(value)), net.version, family)
    reserved_blocks: tuple[tuple[IPNetwork, str], ...] = RESERVED_SUBNETS if net.version == 4 else RESERVED_SUBNETS_IPV6
    for reserved, purpose in reserved_blocks:
        if net.overlaps(reserved):
            how = "is inside" if net.subnet_of(reserved) else "overlaps"  # type: ignore[arg-type]
            raise InvalidArgumentError(f"{where} {net} {how} {reserved}, which is reserved for {purpose}")
    return net


def _parse_prefix(where: str, value: str) -> IPNetwork:
    address, slash, _prefix = value.partition("/")
    if not slash:
        raise InvalidArgumentError(f"{where} {value!r} has no prefix length (write it as {value}/N)")
    if "%" in value:
        raise InvalidArgumentError(f"{where} {value!r} has a zone index, which a subnet cannot have")
    try:
        net = ip_network(value, strict=False)
        first = ip_address(address)
    except ValueError:
        raise InvalidArgumentError(f"{where} {value!r} is not a valid {_guess_family(value)} prefix") from None
    if first != net.network_address:
        raise InvalidArgumentError(f"{where} {value!r} has host bits set (did you mean {net}?)")
    return net


def parse_address(
    name: str,
    what: str,
    value: str | IPAddress | None,
    *,
    kind: str = "network",
    family: Family | IPNetwork | None = None,
) -> IPAddress | None:
    """Turn user input into an :class:`~ipaddress.IPv4Address` or
    :class:`~ipaddress.IPv6Address`, or ``None`` for ``None``.

    *what* names the argument in messages (``"gateway"``, ``"address"``).
    *family*, when the caller expects one, is 4 or 6, or the subnet the
    address must share a family with, e.g. ``network 'web': gateway
    'fd00::1' is IPv6 but subnet 10.0.0.0/24 is IPv4``. Raises
    :class:`~cnm.errors.InvalidArgumentError` naming the *kind* of object (a
    network unless told), its *name* and the bad value, e.g. ``network
    'web': gateway '10.0.0.300' is not a valid IPv4 address``. A zone index
    (``fe80::1%eth0``) is refused: the address of a network is not tied to
    one interface.
    """
    if value is None:
        return None
    where = f"{kind} {name!r}: {what}"
    if isinstance(value, (IPv4Address, IPv6Address)):
        address: IPAddress = value
    elif isinstance(value, str):
        if "/" in value:
            raise InvalidArgumentError(
                f"{where} {value!r} is not a valid {_guess_family(value)} address (give it without a prefix length)"
            )
        try:
            address = ip_address(value)
        except ValueError:
            raise InvalidArgumentError(f"{where} {value!r} is not a valid {_guess_family(value)} address") from None
    else:
        raise InvalidArgumentError(
            f"{where} must be a string, an IPv4Address or an IPv6Address, not {describe(value)}"
        )
    if isinstance(address, IPv6Address) and address.scope_id is not None:
        raise InvalidArgumentError(f"{where} {str(value)!r} has a zone index, which a network address cannot have")
    _check_family(where, repr(str(value)), address.version, family)
    return address
