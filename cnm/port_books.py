"""The host-port books: which host ports are published, and by whom.

:class:`HostPortAllocator` reserves the host ports of an endpoint's
mappings (picking ephemeral ones where none is given), per address family,
all or nothing, and gives them back. Pure: the firewall makes the kernel
side (see :mod:`cnm.firewall`).

:class:`HostSockets` is what the host's own sockets hold (listed by
:mod:`cnm.sock_diag`); given one, a reservation refuses a fixed host port a
host socket holds and never picks such a port as an ephemeral one.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from ipaddress import IPv6Address

from ._ip import FAMILIES, Family, IPAddress, family_name
from ._lowest_free import LowestFree
from ._checks import describe
from ._transport import DEFAULT_EPHEMERAL_PORTS, PROTOCOLS, check_port
from .errors import ConflictError, ExhaustedError, InvalidArgumentError
from .ports import PortMapping, PublishedPort, host_text
from .sock_diag import HostSocket

__all__ = ["HostPortAllocator", "HostSockets"]


def _describe(published: PublishedPort) -> str:
    # An IPv4 wildcard is left out, as messages said before IPv6 came.
    where = "" if published.host_ip is None and published.family == 4 else f"{host_text(published)}:"
    return f"{where}{published.host_port}/{published.protocol}"


def _check_families(owner: str, families: object) -> tuple[Family, ...]:
    if families in _FAMILY_SETS:  # what cnm itself passes, on every join: no more to check
        return families
    if isinstance(families, (str, bytes, Mapping)) or not isinstance(families, Iterable):
        raise InvalidArgumentError(f"endpoint {owner!r}: families must be a collection of 4 and/or 6, not {describe(families)}")
    chosen = list(families)
    if not chosen or any(isinstance(f, bool) or f not in FAMILIES for f in chosen):
        raise InvalidArgumentError(f"endpoint {owner!r}: families {chosen!r} must be 4, 6 or both")
    return tuple(f for f in FAMILIES if f in chosen)


_FAMILY_SETS: tuple[tuple[Family, ...], ...] = ((4,), (6,), (4, 6))


class HostSockets:
    """The ports the host's own sockets hold, as ``bind`` would see them.

    A publication clashes with a host socket of its protocol and port when
    the socket takes traffic of the publication's family (an IPv6 socket on
    ``::`` without ``IPV6_V6ONLY`` takes IPv4 too; one on an IPv4-mapped
    address takes only IPv4) and their addresses overlap: either is every
    address of the family, or both are the same one. A socket on one
    specific address and a publication on another do not clash.
    """

    __slots__ = ("_by_port", "_ports")

    def __init__(self, sockets: Iterable[HostSocket]) -> None:
        self._by_port: dict[tuple[str, int], list[HostSocket]] = {}
        for held in sockets:
            self._by_port.setdefault((held.protocol, held.port), []).append(held)
        self._ports = {protocol: {port for p, port in self._by_port if p == protocol} for protocol in PROTOCOLS}

    def __repr__(self) -> str:
        return f"<HostSockets {sum(map(len, self._by_port.values()))} holding ports>"

    def holder(self, wanted: PublishedPort) -> HostSocket | None:
        """The host socket *wanted* clashes with, if any."""
        for held in self._by_port.get((wanted.protocol, wanted.host_port), ()):
            family, address = held.family, held.address
            if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
                family, address = 4, address.ipv4_mapped
            every = address.is_unspecified
            if family != wanted.family and not (every and family == 6 and not held.v6only):
                continue
            if every or wanted.host_ip is None or wanted.host_ip == address:
                return held
        return None

    def holds(self, protocol: str, port: int) -> bool:
        """Whether any host socket of *protocol* holds *port*, on any address."""
        return port in self._ports[protocol]

# (protocol, host port, family) -> host address (None: every address) -> (publication, owner)
_Held = dict[tuple[str, int, Family], dict[IPAddress | None, tuple[PublishedPort, str]]]


class HostPortAllocator:
    """Which host ports of one host are published, and by which endpoint.

    Endpoints are named by *owner* strings (the endpoint's name); messages
    read ``endpoint 'web1': host port 8080/tcp is already published by
    endpoint 'web0'``.

    Ephemeral ports are drawn from *ephemeral_ports*, a ``(first, last)``
    pair with both ends included (Docker's 49153-60999 by default), lowest
    free first, so a released port is the next one handed out. A port counts
    as free for an ephemeral request only if no address of either family
    holds it for that protocol: so an ephemeral port is never shared between
    host addresses, and one free for a dual-stack mapping is free on both
    families at once.

    Not thread-safe; the host serialises calls.
    """

    __slots__ = ("_books", "_first", "_held", "_last")

    def __init__(self, ephemeral_ports: tuple[int, int] = DEFAULT_EPHEMERAL_PORTS) -> None:
        first, last = ephemeral_ports
        check_port("first ephemeral port", first)
        check_port("last ephemeral port", last)
        if first > last:
            raise InvalidArgumentError(f"ephemeral port range {first}-{last} ends before it starts")
        self._first = first
        self._last = last
        self._held: _Held = {}
        # Per protocol, every port held on any address of any family, fixed
        # ones outside the ephemeral range included (the book records those
        # without ever handing them out).
        self._books = {protocol: LowestFree(first, last) for protocol in PROTOCOLS}

    def __repr__(self) -> str:
        count = sum(len(holders) for holders in self._held.values())
        return f"<HostPortAllocator ephemeral {self._first}-{self._last}, {count} published>"

    @property
    def ephemeral_ports(self) -> tuple[int, int]:
        """The range ephemeral ports are drawn from, both ends included."""
        return (self._first, self._last)

    def reserve(
        self,
        owner: str,
        mappings: Sequence[PortMapping],
        *,
        families: Iterable[int],
        sockets: HostSockets | None = None,
    ) -> list[PublishedPort]:
        """Publish every one of *mappings* for *owner*, or none of them.

        *families* are the address families the endpoint has (``(4,)``,
        ``(6,)`` or ``(4, 6)``). A mapping without a host address is published
        on each of them with the same host port; one with a host address only
        on that address's family, which the endpoint must have
        (:class:`~cnm.errors.InvalidArgumentError` otherwise).

        Returns the :class:`PublishedPort` objects in the order of
        *mappings*, a mapping published on both families giving its IPv4
        publication then its IPv6 one. Raises
        :class:`~cnm.errors.ConflictError` if a fixed host port clashes with
        one already published or with another mapping of the same request,
        or with one of the host's own *sockets*, and
        :class:`~cnm.errors.ExhaustedError` if no ephemeral port is left (an
        ephemeral port is never one a host socket holds). After an error
        nothing from this call stays reserved.
        """
        chosen = _check_families(owner, families)
        for mapping in mappings:
            if not isinstance(mapping, PortMapping):
                raise InvalidArgumentError(f"endpoint {owner!r}: {mapping!r} is not a PortMapping")
            if mapping.host_ip is not None and mapping.host_ip.version not in chosen:
                raise InvalidArgumentError(
                    f"endpoint {owner!r}: port {mapping} is published on {family_name(mapping.host_ip.version)}"
                    f" host address {mapping.host_ip}, but the endpoint has no {family_name(mapping.host_ip.version)}"
                    " address"
                )
        # Fixed ports are taken before ephemeral ones are chosen, so that an
        # ephemeral pick never lands on a port this same request names later.
        order = sorted(range(len(mappings)), key=lambda index: mappings[index].host_port is None)
        results: dict[int, list[PublishedPort]] = {}
        done: set[PublishedPort] = set()
        picked: list[tuple[str, int]] = []
        try:
            for index in order:
                mapping = mappings[index]
                on = chosen if mapping.host_ip is None else (4 if mapping.host_ip.version == 4 else 6,)
                if mapping.host_port is None:
                    port = self._pick(owner, mapping.protocol, sockets, picked)
                else:
                    port = mapping.host_port
                publications = [
                    PublishedPort(mapping.protocol, mapping.host_ip, port, mapping.container_port, family)
                    for family in on
                ]
                for published in publications:
                    self._check_free(owner, published, done)
                    self._check_host(owner, published, sockets)
                for published in publications:
                    self._hold(published, owner)
                    done.add(published)
                results[index] = publications
        except BaseException:
            self.release(done)
            # An ephemeral pick interrupted before it was held is in the book
            # only; release() finds holders, not picks.
            for protocol, port in picked:
                self._forget_if_unheld(protocol, port)
            raise
        for protocol, port in picked:  # the ports skipped for host sockets
            self._forget_if_unheld(protocol, port)
        return [published for index in range(len(mappings)) for published in results[index]]

    def release(self, published: Iterable[PublishedPort]) -> None:
        """Unpublish each of *published*; ports not published are skipped silently.

        A port is released only if exactly that publication holds it, so a
        stale :class:`PublishedPort` cannot free a port that has since been
        published again with a different container port.
        """
        for item in list(published):
            key = (item.protocol, item.host_port, item.family)
            holders = self._held.get(key)
            if holders is None:
                continue
            entry = holders.get(item.host_ip)
            if entry is None or entry[0] != item:
                continue
            del holders[item.host_ip]
            if not holders:
                del self._held[key]
                self._forget_if_unheld(item.protocol, item.host_port)

    def published(self) -> dict[PublishedPort, str]:
        """Every publication in force, mapped to the endpoint that holds it."""
        return {entry[0]: entry[1] for holders in self._held.values() for entry in holders.values()}

    def _hold(self, published: PublishedPort, owner: str) -> None:
        key = (published.protocol, published.host_port, published.family)
        self._held.setdefault(key, {})[published.host_ip] = (published, owner)
        self._books[published.protocol].take(published.host_port)

    def _forget_if_unheld(self, protocol: str, port: int) -> None:
        if all((protocol, port, family) not in self._held for family in FAMILIES):
            self._books[protocol].release(port)

    def _check_free(self, owner: str, wanted: PublishedPort, done: Collection[PublishedPort]) -> None:
        holders = self._held.get((wanted.protocol, wanted.host_port, wanted.family))
        if not holders:
            return
        if wanted.host_ip is None:
            existing = next(iter(holders.values()))
        elif wanted.host_ip in holders:
            existing = holders[wanted.host_ip]
        elif None in holders:
            existing = holders[None]
        else:
            return
        held, holder = existing
        what = _describe(wanted)
        if held in done:
            raise ConflictError(f"endpoint {owner!r}: host port {what} is requested more than once")
        message = f"endpoint {owner!r}: host port {what} is already published by endpoint {holder!r}"
        if held.host_ip != wanted.host_ip:
            message += f" (on {host_text(held)})"
        raise ConflictError(message)

    @staticmethod
    def _check_host(owner: str, wanted: PublishedPort, sockets: HostSockets | None) -> None:
        held = None if sockets is None else sockets.holder(wanted)
        if held is not None:
            raise ConflictError(
                f"endpoint {owner!r}: host port {_describe(wanted)} is in use by a socket in the host's namespace ({held})"
            )

    def _pick(self, owner: str, protocol: str, sockets: HostSockets | None, picked: list[tuple[str, int]]) -> int:
        """The lowest free port no host socket holds; every port taken on the
        way is entered in *picked*, for the caller to give back if unheld."""
        while True:
            port = self._books[protocol].take_lowest()
            if port is None:
                raise ExhaustedError(
                    f"endpoint {owner!r}: no free host port left for {protocol} in {self._first}-{self._last}"
                )
            picked.append((protocol, port))
            if sockets is None or not sockets.holds(protocol, port):
                return port
