"""IP address management: the contract between cnm and an IPAM driver.

An IPAM driver decides *which addresses a network uses*; it never touches the
kernel. The work is split in two, mirroring the two moments of a network's
life where addresses matter:

1. **When a network is created**, cnm asks the driver for an address pool with
   :meth:`IPAMDriver.request_pool`. The driver either validates the subnet the
   user asked for or picks a free one itself, settles the gateway address, and
   returns an :class:`AddressPool`. The pool belongs to that network alone.

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
    pool = driver.request_pool(network="web", subnet=None, ip_range=None,
                               gateway=None, in_use=[...])   # create_network
    ip = pool.allocate()              # create_endpoint (or allocate(static_ip))
    pool.release(ip)                  # endpoint deleted or rolled back
    del pool                          # network deleted

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
* **In memory only.** A pool keeps no files. After a restart, cnm rebuilds a
  pool by requesting it again with the network's subnet and re-allocating
  each endpoint's address with ``allocate(ip)``.

Only IPv4 is covered for now. String input from users is turned into
:mod:`ipaddress` objects before it reaches a driver, by :func:`parse_subnet`
and :func:`parse_address`, so drivers never parse text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Protocol, runtime_checkable

from .._checks import describe
from .._plugins import Registry
from ..errors import InvalidArgumentError
from .default import DefaultIPAM

__all__ = [
    "AddressPool",
    "IPAMDriver",
    "IPAM_DRIVERS",
    "RESERVED_SUBNETS",
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
    """

    @property
    def subnet(self) -> IPv4Network:
        """The network's subnet. Every address the pool hands out lies inside it."""
        ...

    @property
    def ip_range(self) -> IPv4Network | None:
        """The part of :attr:`subnet` that automatic allocation draws from.

        ``None`` means the whole subnet. A static request may still name an
        address of the subnet outside this range (as Docker allows), so that
        users can reserve the range for dynamic endpoints and place fixed
        ones elsewhere.
        """
        ...

    @property
    def gateway(self) -> IPv4Address:
        """The address the host side of the network uses.

        It is inside :attr:`subnet`, is neither its network nor its broadcast
        address, and is never handed out by :meth:`allocate`.
        """
        ...

    def allocate(self, ip: IPv4Address | None = None) -> IPv4Address:
        """Hand out an address and return it; it stays in use until released.

        With ``ip=None`` the pool chooses: a free address inside
        :attr:`ip_range` if one was given, else inside :attr:`subnet`. Which
        free address is chosen is the pool's policy (the default pool takes
        the lowest free one, so released addresses are reused first).

        With an ``ip``, exactly that address is handed out, or an error is
        raised. It must be inside :attr:`subnet` (it may lie outside
        :attr:`ip_range`) and must not be the subnet's network or broadcast
        address (:class:`~cnm.errors.InvalidArgumentError`), the gateway or an
        address already in use (:class:`~cnm.errors.ConflictError`).

        Raises :class:`~cnm.errors.ExhaustedError` when ``ip`` is ``None`` and
        no free address is left. A failed call changes nothing.
        """
        ...

    def release(self, ip: IPv4Address) -> None:
        """Give *ip* back so that it can be handed out again.

        Releasing an address the pool does not hold (never allocated, released
        already, the gateway, or not in the subnet at all) does nothing and
        raises nothing.
        """
        ...

    def in_use(self, ip: IPv4Address) -> bool:
        """Whether *ip* cannot be handed out because it is taken.

        True for the gateway and for every allocated address; false for
        anything else, including addresses outside the subnet.
        """
        ...

    def allocated(self) -> frozenset[IPv4Address]:
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
        subnet: IPv4Network | None,
        ip_range: IPv4Network | None,
        gateway: IPv4Address | None,
        in_use: Sequence[IPv4Network],
    ) -> AddressPool:
        """Return a new, empty pool for the network called *network*.

        *network* is used only to name the network in error messages.

        *subnet* is the subnet the user asked for, or ``None`` to let the
        driver choose one. Either way the resulting subnet must not overlap
        any of *in_use*, the subnets already present on the host; an
        explicit subnet that does raises :class:`~cnm.errors.ConflictError`
        naming the subnet it overlaps, and a driver with no free subnet left
        to choose raises :class:`~cnm.errors.ExhaustedError`.

        *ip_range* and *gateway* may only be given together with *subnet*,
        and must lie inside it; the gateway may not be the subnet's network
        or broadcast address. When *gateway* is ``None`` the driver picks one
        (the default driver takes the first host address, ``x.y.z.1`` of a
        ``/24``). Invalid combinations raise
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


#: Address blocks no network may use, with what they are for (RFC 6890).
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


def _ipv4_text(where: str, value: object, ipv6_type: type, ipv4_type_name: str) -> str:
    """The checks :func:`parse_subnet` and :func:`parse_address` share: *value*
    must be a string and not IPv6; returns it. *where* ("network 'x': what")
    starts the messages."""
    if isinstance(value, ipv6_type) or (isinstance(value, str) and ":" in value):
        raise InvalidArgumentError(f"{where} {str(value)!r} is IPv6, which is not supported yet")
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{where} must be a string or an {ipv4_type_name}, not {describe(value)}")
    return value


def parse_subnet(
    network_name: str, value: str | IPv4Network | None, *, what: str = "subnet"
) -> IPv4Network | None:
    """Turn user input into an :class:`~ipaddress.IPv4Network`, or ``None`` for ``None``.

    *value* must be written in CIDR form (``"10.0.0.0/24"``) with no host bits
    set. *what* names the argument in messages (``"subnet"``, ``"ip_range"``).
    Raises :class:`~cnm.errors.InvalidArgumentError` naming *network_name* and
    the bad value, e.g. ``network 'web': subnet '10.0.0.0/33' is not a valid
    IPv4 prefix``. A prefix that overlaps one of :data:`RESERVED_SUBNETS` is
    refused too, whether given as text or as an ``IPv4Network``. Whether the
    prefix is usable as a subnet (long enough for a gateway) is the driver's
    decision, not this function's.
    """
    if value is None:
        return None
    where = f"network {network_name!r}: {what}"
    net = value if isinstance(value, IPv4Network) else _parse_prefix(where, value)
    for reserved, purpose in RESERVED_SUBNETS:
        if net.overlaps(reserved):
            how = "is inside" if net.subnet_of(reserved) else "overlaps"
            raise InvalidArgumentError(f"{where} {net} {how} {reserved}, which is reserved for {purpose}")
    return net


def _parse_prefix(where: str, value: object) -> IPv4Network:
    value = _ipv4_text(where, value, IPv6Network, "IPv4Network")
    address, slash, _prefix = value.partition("/")
    if not slash:
        raise InvalidArgumentError(f"{where} {value!r} has no prefix length (write it as {value}/N)")
    try:
        net = IPv4Network(value, strict=False)
        first = IPv4Address(address)
    except ValueError:
        raise InvalidArgumentError(f"{where} {value!r} is not a valid IPv4 prefix") from None
    if first != net.network_address:
        raise InvalidArgumentError(f"{where} {value!r} has host bits set (did you mean {net}?)")
    return net


def parse_address(
    name: str, what: str, value: str | IPv4Address | None, *, kind: str = "network"
) -> IPv4Address | None:
    """Turn user input into an :class:`~ipaddress.IPv4Address`, or ``None`` for ``None``.

    *what* names the argument in messages (``"gateway"``, ``"address"``).
    Raises :class:`~cnm.errors.InvalidArgumentError` naming the *kind* of
    object (a network unless told), its *name* and the bad value, e.g.
    ``network 'web': gateway '10.0.0.300' is not a valid IPv4 address``.
    """
    if value is None or isinstance(value, IPv4Address):
        return value
    where = f"{kind} {name!r}: {what}"
    value = _ipv4_text(where, value, IPv6Address, "IPv4Address")
    if "/" in value:
        raise InvalidArgumentError(f"{where} {value!r} is not a valid IPv4 address (give it without a prefix length)")
    try:
        return IPv4Address(value)
    except ValueError:
        raise InvalidArgumentError(f"{where} {value!r} is not a valid IPv4 address") from None
