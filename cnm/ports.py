"""Published ports: what ``docker run -p`` asks for, and who holds which host port.

Publishing a port makes a container port reachable through a port of the
host. The request and the result are two value types:

* a :class:`PortMapping` is what the user asks for. Its host port may be left
  out (``None``), meaning "any free one"; its host address may be left out,
  meaning "every address of the host" (shown as ``0.0.0.0``).
  :meth:`PortMapping.parse` reads Docker's ``-p`` syntax, and
  :func:`normalize_ports` accepts a mix of such strings and mappings.
* a :class:`PublishedPort` is a mapping after publishing: its host port is
  settled. It is what inspect shows (:func:`docker_ports_view` gives Docker's
  ``NetworkSettings.Ports`` shape) and what the firewall turns into a DNAT
  rule.

Between the two sits :class:`HostPortAllocator`, the bookkeeping of one host:
which (protocol, host address, host port) triples are taken, and by which
endpoint. It is pure: it does not bind sockets or touch the firewall. It
settles ephemeral ports and refuses clashes *before* any kernel change, so
that a clash is an ordinary :class:`~cnm.errors.ConflictError` instead of a
half-installed set of rules.

Clash rules (the same as the kernel's for ``bind``): two publications of one
port and protocol clash if they use the same host address, or if either uses
every address (``host_ip=None``). TCP, UDP and SCTP ports are separate spaces.

Only IPv4 host addresses are supported for now.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv6Address

import attrs

from ._checks import describe
from .errors import ConflictError, ExhaustedError, InvalidArgumentError

__all__ = [
    "DEFAULT_EPHEMERAL_PORTS",
    "HostPortAllocator",
    "PROTOCOLS",
    "PortMapping",
    "PublishedPort",
    "docker_ports_view",
    "normalize_ports",
]

#: The transport protocols a port can be published for.
PROTOCOLS = ("tcp", "udp", "sctp")

#: Docker's default range for ephemeral host ports, both ends included.
DEFAULT_EPHEMERAL_PORTS = (49153, 60999)

_WILDCARD = IPv4Address("0.0.0.0")
_PORT_TEXT = re.compile(r"[0-9]+")  # not str.isdigit(), which accepts non-ASCII digits


def _check_port(what: str, value: object) -> None:
    # bool is an int subclass; True as a port number is always a mistake.
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise InvalidArgumentError(f"{what} {value!r} is not a port number (1-65535)")


def _validate_port(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    _check_port(attribute.name.replace("_", " "), value)


def _validate_optional_port(_instance: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None:
        _check_port(attribute.name.replace("_", " "), value)


def _validate_protocol(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if value not in PROTOCOLS:
        raise InvalidArgumentError(f"protocol {value!r} is not one of {', '.join(PROTOCOLS)}")


def _to_host_ip(value: str | IPv4Address | IPv6Address | None) -> IPv4Address | None:
    # The wildcard has one spelling, None, so that equality and the clash
    # rules never have to treat 0.0.0.0 specially.
    if value is None:
        return None
    if isinstance(value, IPv6Address) or (isinstance(value, str) and ":" in value):
        raise InvalidArgumentError(f"host address {str(value)!r} is IPv6, which is not supported yet")
    if isinstance(value, str):
        try:
            value = IPv4Address(value)
        except ValueError:
            raise InvalidArgumentError(f"host address {value!r} is not a valid IPv4 address") from None
    if not isinstance(value, IPv4Address):
        raise InvalidArgumentError(f"host address {value!r} is not an IPv4 address")
    return None if value == _WILDCARD else value


def _show_ip(ip: IPv4Address | None) -> str:
    return "0.0.0.0" if ip is None else str(ip)


@attrs.frozen
class PortMapping:
    """A request to publish *container_port* on the host.

    *host_port* ``None`` asks for an ephemeral port, chosen when the mapping
    is published. *host_ip* ``None`` (or ``0.0.0.0``, which is stored as
    ``None``) publishes on every host address; a string is parsed as an IPv4
    address. Invalid values raise :class:`~cnm.errors.InvalidArgumentError`.

    ``str(mapping)`` is the mapping in ``-p`` syntax, which
    :meth:`parse` reads back to the same mapping.
    """

    container_port: int = attrs.field(validator=_validate_port)
    host_port: int | None = attrs.field(default=None, validator=_validate_optional_port)
    protocol: str = attrs.field(default="tcp", validator=_validate_protocol)
    host_ip: IPv4Address | None = attrs.field(default=None, converter=_to_host_ip)

    def __str__(self) -> str:
        tail = f"{self.container_port}/{self.protocol}"
        host = "" if self.host_port is None else str(self.host_port)
        if self.host_ip is not None:
            return f"{self.host_ip}:{host}:{tail}"
        if self.host_port is not None:
            return f"{host}:{tail}"
        return tail

    @classmethod
    def parse(cls, spec: str) -> list[PortMapping]:
        """Read one ``docker run -p`` argument; a range gives several mappings.

        The accepted forms (``/udp`` or ``/sctp`` may follow any of them;
        ``/tcp`` is the default)::

            80                     container port 80 on an ephemeral host port
            8080:80                host port 8080 to container port 80
            127.0.0.1:8080:80      the same, on one host address only
            127.0.0.1::80          an ephemeral host port on one host address
            8080-8081:80-81        8080->80 and 8081->81 (ranges of equal length)
            80-81                  80 and 81, each on an ephemeral host port

        Anything else raises :class:`~cnm.errors.InvalidArgumentError` quoting
        *spec* and saying what is wrong. A host port range wider than the
        container range (Docker's "any port of 8000-8010") is refused, since a
        mapping names one host port.
        """
        if not isinstance(spec, str):
            raise InvalidArgumentError(f"port spec {spec!r} is not a string")

        def bad(reason: str) -> InvalidArgumentError:
            return InvalidArgumentError(f"port spec {spec!r}: {reason}")

        rest, slash, protocol = spec.rpartition("/")
        if not slash:
            rest, protocol = spec, "tcp"
        elif not protocol:
            raise bad("no protocol after '/'")
        if protocol.isascii():  # so no non-ASCII letter can lower-case its way into "tcp"
            protocol = protocol.lower()
        if protocol not in PROTOCOLS:
            raise bad(f"unknown protocol {protocol!r} (expected one of {', '.join(PROTOCOLS)})")

        if rest.startswith("["):
            address = rest[1:].partition("]")[0]
            raise bad(f"IPv6 host address {address!r} is not supported yet")
        parts = rest.split(":")
        if len(parts) > 3:
            address = ":".join(parts[:-2])
            try:
                IPv6Address(address)
            except ValueError:
                raise bad("too many ':' (expected [host_ip:][host_port:]container_port)") from None
            raise bad(f"IPv6 host address {address!r} is not supported yet")

        host_ip: IPv4Address | None = None
        if len(parts) == 3:
            ip_text = parts.pop(0)
            if not ip_text:
                raise bad("empty host address before ':'")
            try:
                host_ip = _to_host_ip(ip_text)
            except InvalidArgumentError as exc:
                raise bad(str(exc)) from None
        host_text = parts[0] if len(parts) == 2 else ""
        container_text = parts[-1]
        if not container_text:
            raise bad("no container port")

        container_first, container_last = _parse_range(container_text, "container port", bad)
        if not host_text:
            return [
                cls(port, None, protocol, host_ip) for port in range(container_first, container_last + 1)
            ]
        host_first, host_last = _parse_range(host_text, "host port", bad)
        if host_last - host_first != container_last - container_first:
            raise bad(
                f"host ports {host_text} and container ports {container_text} are not ranges of the same length"
            )
        return [
            cls(container_first + offset, host_first + offset, protocol, host_ip)
            for offset in range(container_last - container_first + 1)
        ]


def _parse_range(text: str, what: str, bad: Callable[[str], InvalidArgumentError]) -> tuple[int, int]:
    first_text, dash, last_text = text.partition("-")
    if not dash:
        last_text = first_text
    ends: list[int] = []
    for part in (first_text, last_text):
        if not _PORT_TEXT.fullmatch(part):
            raise bad(f"{what} {text!r} is not a port number or a range like 8000-8010")
        port = int(part)
        if not 1 <= port <= 65535:
            raise bad(f"{what} {port} is out of range (1-65535)")
        ends.append(port)
    first, last = ends
    if first > last:
        raise bad(f"{what} range {text!r} ends before it starts")
    return first, last


def normalize_ports(ports: Iterable[str | PortMapping] | str, owner: str | None = None) -> list[PortMapping]:
    """Turn a mix of ``-p`` strings and :class:`PortMapping` objects into mappings.

    Strings are read with :meth:`PortMapping.parse` (so one string may give
    several mappings); order is kept and duplicates are kept, so that a
    duplicate is reported as a clash when the ports are published. A lone
    string or mapping is taken as a list of one, not as a sequence of
    characters; this is the one place that decides it, for every argument
    called ``ports``. *owner* (``"endpoint 'web'"``) starts the message of
    any :class:`~cnm.errors.InvalidArgumentError`.
    """
    try:
        return _normalize_ports(ports)
    except InvalidArgumentError as exc:
        if owner is None:
            raise
        raise InvalidArgumentError(f"{owner}: {exc}") from None


def _normalize_ports(ports: object) -> list[PortMapping]:
    if isinstance(ports, (str, PortMapping)):
        ports = [ports]
    elif isinstance(ports, (bytes, bytearray)):
        raise InvalidArgumentError(f"ports {ports!r} are bytes, not a port spec string (decode them first)")
    elif isinstance(ports, Mapping):
        # docker-py's {"80/tcp": 8080}: iterated, it would publish the keys on ephemeral ports.
        raise InvalidArgumentError(
            f"ports {ports!r} is a mapping; give a list of port specs instead, e.g. ['8080:80/tcp']"
        )
    elif not isinstance(ports, Iterable):
        raise InvalidArgumentError(
            f"ports must be a port spec string, a PortMapping or a list of them, not {describe(ports)}"
        )
    result: list[PortMapping] = []
    for item in ports:
        if isinstance(item, PortMapping):
            result.append(item)
        elif isinstance(item, str):
            result.extend(PortMapping.parse(item))
        else:
            raise InvalidArgumentError(f"port {item!r} is neither a port spec string nor a PortMapping")
    return result


@attrs.frozen
class PublishedPort:
    """A published mapping: *container_port* is reachable on *host_port*.

    *host_ip* ``None`` means every host address. ``str()`` gives the
    ``docker ps`` form, e.g. ``0.0.0.0:8080->80/tcp``.
    """

    protocol: str = attrs.field(validator=_validate_protocol)
    host_ip: IPv4Address | None = attrs.field(converter=_to_host_ip)
    host_port: int = attrs.field(validator=_validate_port)
    container_port: int = attrs.field(validator=_validate_port)

    def __str__(self) -> str:
        return f"{_show_ip(self.host_ip)}:{self.host_port}->{self.container_port}/{self.protocol}"


def _describe(protocol: str, host_ip: IPv4Address | None, port: int) -> str:
    where = "" if host_ip is None else f"{host_ip}:"
    return f"{where}{port}/{protocol}"


class HostPortAllocator:
    """Which host ports of one host are published, and by which endpoint.

    Endpoints are named by *owner* strings (the endpoint's name); messages
    read ``endpoint 'web1': host port 8080/tcp is already published by
    endpoint 'web0'``.

    Ephemeral ports are drawn from *ephemeral_ports*, a ``(first, last)``
    pair with both ends included (Docker's 49153-60999 by default), lowest
    free first, so a released port is the next one handed out. A port counts
    as free for an ephemeral request only if no address holds it for that
    protocol, so an ephemeral port is never shared between host addresses.

    Not thread-safe; the host serialises calls.
    """

    __slots__ = ("_cursor", "_first", "_freed", "_held", "_in_heap", "_last")

    # Lowest-free without scanning: per protocol, every port of the
    # ephemeral range below ``_cursor[protocol]`` has been looked at once and,
    # if it is free now, sits on the ``_freed`` heap; ports from the cursor up
    # are free unless a fixed request took them, which the cursor skips. A
    # heap entry whose port was re-taken by a fixed request stays there and is
    # skipped when popped.

    def __init__(self, ephemeral_ports: tuple[int, int] = DEFAULT_EPHEMERAL_PORTS) -> None:
        first, last = ephemeral_ports
        _check_port("first ephemeral port", first)
        _check_port("last ephemeral port", last)
        if first > last:
            raise InvalidArgumentError(f"ephemeral port range {first}-{last} ends before it starts")
        self._first = first
        self._last = last
        # (protocol, host port) -> host address -> (publication, owner)
        self._held: dict[tuple[str, int], dict[IPv4Address | None, tuple[PublishedPort, str]]] = {}
        self._cursor = dict.fromkeys(PROTOCOLS, first)
        self._freed: dict[str, list[int]] = {protocol: [] for protocol in PROTOCOLS}
        self._in_heap: dict[str, set[int]] = {protocol: set() for protocol in PROTOCOLS}

    def __repr__(self) -> str:
        count = sum(len(holders) for holders in self._held.values())
        return f"<HostPortAllocator ephemeral {self._first}-{self._last}, {count} published>"

    @property
    def ephemeral_ports(self) -> tuple[int, int]:
        """The range ephemeral ports are drawn from, both ends included."""
        return (self._first, self._last)

    def reserve(self, owner: str, mappings: Sequence[PortMapping]) -> list[PublishedPort]:
        """Publish every one of *mappings* for *owner*, or none of them.

        Returns one :class:`PublishedPort` per mapping, in order. Raises
        :class:`~cnm.errors.ConflictError` if a fixed host port clashes with
        one already published or with another mapping of the same request,
        and :class:`~cnm.errors.ExhaustedError` if no ephemeral port is left.
        After an error nothing from this call stays reserved.
        """
        for mapping in mappings:
            if not isinstance(mapping, PortMapping):
                raise InvalidArgumentError(f"endpoint {owner!r}: {mapping!r} is not a PortMapping")
        # Fixed ports are taken before ephemeral ones are chosen, so that an
        # ephemeral pick never lands on a port this same request names later.
        order = sorted(range(len(mappings)), key=lambda index: mappings[index].host_port is None)
        results: dict[int, PublishedPort] = {}
        try:
            for index in order:
                mapping = mappings[index]
                if mapping.host_port is None:
                    port = self._pick(owner, mapping.protocol)
                else:
                    port = mapping.host_port
                    self._check_free(owner, mapping.protocol, mapping.host_ip, port, results.values())
                published = PublishedPort(mapping.protocol, mapping.host_ip, port, mapping.container_port)
                self._held.setdefault((published.protocol, port), {})[published.host_ip] = (published, owner)
                results[index] = published
        except BaseException:
            self.release(results.values())
            raise
        return [results[index] for index in range(len(mappings))]

    def release(self, published: Iterable[PublishedPort]) -> None:
        """Unpublish each of *published*; ports not published are skipped silently.

        A port is released only if exactly that publication holds it, so a
        stale :class:`PublishedPort` cannot free a port that has since been
        published again with a different container port.
        """
        for item in published:
            key = (item.protocol, item.host_port)
            holders = self._held.get(key)
            if holders is None:
                continue
            entry = holders.get(item.host_ip)
            if entry is None or entry[0] != item:
                continue
            del holders[item.host_ip]
            if holders:
                continue
            del self._held[key]
            # Only a port the cursor has passed needs to go on the heap; the
            # cursor finds the others itself.
            heap, in_heap = self._freed[item.protocol], self._in_heap[item.protocol]
            if self._first <= item.host_port < self._cursor[item.protocol] and item.host_port not in in_heap:
                heapq.heappush(heap, item.host_port)
                in_heap.add(item.host_port)

    def published(self) -> dict[PublishedPort, str]:
        """Every publication in force, mapped to the endpoint that holds it."""
        return {entry[0]: entry[1] for holders in self._held.values() for entry in holders.values()}

    def _check_free(
        self,
        owner: str,
        protocol: str,
        host_ip: IPv4Address | None,
        port: int,
        done: Collection[PublishedPort],
    ) -> None:
        holders = self._held.get((protocol, port))
        if not holders:
            return
        if host_ip is None:
            existing = next(iter(holders.values()))
        elif host_ip in holders:
            existing = holders[host_ip]
        elif None in holders:
            existing = holders[None]
        else:
            return
        held, holder = existing
        wanted = _describe(protocol, host_ip, port)
        if held in done:
            raise ConflictError(f"endpoint {owner!r}: host port {wanted} is requested more than once")
        message = f"endpoint {owner!r}: host port {wanted} is already published by endpoint {holder!r}"
        if held.host_ip != host_ip:
            message += f" (on {_show_ip(held.host_ip)})"
        raise ConflictError(message)

    def _pick(self, owner: str, protocol: str) -> int:
        heap, in_heap = self._freed[protocol], self._in_heap[protocol]
        while heap:
            port = heapq.heappop(heap)
            in_heap.discard(port)
            if (protocol, port) not in self._held:
                return port
        while self._cursor[protocol] <= self._last:
            port = self._cursor[protocol]
            self._cursor[protocol] += 1
            if (protocol, port) not in self._held:
                return port
        raise ExhaustedError(
            f"endpoint {owner!r}: no free host port left for {protocol} in {self._first}-{self._last}"
        )


def docker_ports_view(published: Iterable[PublishedPort]) -> dict[str, list[dict[str, str]]]:
    """Docker's ``NetworkSettings.Ports`` shape for *published*.

    Keys are ``"<container port>/<protocol>"``; each value lists the host
    bindings of that container port, in the order given::

        {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}
    """
    view: dict[str, list[dict[str, str]]] = {}
    for item in published:
        binding = {"HostIp": _show_ip(item.host_ip), "HostPort": str(item.host_port)}
        view.setdefault(f"{item.container_port}/{item.protocol}", []).append(binding)
    return view
