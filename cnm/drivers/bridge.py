"""The bridge driver: a Linux bridge in the host namespace, a veth per endpoint.

Like Docker's default driver: the bridge carries the gateway address, each
endpoint is a veth pair with one end enslaved to the bridge and the other
inside the sandbox, and the host routes and NATs for the subnet (the
firewall's job; this driver only marks the network as routed).
"""

from __future__ import annotations

import errno
from ipaddress import IPv6Interface

from .._links import IFNAME_RULE, valid_ifname
from ..errors import InterfaceExistsError, InvalidArgumentError, KernelError
from ..firewall import SANDBOX_PORT_GROUP
from ..kernel import Rtnl
from ..undo import UndoLog
from . import (
    Capabilities,
    EndpointSpec,
    NetworkPlumbing,
    NetworkSpec,
    SandboxLink,
    SandboxPort,
)

__all__ = ["BridgeDriver", "host_end_name"]

#: The link-local address of every bridge with IPv6.
BRIDGE_LINK_LOCAL = IPv6Interface("fe80::1/64")

OPT_NAME = "com.docker.network.bridge.name"
OPT_MTU = "com.docker.network.driver.mtu"
#: "true" turns the kernel's IGMP/MLD snooping on (cnm's default is off, see create_network)
OPT_MULTICAST_SNOOPING = "cnm.bridge.multicast_snooping"
_KNOWN = {OPT_NAME, OPT_MTU, OPT_MULTICAST_SNOOPING}
_BOOLEANS = {"true": True, "false": False}


def host_end_name(endpoint_id: str) -> str:
    """The host end of an endpoint's veth: "veth" and 11 hex digits of its
    (random) id, the most an interface name holds. (Docker takes 7: at a
    thousand endpoints on one host, two of them share a name about once in
    540 such sets; with 11, once in 35 million.)"""
    return f"veth{endpoint_id[:11]}"


def _bridge_name(spec: NetworkSpec) -> str:
    return spec.options.get(OPT_NAME) or f"br-{spec.id[:12]}"


def _name_taken(spec: NetworkSpec, name: str) -> InterfaceExistsError:
    return InterfaceExistsError(
        errno.EEXIST, f"network {spec.name!r}: bridge name {name!r} is already taken by another interface of the host"
    )


class BridgeDriver:
    name = "bridge"
    capabilities = Capabilities(families=frozenset({4, 6}), routed=True)

    def validate(self, spec: NetworkSpec) -> None:
        unknown = sorted(set(spec.options) - _KNOWN)
        if unknown:
            raise InvalidArgumentError(
                f"network {spec.name!r}: unknown bridge option(s) {', '.join(unknown)} (known: {', '.join(sorted(_KNOWN))})"
            )
        name = _bridge_name(spec)
        if not valid_ifname(name):
            raise InvalidArgumentError(
                f"network {spec.name!r}: bridge name {name!r} is not a valid interface name ({IFNAME_RULE})"
            )
        if spec.options.get(OPT_MULTICAST_SNOOPING, "false") not in _BOOLEANS:
            raise InvalidArgumentError(
                f"network {spec.name!r}: {OPT_MULTICAST_SNOOPING} must be 'true' or 'false', "
                f"got {spec.options[OPT_MULTICAST_SNOOPING]!r}"
            )
        if OPT_MTU in spec.options:
            mtu = spec.options[OPT_MTU]
            # isascii too: isdigit() alone takes full-width and other non-ASCII digits.
            if not (mtu.isascii() and mtu.isdigit()) or not 68 <= int(mtu) <= 65535:
                raise InvalidArgumentError(f"network {spec.name!r}: {OPT_MTU} {mtu!r} is not an MTU in 68..65535")

    def create_network(self, host: Rtnl, spec: NetworkSpec, undo: UndoLog) -> NetworkPlumbing:
        name = _bridge_name(spec)
        mtu = int(spec.options[OPT_MTU]) if OPT_MTU in spec.options else None
        what = f"network {spec.name!r}: bridge {name!r}"
        if host.link_index(name) is not None:
            raise _name_taken(spec, name)
        mac = self.bridge_mac(spec)
        # Multicast snooping is off unless asked for: with it on, the kernel
        # re-arms the multicast state of every port of the bridge whenever a
        # port comes or goes, so building or removing N sandboxes costs O(N^2)
        # (measured at N=1000: about a sixth of the kernel's work in teardown). A
        # container bridge has no IGMP querier anyway, so multicast is
        # flooded to every port, as a bridge without snooping does.
        snooping = _BOOLEANS[spec.options.get(OPT_MULTICAST_SNOOPING, "false")]
        try:
            index = host.add_bridge(
                name, alias=f"cnm:{spec.owner}:network/{spec.name}", mac=mac, mtu=mtu, multicast_snooping=snooping
            )
        except KernelError as exc:
            if exc.errno == errno.EEXIST:  # made by someone else since the look-up
                raise _name_taken(spec, name) from exc
            raise
        undo.push(what, lambda: host.delete_link(index, what))
        # The sysctl and the addresses belong to the bridge and go with it.
        # Without IPv6, no IPv6 link-local address or route appears on the
        # bridge when its first port comes up (as Docker does without --ipv6);
        # with it, the bridge needs IPv6 on (an isolated host turns it off by
        # default, see cnm.api.isolated) before it can carry an IPv6 gateway.
        ipv6 = any(subnet.version == 6 for subnet in spec.subnets)
        host.namespace.write_sysctl(f"net/ipv6/conf/{name}/disable_ipv6", "0" if ipv6 else "1")
        for address in spec.interfaces():
            host.add_address(index, address, what)
        if ipv6:
            # A link-local address too (Docker's bridges have fe80::1): the
            # kernel solicits a neighbour from a link-local source unless the
            # packet that needs it comes from an address of the bridge's own,
            # so without one nothing forwarded into the bridge (a published
            # port's traffic from outside) finds its sandbox (measured; see the
            # docs' explanation page, "A sandbox needs no IPv6 link-local address").
            host.add_address(index, BRIDGE_LINK_LOCAL, what)
        # Sandboxes of an internal network get no default route (as in Docker).
        gateways = () if spec.internal else spec.gateways
        return NetworkPlumbing(interface=name, index=index, owner=spec.owner, mtu=mtu, gateways=gateways)

    def bridge_mac(self, spec: NetworkSpec) -> str:
        """The bridge's fixed MAC: locally administered, from the network's id."""
        return "02:" + ":".join(spec.id[i : i + 2] for i in range(0, 10, 2))

    def join(
        self, host: Rtnl, network: NetworkPlumbing, endpoint: EndpointSpec, sandbox: SandboxPort, undo: UndoLog
    ) -> SandboxLink:
        host_end = host_end_name(endpoint.id)
        what = f"endpoint {endpoint.name!r}: veth {host_end!r}"
        index, peer_index = host.add_veth(
            host_end,
            mac="02:" + ":".join(endpoint.id[i : i + 2] for i in range(8, 18, 2)),
            alias=f"cnm:{network.owner}:endpoint/{endpoint.name}",
            master=network.index,
            peer_name=endpoint.interface,
            peer_namespace=sandbox.namespace,
            peer_mac=endpoint.mac,
            mtu=network.mtu,
            # What the firewall knows sandbox ports by (bridged frames carry no bridge name it can read).
            group=SANDBOX_PORT_GROUP,
        )
        undo.push(what, lambda: sandbox.release_link(index, what))
        return SandboxLink(endpoint.interface, peer_index, endpoint.addresses, gateways=network.gateways)
