"""Docker-shaped views: ``docker network inspect``, EndpointSettings, a container's NetworkSettings.

Read-only: each view is built from the records (:mod:`cnm.api._records`)
under the host's lock, by the handles' ``inspect`` / ``settings`` methods.
"""

from __future__ import annotations

from typing import Any

from .._ip import IPAddress
from ..ports import docker_ports_view
from ._records import EndpointRecord, NetworkRecord, SandboxRecord

__all__ = ["endpoint_settings", "network_inspect", "sandbox_inspect"]


def network_inspect(network: NetworkRecord) -> dict[str, Any]:
    containers = {}
    for endpoint in network.endpoints.values():
        if endpoint.sandbox is not None and endpoint.joined:
            v4, v6 = endpoint.address(4), endpoint.address(6)
            containers[endpoint.sandbox.id] = {
                "Name": endpoint.sandbox.name,
                "EndpointID": endpoint.id,
                "MacAddress": endpoint.mac,
                "IPv4Address": str(v4) if v4 is not None else "",
                "IPv6Address": str(v6) if v6 is not None else "",
            }
    families = set(network.pools)
    return {
        "Name": network.name,
        "Id": network.spec.id,
        "Created": network.created,
        "Scope": "local",
        "Driver": network.driver.name,
        # Docker's predefined networks show IPv4 enabled, with no IPAM config.
        "EnableIPv4": 4 in families or network.predefined,
        "EnableIPv6": 6 in families,
        "IPAM": {
            "Driver": network.ipam,
            "Options": {},
            "Config": [
                {
                    "Subnet": str(pool.subnet),
                    "IPRange": str(pool.ip_range) if pool.ip_range else "",
                    "Gateway": str(pool.gateway),
                    "AuxiliaryAddresses": {},
                }
                for pool in network.pools.values()
            ],
        },
        "Internal": network.spec.internal,
        "Attachable": False,
        "Ingress": False,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": containers,
        "Options": dict(network.spec.options),
        "Labels": dict(network.labels),
    }


def endpoint_settings(endpoint: EndpointRecord) -> dict[str, Any]:
    network = endpoint.network
    v4, v6 = endpoint.address(4), endpoint.address(6)
    # What the driver offers as next hops: what its join returned, or before
    # a join what its network offers (none on an internal network).
    offered = endpoint.gateways if endpoint.joined else network.plumbing.gateways
    gateways: dict[int, IPAddress] = {g.version: g for g in reversed(offered)}
    static = {}
    if 4 in endpoint.static and v4 is not None:
        static["IPv4Address"] = str(v4.ip)
    if 6 in endpoint.static and v6 is not None:
        static["IPv6Address"] = str(v6.ip)
    return {
        "IPAMConfig": static or None,
        "Links": None,
        "Aliases": None,
        "MacAddress": endpoint.mac,
        "DriverOpts": None,
        "NetworkID": network.spec.id,
        "EndpointID": endpoint.id,
        "Gateway": str(gateways[4]) if 4 in gateways else "",
        "IPAddress": str(v4.ip) if v4 is not None else "",
        "IPPrefixLen": v4.network.prefixlen if v4 is not None else 0,
        "IPv6Gateway": str(gateways[6]) if 6 in gateways else "",
        "GlobalIPv6Address": str(v6.ip) if v6 is not None else "",
        "GlobalIPv6PrefixLen": v6.network.prefixlen if v6 is not None else 0,
        "DNSNames": None,
    }


def sandbox_inspect(sandbox: SandboxRecord) -> dict[str, Any]:
    joined = [e for e in sandbox.endpoints if e.joined]
    if sandbox.shares is not None:
        # Docker shows a sharer with no sandbox and no networks of its own.
        return {"SandboxID": "", "SandboxKey": "", "Ports": {}, "Networks": {}}
    return {
        "SandboxID": sandbox.id,
        "SandboxKey": sandbox.namespace.path,
        "Ports": docker_ports_view([p for e in joined for p in e.published]),
        "Networks": {e.network.name: endpoint_settings(e) for e in joined},
    }
