"""Published ports: what ``docker run -p`` asks for, and who holds which host port.

Publishing a port makes a container port reachable through a port of the
host. The request and the result are two value types:

* a :class:`PortMapping` is what the user asks for. Its host port may be left
  out (``None``), meaning "any free one"; its host address may be left out,
  meaning "every address of the host, of every family the endpoint has".
  :meth:`PortMapping.parse` reads Docker's ``-p`` syntax, IPv6 host
  addresses in brackets included, and :func:`normalize_ports` accepts a mix
  of such strings and mappings.
* a :class:`PublishedPort` is a mapping after publishing, on one address
  family: its host port is settled. It is what inspect shows
  (:func:`docker_ports_view` gives Docker's ``NetworkSettings.Ports`` shape)
  and what the firewall turns into a DNAT rule.

Between the two sits :class:`~cnm.port_books.HostPortAllocator`, the bookkeeping of one host:
which (protocol, family, host address, host port) are taken, and by which
endpoint. It is pure: it does not bind sockets or touch the firewall. It
settles ephemeral ports and refuses clashes *before* any kernel change, so
that a clash is an ordinary :class:`~cnm.errors.ConflictError` instead of a
half-installed set of rules; given what the host's own sockets hold
(:class:`~cnm.port_books.HostSockets`), it refuses those ports too.

Host addresses, as in Docker 28:

* none, or ``0.0.0.0``: every address of every family the endpoint has. On a
  dual-stack endpoint the mapping is published twice, on IPv4 and on IPv6,
  with the same host port (inspect shows a ``0.0.0.0`` and a ``::`` entry).
  ``0.0.0.0`` means both families because it is Docker's default binding
  address, which a mapping without an address gets.
* ``[::]``: every IPv6 address, and only IPv6.
* a specific address: that address only, so only its family.
* ``[::1]`` is refused: the kernel never lets a packet from ``::1`` leave
  ``lo`` (IPv6 has no ``route_localnet``), so a DNAT from the host's own
  ``::1`` to a sandbox cannot work; Docker serves it with its userland proxy,
  which cnm does not have. ``127.0.0.1`` works.

Clash rules (the same as the kernel's for ``bind``), within one family: two
publications of one port and protocol clash if they use the same host
address, or if either uses every address of the family. IPv4 and IPv6 are
separate spaces, and so are TCP, UDP and SCTP.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Address, IPv6Address, ip_address

import attrs

from ._checks import describe
from ._ip import FAMILIES, Family, IPAddress, family_name
from ._transport import address_text, check_not_ipv6_loopback, check_port, check_protocol, DEFAULT_EPHEMERAL_PORTS, FIRST_PORT, LAST_PORT, PROTOCOLS
from .errors import InvalidArgumentError

__all__ = [
    "DEFAULT_EPHEMERAL_PORTS",
    "PROTOCOLS",
    "PortMapping",
    "PublishedPort",
    "docker_ports_view",
    "normalize_ports",
]

_ANY_IPV4 = IPv4Address("0.0.0.0")
_PORT_TEXT = re.compile(r"[0-9]+")  # not str.isdigit(), which accepts non-ASCII digits


def _validate_port(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    check_port(attribute.name.replace("_", " "), value)


def _validate_optional_port(_instance: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None:
        check_port(attribute.name.replace("_", " "), value)


def _validate_protocol(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    check_protocol("protocol", value)


def _check_host_ip(value: object) -> IPAddress | None:
    """*value* as a host address a port can be published on (wildcards kept)."""
    if value is None:
        return None
    if not isinstance(value, (str, IPv4Address, IPv6Address)):
        raise InvalidArgumentError(f"host address {value!r} is not an IPv4 or IPv6 address")
    shown = repr(str(value))  # as given, in messages
    if "%" in str(value):
        raise InvalidArgumentError(f"host address {shown} has a zone index, which a published port cannot use")
    if isinstance(value, str):
        try:
            value = ip_address(value)
        except ValueError:
            family = "IPv6" if ":" in shown else "IPv4"
            raise InvalidArgumentError(f"host address {shown} is not a valid {family} address") from None
    if isinstance(value, IPv6Address):
        if value.ipv4_mapped is not None:
            # The kernel would never see such a destination: IPv4 traffic
            # arrives as IPv4.
            raise InvalidArgumentError(
                f"host address {shown} is an IPv4-mapped IPv6 address; give it as {value.ipv4_mapped}"
            )
        check_not_ipv6_loopback("host address", value)
    return value


def _to_host_ip(value: object) -> IPAddress | None:
    # "Every address of every family" has one spelling, None, so that
    # equality and the clash rules never have to treat 0.0.0.0 specially.
    host_ip = _check_host_ip(value)
    return None if host_ip == _ANY_IPV4 else host_ip


def _bracketed(ip: IPAddress) -> str:
    """*ip* as it is written before ``:port``: IPv6 in brackets."""
    return f"[{ip}]" if ip.version == 6 else str(ip)


@attrs.frozen
class PortMapping:
    """A request to publish *container_port* on the host.

    *host_port* ``None`` asks for an ephemeral port, chosen when the mapping
    is published. *host_ip* ``None`` (or ``0.0.0.0``, which is stored as
    ``None``) publishes on every host address of every family the endpoint
    has; ``::`` on every IPv6 address; any other address on that address
    only (see the module documentation, which also says why ``::1`` is
    refused). A string is parsed as an IPv4 or IPv6 address. Invalid values
    raise :class:`~cnm.errors.InvalidArgumentError`.

    ``str(mapping)`` is the mapping in ``-p`` syntax, which
    :meth:`parse` reads back to the same mapping.
    """

    container_port: int = attrs.field(validator=_validate_port)
    host_port: int | None = attrs.field(default=None, validator=_validate_optional_port)
    protocol: str = attrs.field(default="tcp", validator=_validate_protocol)
    host_ip: IPAddress | None = attrs.field(default=None, converter=_to_host_ip)

    def __str__(self) -> str:
        tail = f"{self.container_port}/{self.protocol}"
        host = "" if self.host_port is None else str(self.host_port)
        if self.host_ip is not None:
            return f"{_bracketed(self.host_ip)}:{host}:{tail}"
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
            [2001:db8::1]:8080:80  an IPv6 host address, in brackets
            [::]:8080:80           every IPv6 host address (and no IPv4 one)
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
            ip_text, bracket, after = rest[1:].partition("]")
            if not bracket:
                raise bad("no ']' after the IPv6 host address")
            if not after.startswith(":"):
                raise bad("expected ':' after the ']' of the host address ([host_ip]:[host_port]:container_port)")
            parts = after[1:].split(":")
            if len(parts) != 2:
                raise bad("expected [host_ip]:[host_port]:container_port")
            if ip_text and ":" not in ip_text:
                raise bad(f"{ip_text!r} in brackets is not an IPv6 address (only IPv6 host addresses take brackets)")
            parts.insert(0, ip_text)
        else:
            parts = rest.split(":")
            if len(parts) > 3:
                address = ":".join(parts[:-2])
                try:
                    IPv6Address(address)
                except ValueError:
                    raise bad("too many ':' (expected [host_ip:][host_port:]container_port)") from None
                raise bad(f"IPv6 host address {address!r} must be written in brackets, like [{address}]:8080:80")

        host_ip: IPAddress | None = None
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
        if not FIRST_PORT <= port <= LAST_PORT:
            raise bad(f"{what} {port} is out of range ({FIRST_PORT}-{LAST_PORT})")
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



@attrs.frozen(init=False)
class PublishedPort:
    """A published mapping on one address family: *container_port* is reachable on *host_port*.

    *host_ip* ``None`` means every host address of *family* (``0.0.0.0`` or
    ``::``, which are stored as ``None``); a specific address gives the family
    itself, and *family* may then be left out. Without either, *family* is 4.
    ``str()`` gives the ``docker ps`` form, e.g. ``0.0.0.0:8080->80/tcp`` or
    ``[::]:8080->80/tcp``.
    """

    protocol: str = attrs.field(validator=_validate_protocol)
    host_ip: IPAddress | None
    host_port: int = attrs.field(validator=_validate_port)
    container_port: int = attrs.field(validator=_validate_port)
    family: Family

    def __init__(
        self,
        protocol: str,
        host_ip: str | IPAddress | None,
        host_port: int,
        container_port: int,
        family: Family | None = None,
    ) -> None:
        ip = _check_host_ip(host_ip)
        if family is not None and family not in FAMILIES:
            raise InvalidArgumentError(f"published port: family {family!r} is not 4 or 6")
        if ip is not None:
            if family is not None and ip.version != family:
                raise InvalidArgumentError(
                    f"published port: host address {ip} is {family_name(ip.version)}, not {family_name(family)}"
                )
            family = 4 if ip.version == 4 else 6
            if ip.is_unspecified:
                ip = None
        self.__attrs_init__(protocol, ip, host_port, container_port, 4 if family is None else family)

    @property
    def shown_ip(self) -> str:
        """The host address as Docker shows it: ``0.0.0.0`` or ``::`` for every address."""
        if self.host_ip is not None:
            return str(self.host_ip)
        return "0.0.0.0" if self.family == 4 else "::"

    def __str__(self) -> str:
        return f"{host_text(self)}:{self.host_port}->{self.container_port}/{self.protocol}"


def host_text(published: PublishedPort) -> str:
    """The host address as written before ``:port`` (IPv6 in brackets)."""
    return address_text(published.host_ip, published.family)


def docker_ports_view(published: Iterable[PublishedPort]) -> dict[str, list[dict[str, str]]]:
    """Docker's ``NetworkSettings.Ports`` shape for *published*.

    Keys are ``"<container port>/<protocol>"``; each value lists the host
    bindings of that container port, in the order given (IPv6 addresses
    without brackets, as Docker shows them)::

        {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "::", "HostPort": "8080"}]}
    """
    view: dict[str, list[dict[str, str]]] = {}
    for item in published:
        binding = {"HostIp": item.shown_ip, "HostPort": str(item.host_port)}
        view.setdefault(f"{item.container_port}/{item.protocol}", []).append(binding)
    return view
