"""The plug-in registries: network drivers, IPAM drivers and firewall backends behave alike (no root needed)."""

from __future__ import annotations

import importlib.metadata
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import cnm.drivers
import cnm.firewall
import cnm.ipam
from cnm._plugins import Registry
from cnm.drivers.bridge import BridgeDriver
from cnm.errors import ConflictError, InvalidArgumentError, NotFoundError
from cnm.firewall.nftables import NftablesFirewall
from cnm.firewall.none import NoFirewall
from cnm.ipam.default import DefaultIPAM


class FakeDriver:
    name = "fake"


def fake_firewall(namespace: object, owner: str) -> object:
    return NoFirewall(namespace, owner)  # type: ignore[arg-type]


# registry, public look-up, group, a built-in name and its factory, what a look-up of a factory returns
KINDS = [
    pytest.param(cnm.drivers.DRIVERS, cnm.drivers.network_driver, "cnm.drivers", "bridge", BridgeDriver, id="drivers"),
    pytest.param(cnm.ipam.IPAM_DRIVERS, cnm.ipam.ipam_driver, "cnm.ipam", "default", DefaultIPAM, id="ipam"),
    pytest.param(
        cnm.firewall.FIREWALL_BACKENDS, cnm.firewall.firewall_backend, "cnm.firewall", "nftables", NftablesFirewall, id="firewall"
    ),
]


def made_by(lookup: Callable[[str], Any], name: str, factory: Callable[..., Any]) -> bool:
    """Whether the public look-up of *name* came from *factory*: the drivers'
    look-ups return an instance, the firewall's the factory itself."""
    got = lookup(name)
    return got is factory or type(got) is factory


@pytest.fixture
def plugin_module() -> Iterator[types.ModuleType]:
    """A module a fake entry point can point at, removed afterwards."""
    module = types.ModuleType("cnm_test_plugin")
    module.Plugin = FakeDriver  # type: ignore[attr-defined]
    module.OtherPlugin = type("OtherPlugin", (), {"name": "other"})  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    yield module
    del sys.modules[module.__name__]


class FakeEntryPoints:
    """Stands in for importlib.metadata.entry_points and records what was asked."""

    def __init__(self, *points: importlib.metadata.EntryPoint) -> None:
        self.points = points
        self.groups: list[str] = []

    def __call__(self, *, group: str) -> list[importlib.metadata.EntryPoint]:
        self.groups.append(group)
        return [p for p in self.points if p.group == group]


def entry_point(name: str, value: str, group: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=value, group=group)


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch) -> Callable[[Registry[Any]], None]:
    """Makes a registry forget, after the test, what the test registered or loaded."""

    def clean(registry: Registry[Any]) -> None:
        monkeypatch.setattr(registry, "_registered", {})
        monkeypatch.setattr(registry, "_loaded", {})

    return clean


@pytest.mark.parametrize("registry, lookup, group, builtin, factory", KINDS)
def test_every_registry_behaves_alike(
    registry, lookup, group, builtin, factory, monkeypatch, plugin_module, clean
):  # type: ignore[no-untyped-def]
    clean(registry)
    fake = FakeEntryPoints(
        entry_point("plugged", "cnm_test_plugin:Plugin", group),
        entry_point("broken", "cnm_test_plugin_missing:Plugin", group),
        entry_point("elsewhere", "cnm_test_plugin:Plugin", "cnm.other"),
        entry_point(builtin, "cnm_test_plugin:OtherPlugin", group),  # never shadows the built-in
    )
    monkeypatch.setattr(importlib.metadata, "entry_points", fake)

    # The built-in is found without reading the entry points.
    assert registry.lookup(builtin) is factory
    assert made_by(lookup, builtin, factory)
    assert fake.groups == []

    # An entry point is loaded the first time its name is asked for, then kept.
    assert registry.lookup("plugged") is FakeDriver
    assert made_by(lookup, "plugged", FakeDriver)
    assert fake.groups == [group]

    # The names of all three sources, sorted; entry points of other groups are not.
    names = registry.names()
    assert names == sorted(names) and names.count(builtin) == 1
    assert {builtin, "plugged", "broken"} <= set(names) and "elsewhere" not in names

    # One kind of error for an unknown name, naming the kind and the known names.
    with pytest.raises(NotFoundError) as missing:
        lookup("nope")
    message = str(missing.value)
    assert registry.kind in message and "'nope'" in message and builtin in message and "plugged" in message
    assert isinstance(missing.value, LookupError)

    # A plug-in's import error is its own, with a note naming the entry point.
    with pytest.raises(ModuleNotFoundError) as broken:
        lookup("broken")
    assert any("cnm_test_plugin_missing:Plugin" in note and registry.kind in note for note in broken.value.__notes__)

    # Names that are not strings are bad arguments, for every call.
    for call in (lookup, registry.lookup, registry.unregister, lambda n: registry.register(n, FakeDriver)):
        with pytest.raises(InvalidArgumentError, match=f"{registry.kind} name must be a string, not int 7"):
            call(7)


@pytest.mark.parametrize("registry, lookup, group, builtin, factory", KINDS)
def test_register_refuses_a_taken_name_unless_replacing(
    registry, lookup, group, builtin, factory, monkeypatch, plugin_module, clean
):  # type: ignore[no-untyped-def]
    clean(registry)
    monkeypatch.setattr(importlib.metadata, "entry_points", FakeEntryPoints(entry_point("plugged", "cnm_test_plugin:Plugin", group)))
    registry.register("mine", FakeDriver)
    assert made_by(lookup, "mine", FakeDriver)
    assert "mine" in registry.names()
    for taken in ("mine", builtin, "plugged"):  # registered, built-in, entry point not yet loaded
        with pytest.raises(ConflictError, match=f"{registry.kind} '{taken}' is already known") as info:
            registry.register(taken, NoFirewall)
        assert isinstance(info.value, ValueError)

    # A test double replaces the built-in; unregistering brings the built-in back.
    registry.register(builtin, FakeDriver, replace=True)
    assert made_by(lookup, builtin, FakeDriver)
    registry.unregister(builtin)
    assert made_by(lookup, builtin, factory)

    registry.unregister("mine")
    with pytest.raises(NotFoundError, match="'mine' not found"):
        lookup("mine")
    with pytest.raises(NotFoundError, match="'mine' was not registered"):
        registry.unregister("mine")
    with pytest.raises(NotFoundError, match=f"'{builtin}' was not registered"):
        registry.unregister(builtin)  # built-ins stay
    with pytest.raises(InvalidArgumentError, match="must be callable, not int 5"):
        registry.register("five", 5)
    with pytest.raises(InvalidArgumentError, match="must not be empty"):
        registry.register("", FakeDriver)
    assert "five" not in registry.names() and "" not in registry.names()


def test_two_entry_points_with_one_name_are_a_conflict(monkeypatch, plugin_module):  # type: ignore[no-untyped-def]
    registry: Registry[type] = Registry("widget", "cnm.widgets", dict)
    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        FakeEntryPoints(
            entry_point("w", "cnm_test_plugin:Plugin", "cnm.widgets"),
            entry_point("w", "cnm_test_plugin:OtherPlugin", "cnm.widgets"),
        ),
    )
    with pytest.raises(ConflictError, match="widget 'w': 2 entry points.*'cnm_test_plugin:Plugin' and 'cnm_test_plugin:OtherPlugin'"):
        registry.lookup("w")


def test_builtins_are_loaded_once_and_only_when_needed():  # type: ignore[no-untyped-def]
    calls: list[int] = []

    def builtins() -> dict[str, type]:
        calls.append(1)
        return {"a": FakeDriver}

    registry: Registry[type] = Registry("widget", "cnm.widgets", builtins)
    assert calls == []  # importing a contract module does not import its built-ins
    assert registry.lookup("a") is FakeDriver
    assert registry.lookup("a") is FakeDriver
    assert calls == [1]
    assert "widget" in repr(registry) and "cnm.widgets" in repr(registry)


def test_an_empty_registry_says_so(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(importlib.metadata, "entry_points", FakeEntryPoints())
    registry: Registry[type] = Registry("widget", "cnm.widgets", dict)
    with pytest.raises(NotFoundError, match=r"widget 'x' not found \(known: none\)"):
        registry.lookup("x")
