"""Hypothesis strategies shared by the unit tests: subnets, ranges, ports, port specs."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from hypothesis import assume
from hypothesis import strategies as st

from cnm._ip import IPAddress, IPNetwork
from cnm.ports import PROTOCOLS, PortMapping

__all__ = [
    "SMALL_PREFIXES",
    "bad_port_specs",
    "hands_out_something",
    "host_ips",
    "ip_ranges",
    "ipv4_subnets",
    "ipv6_host_addresses",
    "ipv6_subnets",
    "never_handed_out",
    "pool_requests",
    "port_mappings",
    "port_numbers",
    "port_specs",
    "protocols",
    "subnet_addresses",
    "subnets",
]

port_numbers = st.integers(min_value=1, max_value=65535)
protocols = st.sampled_from(PROTOCOLS)


def ipv4_subnets(min_prefix: int = 8, max_prefix: int = 30) -> st.SearchStrategy[IPv4Network]:
    """Any IPv4 subnet with a prefix length in [min_prefix, max_prefix]."""
    return st.builds(
        lambda address, prefix: IPv4Network((address, prefix), strict=False),
        st.integers(min_value=0, max_value=2**32 - 1),
        st.integers(min_value=min_prefix, max_value=max_prefix),
    )


def ipv6_subnets(min_prefix: int = 16, max_prefix: int = 126) -> st.SearchStrategy[IPv6Network]:
    """Any IPv6 subnet with a prefix length in [min_prefix, max_prefix]."""
    return st.builds(
        lambda address, prefix: IPv6Network((address, prefix), strict=False),
        st.integers(min_value=0, max_value=2**128 - 1),
        st.integers(min_value=min_prefix, max_value=max_prefix),
    )


def subnets(family: int, min_prefix: int, max_prefix: int) -> st.SearchStrategy[IPNetwork]:
    """Any subnet of *family* with a prefix length in [min_prefix, max_prefix]."""
    return ipv4_subnets(min_prefix, max_prefix) if family == 4 else ipv6_subnets(min_prefix, max_prefix)


@st.composite
def ip_ranges(draw: st.DrawFn, subnet: IPNetwork) -> IPNetwork:
    """A block inside *subnet* (possibly all of it, possibly a single address)."""
    bits = subnet.max_prefixlen
    prefix = draw(st.integers(min_value=subnet.prefixlen, max_value=bits))
    index = draw(st.integers(min_value=0, max_value=2 ** (prefix - subnet.prefixlen) - 1))
    # By the subnet's own class: ip_network() would take a small int for IPv4.
    return type(subnet)((int(subnet.network_address) + index * 2 ** (bits - prefix), prefix))


def subnet_addresses(subnet: IPNetwork) -> st.SearchStrategy[IPAddress]:
    """Any address of *subnet*, its first and last included."""
    return st.integers(min_value=int(subnet.network_address), max_value=int(subnet.broadcast_address)).map(
        IPv4Address if subnet.version == 4 else IPv6Address
    )


def never_handed_out(subnet: IPNetwork, gateway: IPAddress | None) -> set[IPAddress]:
    """The addresses of *subnet* no pool hands out: the network address, the
    IPv4 broadcast address (IPv6 has none) and the gateway (the first address
    after the network address unless given)."""
    never = {subnet.network_address, gateway or subnet.network_address + 1}
    if subnet.version == 4:
        never.add(subnet.broadcast_address)
    return never


#: Pool sizes small enough for a model that lists every address: IPv4 /22-/30,
#: IPv6 /118-/126 (the same numbers of addresses).
SMALL_PREFIXES = {4: (22, 30), 6: (118, 126)}


@st.composite
def pool_requests(
    draw: st.DrawFn, min_prefix: int | None = None, max_prefix: int | None = None, family: int | None = None
) -> tuple[IPNetwork, IPNetwork | None, IPAddress | None]:
    """A valid (subnet, ip_range, gateway) triple; range and gateway may be None.

    Of *family* (either, unless told), and small by default, so that tests
    can compare against a model that lists every address; *min_prefix* and
    *max_prefix* count from the top of :data:`SMALL_PREFIXES` for IPv6 (an
    IPv4 24 means an IPv6 120). Valid means the range holds an address to
    hand out (see :func:`never_handed_out`).
    """
    if family is None:
        family = draw(st.sampled_from([4, 6]))
    low, high = SMALL_PREFIXES[family]
    shift = 0 if family == 4 else 96
    low = low if min_prefix is None else min_prefix + shift
    high = high if max_prefix is None else max_prefix + shift
    subnet = draw(subnets(family, low, high))
    ip_range = draw(st.none() | ip_ranges(subnet))
    last = int(subnet.broadcast_address) - (subnet.version == 4)
    gateway = draw(
        st.none()
        | st.integers(min_value=int(subnet.network_address) + 1, max_value=last).map(
            IPv4Address if family == 4 else IPv6Address
        )
    )
    assume(hands_out_something(subnet, ip_range, gateway))
    return subnet, ip_range, gateway


def hands_out_something(subnet: IPNetwork, ip_range: IPNetwork | None, gateway: IPAddress | None) -> bool:
    """Whether the range (or the subnet) has an address that is not one of
    :func:`never_handed_out`."""
    never = never_handed_out(subnet, gateway)
    return any(address not in never for address in ip_range or subnet)  # stops within 4 addresses


#: A specific IPv6 host address a port may be published on: not ::1 (refused,
#: see cnm.ports) and not IPv4-mapped (refused: IPv4 arrives as IPv4).
ipv6_host_addresses = (
    st.integers(min_value=0, max_value=2**128 - 1)
    .map(IPv6Address)
    .filter(lambda a: a != IPv6Address("::1") and a.ipv4_mapped is None)
)

#: A host address for a port mapping: None (every address), a specific IPv4
#: one, the IPv6 wildcard or a specific IPv6 one.
host_ips = (
    st.none()
    | st.integers(min_value=1, max_value=2**32 - 1).map(IPv4Address)
    | st.just(IPv6Address("::"))
    | ipv6_host_addresses
)

port_mappings = st.builds(
    PortMapping,
    container_port=port_numbers,
    host_port=st.none() | port_numbers,
    protocol=protocols,
    host_ip=host_ips,
)


@st.composite
def _port_range(draw: st.DrawFn, length: int | None = None) -> tuple[str, int, int]:
    """Text for a port or a port range, with its ends; *length* fixes the count."""
    if length is None:
        length = draw(st.integers(min_value=1, max_value=4))
    first = draw(st.integers(min_value=1, max_value=65536 - length))
    last = first + length - 1
    if length == 1 and draw(st.booleans()):
        return f"{first}", first, last
    return f"{first}-{last}", first, last


@st.composite
def port_specs(draw: st.DrawFn) -> tuple[str, list[PortMapping]]:
    """A valid ``-p`` spec in any of its forms, with the mappings it means.

    The expected mappings are built from the parts drawn, not by parsing, so
    that a test comparing them with :meth:`PortMapping.parse` checks the
    parser against an independent description of the syntax.
    """
    container_text, container_first, container_last = draw(_port_range())
    count = container_last - container_first + 1
    with_host_port = draw(st.booleans())
    host_text, host_first = "", None
    if with_host_port:
        host_text, host_first, _ = draw(_port_range(length=count))
    host_ip = draw(st.none() | st.integers(min_value=0, max_value=2**32 - 1).map(IPv4Address) | ipv6_host_addresses)
    protocol = draw(st.none() | protocols)
    protocol_text = "" if protocol is None else "/" + draw(st.sampled_from([protocol, protocol.upper()]))

    if isinstance(host_ip, IPv6Address):
        # Any spelling of the address, not only the compressed one str() gives.
        address = draw(st.sampled_from([str(host_ip), host_ip.exploded, host_ip.exploded.upper()]))
        spec = f"[{address}]:{host_text}:{container_text}"
    elif host_ip is not None:
        spec = f"{host_ip}:{host_text}:{container_text}"
    elif with_host_port:
        spec = f"{host_text}:{container_text}"
    else:
        spec = container_text
    spec += protocol_text

    wildcard = host_ip is None or host_ip == IPv4Address("0.0.0.0")
    expected = [
        PortMapping(
            container_port=container_first + offset,
            host_port=None if host_first is None else host_first + offset,
            protocol=protocol or "tcp",
            host_ip=None if wildcard else host_ip,
        )
        for offset in range(count)
    ]
    return spec, expected


@st.composite
def bad_port_specs(draw: st.DrawFn) -> tuple[str, str]:
    """An invalid ``-p`` spec and a word its error message must contain."""
    good_port = draw(port_numbers)
    kind = draw(
        st.sampled_from(
            [
                "port_out_of_range",
                "protocol",
                "unequal_ranges",
                "reversed_range",
                "ipv6_unbracketed",
                "ipv6_loopback",
                "bad_ip",
                "not_a_number",
            ]
        )
    )
    if kind == "port_out_of_range":
        bad = draw(st.integers(min_value=65536, max_value=10**9) | st.just(0))
        return draw(st.sampled_from([f"{bad}", f"{bad}:{good_port}", f"{good_port}:{bad}"])), "range"
    if kind == "protocol":
        name = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=6))
        if name in PROTOCOLS:
            name += "x"
        return f"{good_port}/{name}", "protocol"
    if kind == "unequal_ranges":
        first = draw(st.integers(min_value=1, max_value=60000))
        host_length, container_length = draw(
            st.tuples(st.integers(1, 5), st.integers(1, 5)).filter(lambda lengths: lengths[0] != lengths[1])
        )
        host = f"{first}-{first + host_length - 1}" if host_length > 1 else f"{first}"
        container = f"{first}-{first + container_length - 1}" if container_length > 1 else f"{first}"
        return f"{host}:{container}", "same length"
    if kind == "reversed_range":
        low = draw(st.integers(min_value=1, max_value=65534))
        high = draw(st.integers(min_value=low + 1, max_value=65535))
        return f"{high}-{low}", "ends before it starts"
    if kind == "ipv6_unbracketed":
        address = draw(st.sampled_from(["::", "fe80::1", "2001:db8::5"]))
        return draw(st.sampled_from([f"{address}:80:80", f"{address}::80"])), "brackets"
    if kind == "ipv6_loopback":
        spelling = draw(st.sampled_from(["::1", "0:0:0:0:0:0:0:1", "0000::0001"]))
        return draw(st.sampled_from([f"[{spelling}]:80:80", f"[{spelling}]::80/udp"])), "loopback"
    if kind == "bad_ip":
        octets = draw(st.lists(st.integers(0, 300), min_size=1, max_size=5).filter(lambda o: len(o) != 4 or max(o) > 255))
        address = ".".join(map(str, octets))
        return f"{address}:8080:80", "host address"
    word = draw(st.text(alphabet="abcxyz _+", min_size=1, max_size=5))
    return draw(st.sampled_from([f"{word}", f"{word}:80", f"80:{word}"])), "port"
