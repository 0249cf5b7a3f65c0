"""One registry type for every kind of plug-in: network drivers, IPAM drivers, firewall backends.

A :class:`Registry` maps names to *factories* (whatever the kind's contract
says a plug-in hands over: a zero-argument class for drivers, a
``factory(namespace, owner)`` for firewall backends). Its names come from
three places, looked at in this order:

1. **registered**: :meth:`Registry.register`, for applications and tests
   (a test double may replace a built-in with ``replace=True``;
   :meth:`~Registry.unregister` brings the built-in back);
2. **built-in**: what ships with cnm, known from the start;
3. **entry points** of the registry's group (``cnm.drivers``, ``cnm.ipam``,
   ``cnm.firewall``) in the installed distributions. Only the entry point
   of the name asked for is loaded, the first time it is asked for, so
   importing cnm (or using a built-in) never imports a plug-in; the loaded
   factory is kept. A plug-in whose import fails raises its own error, with a
   note naming the entry point that pulled it in.

An entry point never shadows a built-in or a registered name: those are
found first and the entry points are not even read. Two installed entry
points with one name are a :class:`~cnm.errors.ConflictError` naming both:
picking one silently would make the plug-in that runs depend on install
order.

Every registry behaves the same way; the kind (``"network driver"``, ...)
only changes the messages. The public look-ups
(:func:`cnm.drivers.network_driver`, :func:`cnm.ipam.ipam_driver`,
:func:`cnm.firewall.firewall_backend`) are thin functions over these.
"""

from __future__ import annotations

import importlib.metadata
import threading
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from ._checks import describe
from .errors import ConflictError, InvalidArgumentError, NotFoundError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Names of one kind of plug-in and their factories; see the module documentation.

    *kind* names the plug-in in messages (``"network driver"``), *group* is
    the entry-point group, and *builtins* returns the built-in factories by
    name. It is called once, at the first look-up, because the built-ins
    live in modules that import the contract module holding the registry.
    """

    def __init__(self, kind: str, group: str, builtins: Callable[[], Mapping[str, T]]) -> None:
        self.kind = kind
        self.group = group
        self._load_builtins = builtins
        self._builtins: dict[str, T] | None = None
        self._registered: dict[str, T] = {}
        self._loaded: dict[str, T] = {}  # entry points loaded so far
        # Look-ups come from any thread (hosts are built on several); the lock
        # keeps the three dicts consistent, and an entry point loaded once.
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"<Registry of {self.kind}s ({self.group})>"

    def lookup(self, name: str) -> T:
        """The factory called *name*.

        Raises :class:`~cnm.errors.InvalidArgumentError` for a name that is
        not a string and :class:`~cnm.errors.NotFoundError`, naming the kind
        and every known name, for one nobody provides.
        """
        self._check_name(name)
        with self._lock:
            found = self._known(name)
            if found is not None:
                return found
            points = [p for p in self._entry_points() if p.name == name]
            if not points:
                known = ", ".join(self.names()) or "none"
                raise NotFoundError(f"{self.kind} {name!r} not found (known: {known})")
            if len(points) > 1:
                where = " and ".join(repr(p.value) for p in points)
                raise ConflictError(
                    f"{self.kind} {name!r}: {len(points)} entry points of {self.group!r} have this name ({where})"
                )
            point = points[0]
            try:
                factory: T = point.load()
            except Exception as exc:
                # The plug-in's own error is the useful one; the note says
                # which entry point imported it.
                exc.add_note(f"while loading {self.kind} {name!r} from entry point {point.value!r} ({self.group})")
                raise
            self._loaded[name] = factory
            return factory

    def names(self) -> list[str]:
        """Every name known, sorted: built-ins, registered names and installed entry points.

        Reading the entry points loads none of them.
        """
        with self._lock:
            known = set(self._builtin()) | set(self._registered) | set(self._loaded)
        known.update(p.name for p in self._entry_points())
        return sorted(known)

    def register(self, name: str, factory: T, *, replace: bool = False) -> None:
        """Make *factory* known as *name*, ahead of built-ins and entry points.

        A name already known (built-in, registered, or an installed entry
        point) is a :class:`~cnm.errors.ConflictError` unless *replace* is
        true; replacing a built-in or an entry point hides it until
        :meth:`unregister`. A *factory* that is not callable, or a name that
        is not a non-empty string, is an :class:`~cnm.errors.InvalidArgumentError`.
        """
        self._check_name(name)
        if not name:
            raise InvalidArgumentError(f"{self.kind} name must not be empty")
        if not callable(factory):
            raise InvalidArgumentError(f"{self.kind} {name!r}: the factory must be callable, not {describe(factory)}")
        with self._lock:
            if not replace and name in self.names():
                raise ConflictError(f"{self.kind} {name!r} is already known (pass replace=True to replace it)")
            self._registered[name] = factory

    def unregister(self, name: str) -> None:
        """Forget what :meth:`register` made known as *name*; a built-in or
        entry point it replaced is found again. Raises
        :class:`~cnm.errors.NotFoundError` if *name* was not registered
        (built-ins and entry points cannot be unregistered)."""
        self._check_name(name)
        with self._lock:
            if self._registered.pop(name, None) is None:
                raise NotFoundError(f"{self.kind} {name!r} was not registered")

    def _known(self, name: str) -> T | None:
        if name in self._registered:
            return self._registered[name]
        builtin = self._builtin()
        if name in builtin:
            return builtin[name]
        return self._loaded.get(name)

    def _builtin(self) -> dict[str, T]:
        if self._builtins is None:
            self._builtins = dict(self._load_builtins())
        return self._builtins

    def _entry_points(self) -> list[importlib.metadata.EntryPoint]:
        # Looked up through the module at each call, so a test can replace it.
        return list(importlib.metadata.entry_points(group=self.group))

    def _check_name(self, name: object) -> None:
        if not isinstance(name, str):
            raise InvalidArgumentError(f"{self.kind} name must be a string, not {describe(name)}")
