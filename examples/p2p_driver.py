"""A network driver written outside cnm: routed point-to-point links.

Each sandbox gets a veth of its own whose host end sits on no bridge. The
host routes the sandbox's address (a /32) to that end, and the sandbox
reaches everything through the link-local gateway 169.254.1.1, which the
host end answers for by proxy ARP (the way Calico wires pods). There is no
layer 2 between sandboxes: all their traffic crosses the host's routing
table.

It uses only cnm's public pieces, as a third party would: the driver
contract (:mod:`cnm.drivers`), the link verb :meth:`cnm.kernel.Rtnl.add_link`,
and the registry the driver is made known in (``cnm.drivers.DRIVERS``; an
installed package would name it under the entry-point group ``cnm.drivers``
instead). Run this file to see it work in an isolated host.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, ip_interface, ip_network

import cnm
from cnm.drivers import (
    DRIVERS,
    Capabilities,
    EndpointSpec,
    NetworkPlumbing,
    NetworkSpec,
    Peer,
    Route,
    SandboxLink,
    SandboxPort,
)
from cnm.errors import InvalidArgumentError
from cnm.kernel import Rtnl
from cnm.undo import UndoLog

#: What every sandbox routes through: answered by its own host end.
GATEWAY = IPv4Address("169.254.1.1")


class PointToPointDriver:
    name = "p2p"
    # IPv4 only; the host routes but there is no bridge for the firewall to
    # name, so ports cannot be published on these networks.
    capabilities = Capabilities(families=frozenset({4}), routed=False)

    def validate(self, spec: NetworkSpec) -> None:
        if spec.options:
            raise InvalidArgumentError(
                f"network {spec.name!r}: the p2p driver takes no options (got {', '.join(sorted(spec.options))})"
            )

    def create_network(self, host: Rtnl, spec: NetworkSpec, undo: UndoLog) -> NetworkPlumbing:
        # Nothing in the kernel until a sandbox joins: each join makes its own link.
        return NetworkPlumbing(interface="", index=0, owner=spec.owner, gateways=() if spec.internal else (GATEWAY,))

    def join(
        self, host: Rtnl, network: NetworkPlumbing, endpoint: EndpointSpec, sandbox: SandboxPort, undo: UndoLog
    ) -> SandboxLink:
        name = "p2p" + endpoint.id[:12]
        what = f"endpoint {endpoint.name!r}: veth {name!r}"
        link = host.add_link(
            "veth",
            name,
            peer=Peer(endpoint.interface, sandbox.namespace, endpoint.mac),
            alias=f"cnm:{network.owner}:endpoint/{endpoint.name}",
            up=True,
        )
        undo.push(what, lambda: sandbox.release_link(link.index, what))
        # The sysctl and the route belong to the host end and go with it.
        host.namespace.write_sysctl(f"net/ipv4/conf/{name}/proxy_arp", "1")
        address = endpoint.addresses[0]
        host.add_route(ip_network(f"{address.ip}/32"), None, what, oif=link.index)
        return SandboxLink(
            endpoint.interface,
            link.peer_index,
            (ip_interface(f"{address.ip}/32"),),
            # The gateway is on the link, though in no subnet of the sandbox's.
            routes=(Route(ip_network(f"{GATEWAY}/32")),),
            gateways=network.gateways,
        )


def main() -> None:
    DRIVERS.register("p2p", PointToPointDriver, replace=True)
    with cnm.Host.isolated("p2p") as host:
        net = host.create_network("routed", "p2p", subnet="10.77.0.0/24")
        a, b = host.create_sandbox("a"), host.create_sandbox("b")
        net.connect(a)
        net.connect(b)
        print("a:", a.address(net).ip, "b:", b.address(net).ip)
        b_ip = str(b.address(net).ip)
        server = b.call(lambda: socket.create_server((b_ip, 7000)))
        try:
            with a.call(lambda: socket.create_connection((b_ip, 7000), timeout=5)) as client:
                peer, _ = server.accept()
                client.sendall(b"hello over p2p")
                print("b got:", peer.recv(100).decode(), "from", peer.getpeername()[0])
                peer.close()
        finally:
            server.close()
        routes = host.run(["ip", "-4", "route", "show", "root", "10.77.0.0/24"], capture_output=True, text=True)
        print("host routes:", len(routes.stdout.splitlines()), "(one /32 per sandbox, no bridge)")
    print("torn down")


if __name__ == "__main__":
    main()
