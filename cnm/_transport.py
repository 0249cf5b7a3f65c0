"""Transport protocols and port numbers: the names and checks every part of cnm shares.

The port book (:mod:`cnm.ports`) and the firewall contract
(:mod:`cnm.firewall`) both take a protocol name and port numbers; they check
them here, so that the two can never disagree on what a valid port is.
"""

from __future__ import annotations

from typing import Final

from ._ip import IPAddress
from .errors import InvalidArgumentError

__all__ = [
    "DEFAULT_EPHEMERAL_PORTS",
    "FIRST_PORT",
    "LAST_PORT",
    "PROTOCOLS",
    "VXLAN_PORT",
    "address_text",
    "check_not_ipv6_loopback",
    "check_port",
    "check_protocol",
]

#: The transport protocols a port can be published for.
PROTOCOLS: Final = ("tcp", "udp", "sctp")

#: The port numbers a publication may use, both ends included. Port 0 means
#: "any" to ``bind`` and is never a destination.
FIRST_PORT: Final = 1
LAST_PORT: Final = 65535

#: Docker's default range for ephemeral host ports, both ends included.
DEFAULT_EPHEMERAL_PORTS: Final = (49153, 60999)
#: VXLAN's UDP port (IANA), which cnm's overlay networks use and its firewall guards
VXLAN_PORT: Final = 4789


def check_port(what: str, value: object) -> int:
    """*value* if it is a port number; else an :class:`~cnm.errors.InvalidArgumentError`
    starting with *what* (``"host port"``, ``"port forward: host_port"``)."""
    # bool is an int subclass; True as a port number is always a mistake.
    if not isinstance(value, int) or isinstance(value, bool) or not FIRST_PORT <= value <= LAST_PORT:
        raise InvalidArgumentError(f"{what} {value!r} is not a port number ({FIRST_PORT}-{LAST_PORT})")
    return value


def check_protocol(what: str, value: object) -> str:
    """*value* if it is one of :data:`PROTOCOLS` (lower case); else an
    :class:`~cnm.errors.InvalidArgumentError` starting with *what*."""
    if not isinstance(value, str) or value not in PROTOCOLS:
        raise InvalidArgumentError(f"{what} {value!r} is not one of {', '.join(PROTOCOLS)}")
    return value


def address_text(ip: IPAddress | None, family: int) -> str:
    """An address as written before ``:port``: IPv6 in brackets, and None as
    every address of *family* (``0.0.0.0``, ``[::]``), as Docker shows it."""
    shown = str(ip) if ip is not None else ("0.0.0.0" if family == 4 else "::")
    return f"[{shown}]" if family == 6 else shown


def check_not_ipv6_loopback(what: str, ip: IPAddress | None) -> None:
    """Refuse ``::1`` as the host address of a published port: the kernel never
    lets ::1 traffic leave the loopback interface (IPv6 has no
    ``route_localnet``), so it cannot be forwarded to a sandbox."""
    if ip is not None and ip.version == 6 and ip.is_loopback:
        raise InvalidArgumentError(
            f"{what} '::1' cannot be published on: the kernel never lets ::1 traffic leave the"
            " loopback interface, so it cannot be forwarded to a sandbox (publish on 127.0.0.1 or [::])"
        )
