"""The creation request of Rtnl.add_link and the errors of a refused creation (no root, nothing sent)."""

from __future__ import annotations

import errno
import os

import pytest

from cnm._newlink import creation_error, info_data, request
from cnm.errors import InterfaceExistsError, InvalidArgumentError, KernelError, MissingKernelFeatureError
from cnm.kernel import Link, Peer, Route, Rtnl
from cnm.netns import Namespace

HERE = Namespace("here", "/nonexistent/here")  # never opened: the link is made where the socket is
NO_SETTINGS = dict(data=None, parent=None, namespace=None, peer=None, mac=None, mtu=None, alias=None, master=None)


def test_a_missing_kind_names_the_module_it_lives_in():
    for kind, module in (("vlan", "8021q"), ("bridge", "bridge"), ("veth", "veth")):
        error = creation_error(OSError(errno.EOPNOTSUPP, "not supported"), kind, f"link 'x' ({kind})")
        assert isinstance(error, MissingKernelFeatureError)
        assert f"module {module!r} not available" in str(error) and f"link 'x' ({kind})" in str(error)


def test_a_taken_name_and_other_refusals_are_typed_kernel_errors():
    taken = creation_error(OSError(errno.EEXIST, "exists"), "dummy", "link 'x' (dummy)")
    assert isinstance(taken, InterfaceExistsError) and taken.errno == errno.EEXIST
    other = creation_error(OSError(errno.EPERM, "no"), "dummy", "link 'x' (dummy)")
    assert isinstance(other, KernelError) and other.errno == errno.EPERM and "link 'x' (dummy): create" in str(other)


@pytest.mark.parametrize(
    "name, settings, reason",
    [
        ("bad/name", {}, "not a valid interface name"),
        ("x", {"mac": "02:00"}, "not a MAC address"),
        ("x", {"alias": "a" * 256}, "longer than the kernel keeps"),
        ("x", {"peer": Peer("y")}, "only for a veth"),
        ("x", {"data": {"no_such_setting": 1}}, "no settings are known"),
        ("x", {"group": -1}, "not a device group"),
        ("x", {"group": True}, "not a device group"),
        ("x", {"port": ("hairpin",)}, "for a link with a master"),
        ("x", {"port": ("nope",), "master": 3}, "bridge port settings"),
        ("x", {"port": "hairpin", "master": 3}, "bridge port settings"),
        ("x", {"port": None, "master": 3}, "bridge port settings"),
        ("x", {"port": [["hairpin"]], "master": 3}, "bridge port settings"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_opened(name, settings, reason):
    with pytest.raises(InvalidArgumentError, match=reason):
        with request("dummy", name, here=HERE, **{**NO_SETTINGS, **settings}):
            pytest.fail("a request was made")


def test_a_request_gives_a_random_mac_and_closes_the_namespace_descriptors(tmp_path):
    there = Namespace("there", str(tmp_path))  # a directory opens like a namespace file
    with request("veth", "v0", here=HERE, **{**NO_SETTINGS, "peer": Peer("v1", there), "namespace": there}) as new:
        assert new.namespace is there and new.mac.startswith("02:") and new.what == "link 'v0' (veth)"
        assert open_on(tmp_path) == 2, "both ends' namespaces held open for the kernel to read"
    assert open_on(tmp_path) == 0
    with request("dummy", "d0", here=HERE, **{**NO_SETTINGS, "namespace": HERE, "mac": "02:AA:00:00:00:01"}) as new:
        assert new.namespace is None and new.mac == "02:aa:00:00:00:01"


def open_on(path):
    fds = "/proc/self/fd"
    return sum(1 for fd in os.listdir(fds) if os.path.realpath(os.path.join(fds, fd)) == str(path))


def test_the_values_are_public_in_cnm_kernel():
    for value in (Link, Peer, Route):
        assert value.__module__ == "cnm.kernel"
    assert Rtnl.__module__ == "cnm.kernel" and not hasattr(Rtnl, "configure_interface")


def test_value_names_and_key_spellings_of_link_settings():
    assert info_data("ipvlan", {"ipvlan_mode": "L3"}, "x") == [("IFLA_IPVLAN_MODE", 1)]
    assert info_data("vxlan", {"IFLA_VXLAN_ID": 1, "vxlan_port": 4789}, "x") == [
        ("IFLA_VXLAN_ID", 1),
        ("IFLA_VXLAN_PORT", 4789),
    ]
    assert info_data("macvlan", {"MACVLAN_MODE": "bridge"}, "x") == [("IFLA_MACVLAN_MODE", "bridge")]
    assert info_data("vlan", {"vlan_id": 10}, "x") == [("IFLA_VLAN_ID", 10)]
    assert info_data("dummy", None, "x") == []
