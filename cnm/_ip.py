"""Address types of both families, as cnm's signatures spell them.

cnm is dual-stack: a network has at most one subnet per family, an endpoint
at most one address per family, and every rule and port forward belongs to
one family, told by the version of the addresses it holds.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import Literal, TypeAlias

__all__ = ["FAMILIES", "Family", "IPAddress", "IPInterface", "IPNetwork", "family_name"]

IPAddress: TypeAlias = IPv4Address | IPv6Address
IPNetwork: TypeAlias = IPv4Network | IPv6Network
IPInterface: TypeAlias = IPv4Interface | IPv6Interface
#: An address family as ``ipaddress`` numbers it (``.version``).
Family: TypeAlias = Literal[4, 6]
FAMILIES: tuple[Family, ...] = (4, 6)


def family_name(family: int) -> str:
    """``"IPv4"`` or ``"IPv6"``, for messages."""
    return f"IPv{family}"
