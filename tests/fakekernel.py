"""An in-memory kernel for unit tests of cnm's orchestration (no root, no netlink).

It implements the facade :class:`cnm.facade.Kernel` and the verbs of
:class:`cnm.kernel.Rtnl` that the orchestration and the bridge driver use, over
plain dictionaries: namespaces hold links, addresses, routes and sysctls. It
is faithful where the orchestration depends on the kernel's behaviour:

* deleting a namespace removes the links inside it at once, but the host end
  of a veth whose other end was inside goes *later* (as the kernel dismantles
  a namespace in a work queue): it stays until :meth:`FakeKernel.finish_removals`
  or a wait for it with a timeout;
* a veth is made whole or not at all, and deleting either end deletes both;
* names are unique per namespace (EEXIST), deleting what is gone is ENODEV.

Every change is counted; ``fail_at = k`` makes the k-th change fail before it
happens (the fault injection of the real-kernel tests, without a kernel), and
``log`` keeps the changes in order; ``fail_on(verb, what)`` fails the changes it picks.
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable, Iterable
from ipaddress import IPv4Network, ip_network
from typing import Any

from cnm.errors import KernelError

_tokens = itertools.count(1)


class Injected(KernelError):
    pass


class FakeLink:
    def __init__(self, index, name, kind, *, mac=None, alias=None, master=None, mtu=None):
        self.index, self.name, self.kind = index, name, kind
        self.mac, self.alias, self.master, self.mtu = mac, alias, master, mtu
        self.up = False
        #: (namespace, index) of a veth's other end
        self.peer: tuple[FakeNamespace, int] | None = None

    def __repr__(self):
        return f"<link {self.index} {self.name} {self.kind}>"


class FakeNamespace:
    def __init__(self, kernel: FakeKernel, name: str, path: str) -> None:
        self.kernel, self.name, self.path = kernel, name, path
        self.links: dict[int, FakeLink] = {}
        self.addresses: list[tuple[int, Any]] = []
        self.routes: list[tuple[Any, Any, int | None]] = []
        self.sysctls: dict[str, str] = {}
        self._next = itertools.count(1)
        self.alive = True
        self.add_link(FakeLink(next(self._next), "lo", None))

    def __repr__(self):
        return f"FakeNamespace({self.name!r})"

    @property
    def owned(self) -> bool:
        return self.path.startswith("/run/")

    def add_link(self, link: FakeLink) -> FakeLink:
        if any(l.name == link.name for l in self.links.values()):
            raise KernelError(errno.EEXIST, f"link {link.name!r}: File exists")
        self.links[link.index] = link
        return link

    def new_index(self) -> int:
        return next(self._next)

    def remove_link(self, index: int) -> None:
        link = self.links.pop(index, None)
        if link is not None:  # its per-interface sysctls go with it
            self.sysctls = {k: v for k, v in self.sysctls.items() if f"/conf/{link.name}/" not in k}
        self.addresses = [(i, a) for i, a in self.addresses if i != index]
        self.routes = [r for r in self.routes if r[2] != index]

    # what cnm.netns.Namespace offers
    def delete(self) -> None:
        self.kernel.change("delete namespace", self.name)
        self.kernel.unmount(self)

    def run(self, fn: Callable[[], Any]) -> Any:
        return fn()

    quick = run

    def write_sysctl(self, key: str, value: str) -> None:
        self.kernel.change("sysctl", f"{self.name} {key}={value}")
        self.sysctls[key] = value

    def read_sysctl(self, key: str) -> str:
        return self.sysctls.get(key, "0")

    def state(self) -> dict[str, Any]:
        return {
            "links": sorted((l.name, l.kind, l.master, l.alias, l.up) for l in self.links.values()),
            "addresses": sorted((self.links[i].name, str(a)) for i, a in self.addresses if i in self.links),
            "routes": sorted((str(d), str(v), self.links[o].name if o in self.links else None) for d, v, o in self.routes),
            "sysctls": dict(self.sysctls),
        }


class FakeLinkInfo:
    def __init__(self, link: FakeLink) -> None:
        self.index, self.name, self.kind, self.master = link.index, link.name, link.kind, link.master
        self.alias, self.mac, self.up = link.alias, link.mac, link.up


class FakeRtnl:
    """The Rtnl verbs, in one fake namespace."""

    def __init__(self, namespace: FakeNamespace) -> None:
        self.namespace = namespace
        self.closed = False
        namespace.kernel.open_sockets += 1

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.namespace.kernel.open_sockets -= 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _ns(self) -> FakeNamespace:
        if self.closed:
            raise KernelError(errno.EBADF, "fake: socket closed")
        if not self.namespace.alive:
            raise KernelError(errno.ENOENT, f"fake: namespace {self.namespace.name} is gone")
        return self.namespace

    # reading
    def link(self, name=None, index=None):
        ns = self._ns()
        for link in ns.links.values():
            if (name is None or link.name == name) and (index is None or link.index == index):
                return FakeLinkInfo(link)
        return None

    def link_index(self, name):
        found = self.link(name=name)
        return found.index if found is not None else None

    def links(self):
        return [FakeLinkInfo(l) for l in self._ns().links.values()]

    def routes(self, family: int = 4):
        return [d for d, _, _ in self._ns().routes if d.version == family and d.prefixlen > 0]

    def addresses(self, family: int | None = 4):
        return [(i, a) for i, a in self._ns().addresses if family is None or a.version == family]

    # changes
    def loopback_up(self):
        self.set_up(1, "loopback")

    def set_up(self, index, what):
        ns = self._ns()
        ns.kernel.change("set up", f"{ns.name} {index}")
        self._get(index, what).up = True

    def add_bridge(self, name, *, alias, mac, mtu=None, multicast_snooping=True):
        ns = self._ns()
        ns.kernel.change("add bridge", f"{ns.name} {name}")
        link = ns.add_link(FakeLink(ns.new_index(), name, "bridge", mac=mac, alias=alias, mtu=mtu))
        link.up = True
        return link.index

    def add_veth(self, name, *, mac, alias, master, peer_name, peer_namespace, peer_mac=None, mtu=None, group=0):
        ns = self._ns()
        ns.kernel.change("add veth", f"{ns.name} {name} / {peer_namespace.name} {peer_name}")
        if not peer_namespace.alive:
            raise KernelError(errno.ENOENT, "fake: peer namespace is gone")
        if any(l.name == peer_name for l in peer_namespace.links.values()):
            raise KernelError(errno.EEXIST, f"link {peer_name!r}: File exists")
        here = ns.add_link(FakeLink(ns.new_index(), name, "veth", mac=mac, alias=alias, master=master, mtu=mtu))
        here.up = True
        there = peer_namespace.add_link(FakeLink(peer_namespace.new_index(), peer_name, "veth", mac=peer_mac, mtu=mtu))
        here.peer, there.peer = (peer_namespace, there.index), (ns, here.index)
        return here.index, there.index

    def add_link(self, kind, name, **kwargs):
        ns = self._ns()
        ns.kernel.change("add link", f"{ns.name} {name} ({kind})")
        target = kwargs.get("namespace") or ns
        link = target.add_link(FakeLink(target.new_index(), name, kind, mac=kwargs.get("mac"), alias=kwargs.get("alias")))
        return link

    def delete_link(self, index, what):
        ns = self._ns()
        if index not in ns.links:
            raise OSError(errno.ENODEV, "No such device")
        ns.kernel.change("delete link", f"{ns.name} {ns.links[index].name}")
        link = ns.links[index]
        ns.remove_link(index)
        if link.peer is not None:
            peer_ns, peer_index = link.peer
            peer_ns.remove_link(peer_index)

    def wait_gone(self, indexes: Iterable[int], timeout: float, *, stall: float | None = None) -> list[int]:
        ns = self._ns()
        wanted = set(indexes)
        if timeout > 0:
            ns.kernel.finish_removals(wanted)
        return sorted(i for i in wanted if i in ns.links)

    def add_address(self, index, address, what):
        ns = self._ns()
        ns.kernel.change("add address", f"{ns.name} {index} {address}")
        self._get(index, what)
        if (index, address) in ns.addresses:
            raise KernelError(errno.EEXIST, f"{what}: add address {address}: File exists")
        ns.addresses.append((index, address))

    def add_route(self, destination, gateway, what, *, oif=None):
        ns = self._ns()
        ns.kernel.change("add route", f"{ns.name} {destination} via {gateway}")
        if any(d == destination for d, _, _ in ns.routes):
            raise KernelError(errno.EEXIST, f"{what}: add route {destination}: File exists")
        ns.routes.append((destination, gateway, oif))

    def configure_link(self, name, addresses, routes, what, *, index=None):
        ns = self._ns()
        if index is None:
            index = self.link_index(name)
        if index is None:
            raise KernelError(errno.ENODEV, f"{what}: interface {name!r} not found")
        ns.kernel.change("configure", f"{ns.name} {name} {list(map(str, addresses))} {[(str(r.destination), str(r.via)) for r in routes]}")
        link = self._get(index, what)
        link.up = True
        ns.addresses += [(index, a) for a in addresses]
        ns.routes += [(r.destination, r.via, index) for r in routes]

    def _get(self, index, what):
        try:
            return self._ns().links[index]
        except KeyError:
            raise KernelError(errno.ENODEV, f"{what}: no link {index}") from None


class FakeSockDiag:
    """cnm.sock_diag.SockDiag over one fake namespace: answers FakeKernel.sockets, logs each look."""

    def __init__(self, namespace: FakeNamespace) -> None:
        self.namespace = namespace
        self.closed = False
        namespace.kernel.open_sockets += 1

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.namespace.kernel.open_sockets -= 1

    def holding(self, protocols, families, ports=(1, 65535)):
        assert not self.closed, "sock_diag socket used after close"
        kernel = self.namespace.kernel
        wanted, of = tuple(protocols), tuple(families)
        kernel.socket_dumps.append((self.namespace.path, wanted, of, ports))
        held = kernel.sockets.get(self.namespace.path, [])
        return [s for s in held if s.protocol in wanted and s.family in of and ports[0] <= s.port <= ports[1]]


class FakeMountDir:
    def __init__(self, kernel: FakeKernel, path: str) -> None:
        self.kernel, self.path = kernel, path

    def delete(self) -> None:
        self.kernel.change("unmount directory", self.path)
        for ns in [n for n in self.kernel.namespaces.values() if n.path.startswith(self.path + "/")]:
            self.kernel.unmount(ns)
        self.kernel.mount_dirs.discard(self.path)


class FakeOwner:
    def __init__(self, kernel: FakeKernel, token: str) -> None:
        self.kernel, self.token = kernel, token

    def remove(self) -> None:
        self.kernel.owners.discard(self.token)

    def delete(self) -> None:
        pass


class FakeKernel:
    """The facade of cnm.facade.Kernel, in memory."""

    def __init__(self) -> None:
        self.namespaces: dict[str, FakeNamespace] = {}
        self.root = FakeNamespace(self, "root", "/proc/fake/ns/net")
        self.root.add_link(FakeLink(self.root.new_index(), "eth0", "veth"))
        self.mount_dirs: set[str] = set()
        self.owners: set[str] = set()
        self.open_sockets = 0
        #: host ends of veths whose sandbox end went with its namespace: (namespace, index)
        self.dying: set[tuple[FakeNamespace, int]] = set()
        self.count = 0
        self.fail_at: int | None = None
        #: fails every change for which fail_on(verb, what) is true
        self.fail_on: Callable[[str, str], bool] | None = None
        self.log: list[tuple[str, str]] = []
        #: what a FakeSockDiag answers: the sockets that hold ports, per namespace path
        self.sockets: dict[str, list[Any]] = {}
        #: every FakeSockDiag look: (namespace path, protocols, families, (first port, last port))
        self.socket_dumps: list[tuple[str, tuple[str, ...], tuple[int, ...], tuple[int, int]]] = []

    def change(self, verb: str, what: str) -> None:
        """Every change comes here first: counted, logged, and failed when told."""
        self.count += 1
        if (self.fail_at is not None and self.count == self.fail_at) or (self.fail_on is not None and self.fail_on(verb, what)):
            raise Injected(errno.EPERM, f"injected: {verb} {what}")
        self.log.append((verb, what))

    def unmount(self, ns: FakeNamespace) -> None:
        if not ns.alive:
            return
        ns.alive = False
        self.namespaces.pop(ns.path, None)
        for link in ns.links.values():
            if link.peer is not None and link.peer[0].alive:
                self.dying.add(link.peer)
        ns.links.clear()

    def finish_removals(self, only: set[int] | None = None) -> None:
        """What the kernel's work queue does later: the host ends of veths of deleted namespaces go."""
        for ns, index in list(self.dying):
            if only is None or index in only:
                ns.remove_link(index)
                self.dying.discard((ns, index))

    def snapshot(self) -> dict[str, Any]:
        """Every live namespace's state, by name (what a failure must leave as it was)."""
        live = {ns.name: ns.state() for ns in [self.root, *self.namespaces.values()] if ns.alive}
        return {"namespaces": live, "mount dirs": sorted(self.mount_dirs)}

    # ---- the facade ----
    def current_namespace(self):
        return self.root

    def create_namespace(self, name, *, path=None, here=False, ipv6_off=False):
        path = path or f"/run/netns/{name}"
        if path in self.namespaces:
            raise KernelError(errno.EEXIST, f"namespace {name!r}: {path} already exists")
        self.change("create namespace", name)
        ns = FakeNamespace(self, name, path)
        ns.links[1].up = True
        if ipv6_off:
            ns.sysctls["net/ipv6/conf/default/disable_ipv6"] = "1"
        self.namespaces[path] = ns
        return ns, FakeRtnl(ns)

    def rtnl(self, namespace):
        return FakeRtnl(namespace)

    def inside(self, namespace, fn):
        with FakeRtnl(namespace) as rtnl:
            return fn(rtnl)

    def sock_diag(self, namespace):
        return FakeSockDiag(namespace)

    def sweep(self, prefix):
        for ns in [n for n in self.namespaces.values() if n.name.startswith(prefix) and n.path.startswith("/run/netns/")]:
            self.unmount(ns)
        return []

    def mount_dir(self, token):
        path = f"/run/cnm/{token}"
        self.change("mount directory", path)
        self.mount_dirs.add(path)
        return FakeMountDir(self, path)

    def remove_mount_dir(self, token):
        FakeMountDir(self, f"/run/cnm/{token}").delete()

    def claim_owner(self, token, kind, netns_path, firewall):
        token = f"f{next(_tokens):05x}"  # unique per test run, whatever the random draw
        self.owners.add(token)
        return FakeOwner(self, token)

    def pin_namespace(self, token, namespace):
        return FakeOwner(self, token)  # nothing to pin; its delete() is all the host calls

    def machine_id(self):
        return "fake-machine"

    def watch(self, host, record, what):
        pass


__all__ = ["FakeKernel", "Injected", "IPv4Network"]
