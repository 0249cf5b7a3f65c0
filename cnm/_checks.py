"""Argument checks shared by the public entry points.

Every public call checks the type and value of each argument here, before
any change, and raises :class:`~cnm.errors.InvalidArgumentError` (a
``ValueError``) for a wrong value and a wrong type alike, naming the object
and the reason. Without these, a wrong type surfaces as a bare
``AttributeError`` or ``TypeError`` from deep inside, or worse is accepted:
``"no"`` is a true value, a string is an iterable of characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from .errors import InvalidArgumentError

__all__ = [
    "check_collection",
    "check_flag",
    "check_instance",
    "check_mac",
    "check_name",
    "check_text",
    "describe",
    "string_map",
]

T = TypeVar("T")

# Matched with fullmatch: "$" also matches before a trailing newline, which
# would then reach link aliases, nftables comments and namespace file names.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def describe(value: object) -> str:
    """*value* for a message saying what was given instead: ``int 5``, ``str 's1'``, ``None``."""
    return "None" if value is None else f"{type(value).__name__} {value!r}"


def check_name(kind: str, name: object) -> str:
    """A name of a host, network, sandbox or endpoint (it ends up in interface
    aliases, nftables comments and file names, hence the narrow alphabet)."""
    if not isinstance(name, str):
        raise InvalidArgumentError(f"{kind} name must be a string, not {describe(name)}")
    if not _NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"{kind} name {name!r} is not valid: use 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def check_text(where: str, what: str, value: object) -> str:
    """A string argument whose value is checked elsewhere (a driver's name, say)."""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{where}: {what} must be a string, not {describe(value)}")
    return value


def check_flag(where: str, what: str, value: object) -> bool:
    """A real bool: ``"no"`` or ``1`` would be taken as true and shown back as given."""
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{where}: {what} must be True or False, not {describe(value)}")
    return value


def check_instance(where: str, what: str, value: object, cls: type[T]) -> T:
    if not isinstance(value, cls):
        raise InvalidArgumentError(f"{where}: {what} must be a {cls.__name__}, not {describe(value)}")
    return value


def check_collection(where: str, what: str, value: object, items: str) -> list[Any]:
    """*value* as a list: any iterable but a string, bytes or a mapping, which
    iterate as characters, byte values and keys (never what was meant).

    The items are the caller's to check (hence ``Any``).
    """
    if isinstance(value, (str, bytes, bytearray, Mapping)) or not isinstance(value, Iterable):
        raise InvalidArgumentError(f"{where}: {what} must be a list (or other iterable) of {items}, not {describe(value)}")
    return list(value)


def check_mac(where: str, mac: object) -> str | None:
    """A unicast MAC address, lower-cased, or None (cnm chooses one)."""
    if mac is None:
        return None
    # The all-zero address is no one's (the kernel refuses it with EADDRNOTAVAIL).
    if not isinstance(mac, str) or not _MAC.fullmatch(mac.lower()) or int(mac[:2], 16) & 1 or not int(mac.replace(":", ""), 16):
        raise InvalidArgumentError(f"{where}: {mac!r} is not a unicast MAC address like 02:42:ac:11:00:02")
    return mac.lower()


def string_map(what: str, value: object) -> dict[str, str]:
    """Options or labels: a mapping of strings to strings (None for none)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidArgumentError(f"{what} must map strings to strings, got {value!r}")
    return dict(value)
