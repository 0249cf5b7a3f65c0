"""The IPAM contract, the default driver and its allocator: pure, no kernel."""

from __future__ import annotations

import importlib.metadata
import tracemalloc
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import cnm.ipam
from cnm._ip import IPAddress, IPNetwork
from cnm.errors import ConflictError, ExhaustedError, InvalidArgumentError, NotFoundError
from cnm.ipam import (
    RESERVED_SUBNETS,
    RESERVED_SUBNETS_IPV6,
    AddressPool,
    IPAMDriver,
    ipam_driver,
    parse_address,
    parse_subnet,
)
from cnm.ipam.default import DefaultIPAM, SubnetAllocator, ula_prefix
from tests.strategies import (
    hands_out_something,
    ip_ranges,
    ipv4_subnets,
    ipv6_subnets,
    never_handed_out,
    pool_requests,
    subnet_addresses,
)

SEED = "host-a1b2c3"

# Docker's default pools, spelled out here rather than imported, so that a
# mistake in the module's list shows up as a failure.
DOCKER_DEFAULT_POOLS = [IPv4Network(f"172.{n}.0.0/16") for n in range(17, 32)] + [
    IPv4Network(f"192.168.{16 * n}.0/20") for n in range(16)
]


class NaivePool:
    """The allocation policy stated as plainly as possible: scan for the lowest free."""

    def __init__(self, subnet: IPNetwork, ip_range: IPNetwork | None, gateway: IPAddress | None) -> None:
        self.gateway = gateway if gateway is not None else subnet.network_address + 1
        self.reserved = never_handed_out(subnet, gateway)
        self.auto = [a for a in (ip_range or subnet) if a not in self.reserved]
        self.taken: set[IPAddress] = set()

    def allocate(self) -> IPAddress:
        for address in self.auto:
            if address not in self.taken:
                self.taken.add(address)
                return address
        raise ExhaustedError("model: exhausted")


def make_pool(request: tuple[IPNetwork, IPNetwork | None, IPAddress | None]) -> SubnetAllocator:
    subnet, ip_range, gateway = request
    return SubnetAllocator(subnet, ip_range=ip_range, gateway=gateway, network="web")


def drain(pool: SubnetAllocator) -> list[IPAddress]:
    handed_out = []
    while True:
        try:
            handed_out.append(pool.allocate())
        except ExhaustedError:
            return handed_out


# --- the allocator -----------------------------------------------------------------------


# Statics and releases name either an address handed out before ("seen") or
# any offset into the subnet; the first kind makes release-then-retake
# sequences likely, the second reaches the gateway, the edges and the rest.
_targets = st.tuples(st.sampled_from(["seen", "offset"]), st.integers(min_value=0, max_value=2**10))
_operations = st.lists(
    st.one_of(
        st.tuples(st.just("auto")),
        st.tuples(st.just("static"), _targets),
        st.tuples(st.just("release"), _targets),
    ),
    max_size=80,
)


def invalid_static(subnet: IPNetwork) -> set[IPAddress]:
    """Addresses a static request may never name: the network address, and the IPv4 broadcast address."""
    return {subnet.network_address, subnet.broadcast_address} if subnet.version == 4 else {subnet.network_address}


def target(subnet: IPNetwork, seen: list[IPAddress], where: tuple[str, int]) -> IPAddress:
    kind, number = where
    if kind == "seen" and seen:
        return seen[number % len(seen)]
    return subnet.network_address + number % subnet.num_addresses


@given(pool_requests(), _operations)
def test_allocator_matches_lowest_free_model(request, operations):
    """Every answer, error or address, is what the naive lowest-free scan gives."""
    pool, model = make_pool(request), NaivePool(*request)
    subnet = request[0]
    seen: list[IPAddress] = []
    for operation in operations:
        if operation[0] == "auto":
            try:
                expected = model.allocate()
            except ExhaustedError:
                with pytest.raises(ExhaustedError):
                    pool.allocate()
            else:
                assert pool.allocate() == expected
                seen.append(expected)
        elif operation[0] == "static":
            address = target(subnet, seen, operation[1])
            if address in invalid_static(subnet):
                with pytest.raises(InvalidArgumentError) as caught:
                    pool.allocate(address)
                assert not isinstance(caught.value, ConflictError)
            elif address == model.gateway or address in model.taken:
                with pytest.raises(ConflictError):
                    pool.allocate(address)
            else:
                assert pool.allocate(address) == address
                model.taken.add(address)
        else:
            address = target(subnet, seen, operation[1])
            pool.release(address)
            model.taken.discard(address)
        assert pool.allocated() == frozenset(model.taken)


@given(pool_requests(), _operations)
def test_an_address_is_never_handed_out_twice(request, operations):
    pool = make_pool(request)
    subnet = request[0]
    held: set[IPAddress] = set()
    seen: list[IPAddress] = []
    for operation in operations:
        try:
            if operation[0] == "auto":
                address = pool.allocate()
                seen.append(address)
            elif operation[0] == "static":
                address = pool.allocate(target(subnet, seen, operation[1]))
            else:
                released = target(subnet, seen, operation[1])
                pool.release(released)
                held.discard(released)
                continue
        except (InvalidArgumentError, ExhaustedError):
            continue
        assert address not in held
        held.add(address)
    assert pool.allocated() == held


@given(pool_requests(min_prefix=24), st.data())
def test_released_addresses_are_reused_lowest_first(request, data):
    pool = make_pool(request)
    first = drain(pool)
    assume(first)
    released = data.draw(st.lists(st.sampled_from(first), unique=True, min_size=1))
    for address in released:
        pool.release(address)
    assert [pool.allocate() for _ in released] == sorted(released)
    with pytest.raises(ExhaustedError):
        pool.allocate()


@given(pool_requests(min_prefix=24))
def test_network_gateway_and_broadcast_are_never_handed_out(request):
    pool = make_pool(request)
    handed_out = set(drain(pool))
    subnet = request[0]
    assert subnet.network_address not in handed_out
    assert pool.gateway not in handed_out
    if subnet.version == 4:
        assert subnet.broadcast_address not in handed_out
    elif request[1] is None or subnet.broadcast_address in request[1]:
        # IPv6 has no broadcast address: the last one is handed out like any other.
        assert subnet.broadcast_address in handed_out or subnet.broadcast_address == pool.gateway


@given(pool_requests(min_prefix=24))
def test_automatic_allocations_stay_inside_ip_range_and_subnet(request):
    subnet, ip_range, _ = request
    for address in drain(make_pool(request)):
        assert address in subnet
        if ip_range is not None:
            assert address in ip_range


@given(pool_requests(min_prefix=23))
def test_exhaustion_comes_after_exactly_the_free_addresses(request):
    subnet, ip_range, gateway = request
    source = ip_range or subnet
    expected = source.num_addresses - sum(1 for special in never_handed_out(subnet, gateway) if special in source)
    pool = make_pool(request)
    for _ in range(expected):
        pool.allocate()
    with pytest.raises(ExhaustedError, match=r"network 'web': no free address left"):
        pool.allocate()


@pytest.mark.parametrize(("subnet", "count"), [("10.0.0.0/30", 1), ("10.0.0.0/29", 5), ("10.0.0.0/24", 253)])
def test_small_subnets_hold_a_known_number_of_addresses(subnet, count):
    pool = SubnetAllocator(IPv4Network(subnet))
    assert len(drain(pool)) == count


@given(pool_requests(), st.data())
def test_a_static_address_is_honoured_even_outside_ip_range(request, data):
    subnet = request[0]
    pool = make_pool(request)
    address = data.draw(subnet_addresses(subnet).filter(lambda a: a not in never_handed_out(subnet, pool.gateway)))
    assert pool.allocate(address) == address
    assert pool.in_use(address)
    assert address not in drain(pool)
    assert address in pool.allocated()


def test_static_request_errors_name_the_network_and_reason():
    pool = SubnetAllocator(IPv4Network("172.17.0.0/16"), network="web")
    pool.allocate(IPv4Address("172.17.0.5"))
    cases = [
        ("172.17.0.5", ConflictError, "network 'web': address 172.17.0.5 is already in use"),
        ("172.17.0.1", ConflictError, "network 'web': address 172.17.0.1 is already in use as the gateway"),
        ("172.17.0.0", InvalidArgumentError, "network 'web': address 172.17.0.0 is the network address"),
        ("172.17.255.255", InvalidArgumentError, "network 'web': address 172.17.255.255 is the broadcast address"),
        ("10.0.0.1", InvalidArgumentError, "network 'web': address 10.0.0.1 is not inside subnet 172.17.0.0/16"),
    ]
    for address, error, message in cases:
        with pytest.raises(error) as caught:
            pool.allocate(IPv4Address(address))
        assert str(caught.value).startswith(message)
    # The network and broadcast addresses are invalid, not merely taken.
    for address in ("172.17.0.0", "172.17.255.255"):
        with pytest.raises(InvalidArgumentError) as caught:
            pool.allocate(IPv4Address(address))
        assert not isinstance(caught.value, ConflictError)
    assert pool.allocated() == {IPv4Address("172.17.0.5")}


def test_a_released_address_taken_statically_is_not_handed_out_again():
    pool = SubnetAllocator(IPv4Network("10.1.0.0/29"))
    first, second = pool.allocate(), pool.allocate()
    pool.release(first)
    pool.allocate(first)
    assert pool.allocate() not in (first, second)


def test_release_of_what_is_not_held_is_a_no_op():
    pool = SubnetAllocator(IPv4Network("10.1.0.0/29"))
    a = pool.allocate()
    pool.release(a)
    pool.release(a)  # already gone is success
    pool.release(pool.gateway)
    pool.release(IPv4Address("192.0.2.1"))
    assert pool.in_use(pool.gateway)
    assert pool.allocated() == frozenset()
    # The gateway was not freed by the release attempt.
    assert pool.gateway not in drain(pool)


def test_in_use_covers_gateway_and_allocations_only():
    pool = SubnetAllocator(IPv4Network("10.1.0.0/24"))
    a = pool.allocate()
    assert pool.in_use(a)
    assert pool.in_use(IPv4Address("10.1.0.1"))
    assert not pool.in_use(IPv4Address("10.1.0.3"))
    assert not pool.in_use(IPv4Address("10.2.0.2"))
    assert pool.gateway not in pool.allocated()


def test_a_slash_8_is_not_materialised():
    tracemalloc.start()
    try:
        pool = SubnetAllocator(IPv4Network("10.0.0.0/8"))
        handed_out = [pool.allocate() for _ in range(1000)]
        top = pool.allocate(IPv4Address("10.255.255.254"))
        for address in handed_out[::2]:
            pool.release(address)
        again = pool.allocate()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert handed_out[0] == IPv4Address("10.0.0.2")
    assert top == IPv4Address("10.255.255.254")
    assert again == handed_out[0]
    # Listing the 16 million addresses would take hundreds of megabytes.
    assert peak < 2_000_000


def test_repeated_static_reuse_does_not_grow_without_bound():
    pool = SubnetAllocator(IPv4Network("10.0.0.0/29"))
    first = pool.allocate()
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        for _ in range(20_000):
            pool.release(first)
            pool.allocate(first)
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current - baseline < 50_000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"subnet": "10.0.0.0/31"}, "network 'web': subnet 10.0.0.0/31 is too small"),
        ({"subnet": "10.0.0.0/32"}, "network 'web': subnet 10.0.0.0/32 is too small"),
        ({"ip_range": "10.0.1.0/24"}, "network 'web': ip_range 10.0.1.0/24 is not inside subnet 10.0.0.0/24"),
        ({"gateway": "10.0.1.1"}, "network 'web': gateway 10.0.1.1 is not inside subnet 10.0.0.0/24"),
        ({"gateway": "10.0.0.0"}, "network 'web': gateway 10.0.0.0 is the network address"),
        ({"gateway": "10.0.0.255"}, "network 'web': gateway 10.0.0.255 is the broadcast address"),
        ({"ip_range": "10.0.0.0/32"}, "network 'web': ip_range 10.0.0.0/32 leaves no address to hand out"),
        ({"ip_range": "10.0.0.1/32"}, "network 'web': ip_range 10.0.0.1/32 leaves no address to hand out"),
        ({"ip_range": "10.0.0.0/31"}, "network 'web': ip_range 10.0.0.0/31 leaves no address to hand out"),
        ({"ip_range": "10.0.0.255/32"}, "network 'web': ip_range 10.0.0.255/32 leaves no address to hand out"),
        (
            {"ip_range": "10.0.0.8/32", "gateway": "10.0.0.8"},
            "network 'web': ip_range 10.0.0.8/32 leaves no address to hand out",
        ),
    ],
)
def test_invalid_pools_are_refused(kwargs, message):
    subnet = IPv4Network(kwargs.get("subnet", "10.0.0.0/24"))
    ip_range = IPv4Network(kwargs["ip_range"]) if "ip_range" in kwargs else None
    gateway = IPv4Address(kwargs["gateway"]) if "gateway" in kwargs else None
    with pytest.raises(InvalidArgumentError) as caught:
        DefaultIPAM().request_pool(family=4, seed=SEED, network="web", subnet=subnet, ip_range=ip_range, gateway=gateway, in_use=[])
    assert str(caught.value).startswith(message)
    assert not isinstance(caught.value, ConflictError)


@given(ipv4_subnets(max_prefix=30), st.data())
def test_gateway_defaults_to_the_first_host_address(subnet, data):
    ip_range = data.draw(st.none() | ip_ranges(subnet).filter(lambda r: hands_out_something(subnet, r, None)))
    pool = DefaultIPAM().request_pool(family=4, seed=SEED, network="web", subnet=subnet, ip_range=ip_range, gateway=None, in_use=[])
    assert pool.gateway == subnet.network_address + 1
    assert (pool.subnet, pool.ip_range) == (subnet, ip_range)


# --- the default driver's choice of subnet ------------------------------------------------


def test_default_pools_are_dockers():
    assert DefaultIPAM().pools == tuple(DOCKER_DEFAULT_POOLS)
    assert len(DOCKER_DEFAULT_POOLS) == 31


@pytest.mark.parametrize(
    ("in_use", "expected"),
    [
        ([], "172.17.0.0/16"),
        (["172.17.0.0/16"], "172.18.0.0/16"),
        (["172.17.5.0/24", "172.18.0.0/15"], "172.20.0.0/16"),
        (["172.16.0.0/12"], "192.168.0.0/20"),
        (["172.16.0.0/12", "192.168.0.0/20", "192.168.20.0/24"], "192.168.32.0/20"),
        (["0.0.0.0/1"], "172.17.0.0/16"),
    ],
)
def test_default_pool_choice_examples(in_use, expected):
    pool = DefaultIPAM().request_pool(
        family=4, seed=SEED, network="web", subnet=None, ip_range=None, gateway=None, in_use=[IPv4Network(n) for n in in_use]
    )
    assert pool.subnet == IPv4Network(expected)
    assert pool.gateway == IPv4Network(expected).network_address + 1


@given(st.lists(st.sampled_from(DOCKER_DEFAULT_POOLS) | ipv4_subnets(min_prefix=8, max_prefix=28), max_size=40))
def test_default_pool_choice_skips_overlaps(in_use):
    free = [pool for pool in DOCKER_DEFAULT_POOLS if not any(pool.overlaps(taken) for taken in in_use)]
    driver = DefaultIPAM()
    if not free:
        with pytest.raises(ExhaustedError):
            driver.request_pool(family=4, seed=SEED, network="web", subnet=None, ip_range=None, gateway=None, in_use=in_use)
        return
    pool = driver.request_pool(family=4, seed=SEED, network="web", subnet=None, ip_range=None, gateway=None, in_use=in_use)
    assert pool.subnet == free[0]


def test_no_free_default_pool_is_exhaustion():
    in_use = [IPv4Network("172.16.0.0/12"), IPv4Network("192.168.0.0/16")]
    with pytest.raises(ExhaustedError, match="network 'web': no free subnet"):
        DefaultIPAM().request_pool(family=4, seed=SEED, network="web", subnet=None, ip_range=None, gateway=None, in_use=in_use)


def test_ipv6_routes_in_use_are_ignored():
    pool = DefaultIPAM().request_pool(
        family=4, seed=SEED, network="web", subnet=None, ip_range=None, gateway=None, in_use=[IPv6Network("::/0")]
    )
    assert pool.subnet == IPv4Network("172.17.0.0/16")


@given(ipv4_subnets(max_prefix=30), st.data())
def test_an_explicit_subnet_overlapping_in_use_is_a_conflict(subnet, data):
    overlapping = data.draw(
        st.one_of(ip_ranges(subnet), st.integers(0, subnet.prefixlen).map(lambda p: subnet.supernet(new_prefix=p)))
    )
    others = data.draw(st.lists(ipv4_subnets().filter(lambda n: not n.overlaps(subnet)), max_size=3))
    with pytest.raises(ConflictError) as caught:
        DefaultIPAM().request_pool(
            family=4,
            seed=SEED,
            network="web", subnet=subnet, ip_range=None, gateway=None, in_use=[*others, overlapping]
        )
    assert str(caught.value) == f"network 'web': subnet {subnet} overlaps {overlapping}, which is already in use"


@given(ipv4_subnets(max_prefix=30), st.lists(ipv4_subnets(), max_size=5))
def test_an_explicit_subnet_clear_of_in_use_is_granted(subnet, in_use):
    assume(not any(subnet.overlaps(n) for n in in_use))
    pool = DefaultIPAM().request_pool(family=4, seed=SEED, network="web", subnet=subnet, ip_range=None, gateway=None, in_use=in_use)
    assert pool.subnet == subnet
    assert pool.allocated() == frozenset()


@pytest.mark.parametrize(
    ("ip_range", "gateway", "word"),
    [(IPv4Network("10.0.0.0/24"), None, "ip_range"), (None, IPv4Address("10.0.0.1"), "gateway")],
)
def test_range_or_gateway_without_subnet_is_refused(ip_range, gateway, word):
    with pytest.raises(InvalidArgumentError, match=f"network 'web': {word} .* without a subnet"):
        DefaultIPAM().request_pool(family=4, seed=SEED, network="web", subnet=None, ip_range=ip_range, gateway=gateway, in_use=[])


# --- parsing user input --------------------------------------------------------------------


def _reserved(subnet: IPv4Network) -> bool:
    return any(subnet.overlaps(block) for block, _ in RESERVED_SUBNETS)


@given(ipv4_subnets(min_prefix=22, max_prefix=30), st.data())
def test_a_range_is_refused_exactly_when_it_has_nothing_to_hand_out(subnet, data):
    ip_range = data.draw(ip_ranges(subnet))
    gateway = data.draw(st.none() | subnet_addresses(subnet).filter(lambda a: a not in (subnet[0], subnet[-1])))
    if hands_out_something(subnet, ip_range, gateway):
        pool = SubnetAllocator(subnet, ip_range=ip_range, gateway=gateway, network="web")
        assert pool.allocate() in ip_range
    else:
        with pytest.raises(InvalidArgumentError, match="leaves no address to hand out"):
            SubnetAllocator(subnet, ip_range=ip_range, gateway=gateway, network="web")


@given(ipv4_subnets(min_prefix=0, max_prefix=32).filter(lambda s: not _reserved(s)))
def test_parse_subnet_reads_cidr_text(subnet):
    assert parse_subnet("web", str(subnet)) == subnet
    assert parse_subnet("web", subnet) is subnet


@given(st.sampled_from(RESERVED_SUBNETS), st.data())
def test_parse_subnet_refuses_what_overlaps_a_reserved_block(reserved, data):
    block, _purpose = reserved
    # Inside the block, or a supernet of it: both overlap.
    subnet = data.draw(ip_ranges(block) | st.integers(0, block.prefixlen).map(lambda p: block.supernet(new_prefix=p)))
    for value in (str(subnet), subnet):
        with pytest.raises(InvalidArgumentError) as caught:
            parse_subnet("web", value)
        message = str(caught.value)
        assert message.startswith(f"network 'web': subnet {subnet} ")
        # It names a reserved block it overlaps (the given one, or one met first).
        assert any(f"{b}, which is reserved for {p}" in message for b, p in RESERVED_SUBNETS if subnet.overlaps(b))


@pytest.mark.parametrize("text", ["127.0.0.0/8", "127.5.0.0/16", "0.0.0.0/8", "224.0.0.0/24", "239.1.0.0/16", "240.0.0.0/4", "255.255.255.0/24", "0.0.0.0/0"])
def test_reserved_examples_are_refused(text):
    with pytest.raises(InvalidArgumentError, match="reserved for"):
        parse_subnet("web", text)


@pytest.mark.parametrize("text", ["169.254.0.0/16", "1.0.0.0/8", "126.255.255.0/24", "128.0.0.0/8", "223.255.255.0/24"])
def test_link_local_and_the_edges_of_reserved_blocks_are_allowed(text):
    assert parse_subnet("web", text) == IPv4Network(text)


@given(ipv4_subnets(min_prefix=1, max_prefix=31), st.data())
def test_parse_subnet_refuses_host_bits(subnet, data):
    offset = data.draw(st.integers(min_value=1, max_value=subnet.num_addresses - 1))
    text = f"{subnet.network_address + offset}/{subnet.prefixlen}"
    with pytest.raises(InvalidArgumentError, match="has host bits set") as caught:
        parse_subnet("web", text)
    assert str(caught.value).startswith(f"network 'web': subnet {text!r}")
    assert str(subnet) in str(caught.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.0.0.0/33", "network 'web': subnet '10.0.0.0/33' is not a valid IPv4 prefix"),
        ("10.0.0.256/24", "network 'web': subnet '10.0.0.256/24' is not a valid IPv4 prefix"),
        ("banana/8", "network 'web': subnet 'banana/8' is not a valid IPv4 prefix"),
        ("10.0.0.0", "network 'web': subnet '10.0.0.0' has no prefix length"),
        ("fd00::/129", "network 'web': subnet 'fd00::/129' is not a valid IPv6 prefix"),
        ("fd00::g/64", "network 'web': subnet 'fd00::g/64' is not a valid IPv6 prefix"),
        ("fd00::1/64", "network 'web': subnet 'fd00::1/64' has host bits set (did you mean fd00::/64?)"),
        ("fd00::", "network 'web': subnet 'fd00::' has no prefix length"),
        ("fe80::%eth0/64", "network 'web': subnet 'fe80::%eth0/64' has a zone index"),
        (24, "network 'web': subnet must be a string, an IPv4Network or an IPv6Network, not int"),
    ],
)
def test_parse_subnet_errors(value, message):
    with pytest.raises(InvalidArgumentError) as caught:
        parse_subnet("web", value)
    assert str(caught.value).startswith(message)


def test_parse_subnet_names_the_argument():
    assert parse_subnet("web", None) is None
    with pytest.raises(InvalidArgumentError, match=r"^network 'web': ip_range '10\.0\.0\.1/24' has host bits"):
        parse_subnet("web", "10.0.0.1/24", what="ip_range")


@given(st.integers(min_value=0, max_value=2**32 - 1).map(IPv4Address))
def test_parse_address_reads_dotted_quads(address):
    assert parse_address("web", "gateway", str(address)) == address
    assert parse_address("web", "gateway", address) is address


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.0.0.300", "network 'web': gateway '10.0.0.300' is not a valid IPv4 address"),
        ("10.0.0.1/24", "network 'web': gateway '10.0.0.1/24' is not a valid IPv4 address (give it without"),
        ("gw", "network 'web': gateway 'gw' is not a valid IPv4 address"),
        ("fd00::g", "network 'web': gateway 'fd00::g' is not a valid IPv6 address"),
        ("fd00::1/64", "network 'web': gateway 'fd00::1/64' is not a valid IPv6 address (give it without"),
        ("fe80::1%eth0", "network 'web': gateway 'fe80::1%eth0' has a zone index"),
        (1, "network 'web': gateway must be a string, an IPv4Address or an IPv6Address, not int 1"),
    ],
)
def test_parse_address_errors(value, message):
    with pytest.raises(InvalidArgumentError) as caught:
        parse_address("web", "gateway", value)
    assert str(caught.value).startswith(message)
    assert parse_address("web", "gateway", None) is None


# --- the registry and the protocols ----------------------------------------------------------


class FakeIPAM:
    """A third-party driver: subclasses nothing, found through an entry point."""

    name = "fake"

    def request_pool(self, *, network, family, subnet, ip_range, gateway, in_use, seed):
        return SubnetAllocator(IPv4Network("198.51.100.0/24"), network=network)


def test_builtins_satisfy_the_protocols():
    driver = ipam_driver("default")
    assert isinstance(driver, DefaultIPAM)
    assert isinstance(driver, IPAMDriver)
    assert driver.name == "default"
    pool = driver.request_pool(family=4, seed=SEED, network="web", subnet=None, ip_range=None, gateway=None, in_use=[])
    assert isinstance(pool, AddressPool)


def test_unknown_driver_is_not_found(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])
    with pytest.raises(NotFoundError, match="IPAM driver 'nope' not found") as caught:
        ipam_driver("nope")
    assert isinstance(caught.value, LookupError)


def test_third_party_driver_is_loaded_lazily_from_entry_points(monkeypatch):
    monkeypatch.setattr(cnm.ipam.IPAM_DRIVERS, "_loaded", {})  # forget the fake afterwards
    groups_asked: list[str] = []
    entry_point = importlib.metadata.EntryPoint(name="fake", value=f"{__name__}:FakeIPAM", group="cnm.ipam")

    def entry_points(group):
        groups_asked.append(group)
        return [entry_point]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    ipam_driver("default")
    assert groups_asked == []  # built-ins never scan the entry points
    driver = ipam_driver("fake")
    assert isinstance(driver, FakeIPAM)
    assert groups_asked == ["cnm.ipam"]
    assert ipam_driver("fake") is not driver  # a fresh instance each time ...
    assert groups_asked == ["cnm.ipam"]  # ... from the cached factory
    pool = driver.request_pool(family=4, seed=SEED, network="x", subnet=None, ip_range=None, gateway=None, in_use=[])
    assert isinstance(pool, AddressPool)


# --- IPv6 and dual stack ------------------------------------------------------------------


def request(**kwargs):
    """request_pool with the defaults of an automatic IPv4 request; keywords override."""
    arguments = {
        "network": "web", "family": 4, "subnet": None, "ip_range": None, "gateway": None, "in_use": [], "seed": SEED
    }
    return DefaultIPAM().request_pool(**{**arguments, **kwargs})


def test_ula_prefix_is_fd_and_forty_bits_of_the_seeds_hash():
    import hashlib

    digest = hashlib.sha256(SEED.encode()).hexdigest()
    # fd, then the Global ID: 40 bits, 10 hex digits, the first of the hash.
    expected = IPv6Network(f"fd{digest[0:2]}:{digest[2:6]}:{digest[6:10]}::/48")
    assert ula_prefix(SEED) == expected
    assert ula_prefix(SEED) == ula_prefix(SEED)
    assert ula_prefix("host-other") != ula_prefix(SEED)
    assert ula_prefix(SEED).subnet_of(IPv6Network("fd00::/8"))


@given(st.text(max_size=40))
def test_every_seed_gives_a_ula_48(seed):
    prefix = ula_prefix(seed)
    assert prefix.prefixlen == 48
    assert prefix.subnet_of(IPv6Network("fd00::/8"))


def test_an_automatic_ipv6_subnet_is_the_first_64_of_the_hosts_ula_48():
    pool = request(family=6)
    prefix = ula_prefix(SEED)
    assert pool.subnet == IPv6Network((prefix.network_address, 64))
    assert pool.gateway == prefix.network_address + 1
    assert pool.allocate() == prefix.network_address + 2


@given(st.lists(st.integers(0, 12), max_size=8), st.integers(64, 80), st.data())
def test_an_automatic_ipv6_subnet_is_the_lowest_free_64(indexes, length, data):
    """In use: blocks at low /64 indexes of the /48 (of any length from /64
    to /80), blocks elsewhere, and IPv4 subnets, which never count."""
    prefix = ula_prefix(SEED)
    base = int(prefix.network_address)
    taken = [IPv6Network((base + (i << 64), length)) for i in indexes]
    others = data.draw(st.lists(ipv6_subnets(16, 64).filter(lambda n: not n.overlaps(prefix)), max_size=3))
    fours = data.draw(st.lists(ipv4_subnets(), max_size=3))
    pool = request(family=6, in_use=[*fours, *others, *taken])
    free = next(i for i in range(14) if i not in indexes)
    assert pool.subnet == IPv6Network((base + (free << 64), 64))


def test_the_whole_ula_48_in_use_is_exhaustion():
    prefix = ula_prefix(SEED)
    for in_use in ([prefix], [IPv6Network("fd00::/8")], [IPv6Network("::/0")]):
        with pytest.raises(ExhaustedError, match=rf"network 'web': no free /64 left in this host's unique local prefix {prefix}"):
            request(family=6, in_use=in_use)
    # Every /64 but the last taken (as the 16 blocks around it): the last is handed out.
    last = IPv6Network((int(prefix.network_address) + (0xFFFF << 64), 64))
    assert request(family=6, in_use=list(prefix.address_exclude(last))).subnet == last


def test_in_use_of_the_other_family_is_ignored_both_ways():
    assert request(family=4, in_use=[IPv6Network("::/0")]).subnet == IPv4Network("172.17.0.0/16")
    six = request(family=6, in_use=[IPv4Network("0.0.0.0/0")])
    assert six.subnet.subnet_of(ula_prefix(SEED))


def test_an_explicit_ipv6_subnet_is_granted_or_conflicts():
    subnet = IPv6Network("2001:db8:1::/64")
    pool = request(family=6, subnet=subnet, in_use=[IPv6Network("2001:db8:2::/64"), IPv4Network("10.0.0.0/8")])
    assert (pool.subnet, pool.gateway) == (subnet, IPv6Address("2001:db8:1::1"))
    with pytest.raises(ConflictError) as caught:
        request(family=6, subnet=subnet, in_use=[IPv6Network("2001:db8::/32")])
    assert str(caught.value) == "network 'web': subnet 2001:db8:1::/64 overlaps 2001:db8::/32, which is already in use"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"family": 4, "subnet": IPv6Network("fd00::/64")}, "network 'web': subnet fd00::/64 is IPv6, but an IPv4 pool was asked for"),
        ({"family": 6, "subnet": IPv4Network("10.0.0.0/24")}, "network 'web': subnet 10.0.0.0/24 is IPv4, but an IPv6 pool was asked for"),
        (
            {"subnet": IPv4Network("10.0.0.0/24"), "gateway": IPv6Address("fd00::1")},
            "network 'web': gateway fd00::1 is IPv6 but subnet 10.0.0.0/24 is IPv4",
        ),
        (
            {"family": 6, "subnet": IPv6Network("fd00::/64"), "ip_range": IPv4Network("10.0.0.0/24")},
            "network 'web': ip_range 10.0.0.0/24 is IPv4 but subnet fd00::/64 is IPv6",
        ),
        ({"family": 5}, "network 'web': address family 5 is not 4 or 6"),
        ({"family": True}, "network 'web': address family True is not 4 or 6"),
        ({"seed": None}, "network 'web': the IPAM seed must be a string, not NoneType"),
        ({"family": 6, "subnet": IPv6Network("fd00::/127")}, "network 'web': subnet fd00::/127 is too small: the prefix must be /126 or shorter"),
        ({"family": 6, "subnet": IPv6Network("fd00::/128")}, "network 'web': subnet fd00::/128 is too small"),
        ({"family": 6, "subnet": IPv6Network("fd00::/64"), "gateway": IPv6Address("fd00::")}, "network 'web': gateway fd00:: is the subnet-router anycast address of subnet fd00::/64"),
        ({"family": 6, "subnet": IPv6Network("fd00::/64"), "gateway": IPv6Address("fd00:0:0:1::1")}, "network 'web': gateway fd00:0:0:1::1 is not inside subnet fd00::/64"),
        ({"family": 6, "subnet": IPv6Network("fd00::/64"), "ip_range": IPv6Network("fd00:1::/80")}, "network 'web': ip_range fd00:1::/80 is not inside subnet fd00::/64"),
        (
            {"family": 6, "subnet": IPv6Network("fd00::/64"), "ip_range": IPv6Network("fd00::/127")},
            "network 'web': ip_range fd00::/127 leaves no address to hand out in subnet fd00::/64 (the subnet-router anycast address and the gateway fd00::1",
        ),
        ({"family": 6, "ip_range": IPv6Network("fd00::/80")}, "network 'web': ip_range fd00::/80 is given without a subnet"),
    ],
)
def test_invalid_ipv6_and_mixed_requests_are_refused(kwargs, message):
    with pytest.raises(InvalidArgumentError) as caught:
        request(**kwargs)
    assert str(caught.value).startswith(message)
    assert not isinstance(caught.value, ConflictError)


def test_the_smallest_ipv6_subnet_is_a_126_with_two_addresses():
    pool = request(family=6, subnet=IPv6Network("fd00::/126"))
    assert pool.gateway == IPv6Address("fd00::1")
    assert drain(pool) == [IPv6Address("fd00::2"), IPv6Address("fd00::3")]


def test_ipv6_hands_out_the_last_address_but_never_the_anycast_one():
    pool = SubnetAllocator(IPv6Network("fd00::/120"), ip_range=IPv6Network("fd00::f0/124"), network="web")
    assert pool.allocate(IPv6Address("fd00::ff")) == IPv6Address("fd00::ff")  # no broadcast in IPv6
    with pytest.raises(InvalidArgumentError, match="network 'web': address fd00:: is the subnet-router anycast address"):
        pool.allocate(IPv6Address("fd00::"))
    assert drain(pool) == [IPv6Address(f"fd00::{n:x}") for n in range(0xF0, 0xFF)]
    whole = SubnetAllocator(IPv6Network("fd00::/126"), gateway=IPv6Address("fd00::3"))
    assert drain(whole) == [IPv6Address("fd00::1"), IPv6Address("fd00::2")]


def test_a_pool_refuses_or_ignores_addresses_of_the_other_family():
    four = SubnetAllocator(IPv4Network("10.0.0.0/24"), network="web")
    six = SubnetAllocator(IPv6Network("::a00:0/120"), network="v6")  # the same ints as 10.0.0.0/24
    a = four.allocate()
    assert six.allocate() == IPv6Address("::a00:2")
    with pytest.raises(InvalidArgumentError, match=r"network 'web': address ::a00:3 is IPv6 but subnet 10.0.0.0/24 is IPv4"):
        four.allocate(IPv6Address("::a00:3"))
    with pytest.raises(InvalidArgumentError, match=r"network 'v6': address 10.0.0.3 is IPv4 but subnet ::a00:0/120 is IPv6"):
        six.allocate(IPv4Address("10.0.0.3"))
    six.release(a)  # 10.0.0.2 is not ::a00:2
    assert six.in_use(IPv6Address("::a00:2")) and not six.in_use(a)
    assert not four.in_use(IPv6Address("::a00:1"))
    assert four.allocated() == {a}


def test_an_ipv6_64_is_not_materialised():
    tracemalloc.start()
    try:
        pool = request(family=6, subnet=IPv6Network("fd00:1::/64"))
        handed_out = [pool.allocate() for _ in range(1000)]
        top = pool.allocate(IPv6Address("fd00:1::ffff:ffff:ffff:ffff"))
        for address in handed_out[::2]:
            pool.release(address)
        again = pool.allocate()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert handed_out[0] == IPv6Address("fd00:1::2")
    assert top == IPv6Address("fd00:1::ffff:ffff:ffff:ffff")
    assert again == handed_out[0]
    assert peak < 2_000_000


# --- parsing both families ---------------------------------------------------------------------


def _reserved6(subnet: IPv6Network) -> bool:
    return any(subnet.overlaps(block) for block, _ in RESERVED_SUBNETS_IPV6)


@given(ipv6_subnets(min_prefix=0, max_prefix=128).filter(lambda s: not _reserved6(s)))
def test_parse_subnet_reads_ipv6_cidr_text(subnet):
    assert parse_subnet("web", str(subnet)) == subnet
    assert parse_subnet("web", subnet.exploded) == subnet
    assert parse_subnet("web", subnet) is subnet
    assert parse_subnet("web", subnet, family=6) is subnet


@given(st.sampled_from(RESERVED_SUBNETS_IPV6), st.data())
def test_parse_subnet_refuses_what_overlaps_a_reserved_ipv6_block(reserved, data):
    block, _purpose = reserved
    subnet = data.draw(ip_ranges(block) | st.integers(0, block.prefixlen).map(lambda p: block.supernet(new_prefix=p)))
    for value in (str(subnet), subnet):
        with pytest.raises(InvalidArgumentError) as caught:
            parse_subnet("web", value)
        message = str(caught.value)
        assert message.startswith(f"network 'web': subnet {subnet} ")
        assert any(f"{b}, which is reserved for {p}" in message for b, p in RESERVED_SUBNETS_IPV6 if subnet.overlaps(b))


@pytest.mark.parametrize(
    ("text", "purpose"),
    [
        ("::/128", "the unspecified address"),
        ("::/0", "the unspecified address"),
        ("::1/128", "loopback"),
        ("::ffff:10.0.0.0/120", "IPv4-mapped addresses"),
        ("fe80::/64", "link-local addresses"),
        ("febf:ffff::/32", "link-local addresses"),
        ("ff02::/16", "multicast"),
    ],
)
def test_reserved_ipv6_examples_are_refused(text, purpose):
    with pytest.raises(InvalidArgumentError, match=f"reserved for {purpose}"):
        parse_subnet("web", text)


@pytest.mark.parametrize("text", ["::2/127", "fec0::/10", "fd00::/8", "2001:db8::/32", "feff::/16", "64:ff9b::/96"])
def test_the_edges_of_reserved_ipv6_blocks_are_allowed(text):
    assert parse_subnet("web", text) == IPv6Network(text)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: parse_subnet("web", "fd00::/64", family=4), "network 'web': subnet 'fd00::/64' is IPv6, not IPv4"),
        (lambda: parse_subnet("web", IPv4Network("10.0.0.0/8"), family=6), "network 'web': subnet '10.0.0.0/8' is IPv4, not IPv6"),
        (
            lambda: parse_subnet("web", "fd00::/80", what="ip_range", family=IPv4Network("10.0.0.0/24")),
            "network 'web': ip_range 'fd00::/80' is IPv6 but subnet 10.0.0.0/24 is IPv4",
        ),
        (
            lambda: parse_address("web", "gateway", "fd00::1", family=IPv4Network("10.0.0.0/24")),
            "network 'web': gateway 'fd00::1' is IPv6 but subnet 10.0.0.0/24 is IPv4",
        ),
        (
            lambda: parse_address("web", "gateway", IPv4Address("10.0.0.1"), family=IPv6Network("fd00::/64")),
            "network 'web': gateway '10.0.0.1' is IPv4 but subnet fd00::/64 is IPv6",
        ),
        (lambda: parse_address("s1", "ip", "10.0.0.1", kind="sandbox", family=6), "sandbox 's1': ip '10.0.0.1' is IPv4, not IPv6"),
    ],
)
def test_a_required_family_is_enforced_with_the_value_named(call, message):
    with pytest.raises(InvalidArgumentError) as caught:
        call()
    assert str(caught.value) == message


@given(st.integers(min_value=0, max_value=2**128 - 1).map(IPv6Address))
def test_parse_address_reads_ipv6(address):
    assert parse_address("web", "gateway", str(address)) == address
    assert parse_address("web", "gateway", address.exploded, family=6) == address
    assert parse_address("web", "gateway", address) is address


def test_a_family_that_matches_passes_the_value_through():
    assert parse_subnet("web", "10.0.0.0/24", family=4) == IPv4Network("10.0.0.0/24")
    assert parse_address("web", "gateway", "fd00::1", family=IPv6Network("fd00::/64")) == IPv6Address("fd00::1")
    assert parse_address("web", "gateway", None, family=4) is None
    assert parse_subnet("web", None, family=6) is None


# --- one overlay's addresses across hosts (cnm.drivers._shared_pool) -------------------------


def _shared_pools():
    from cnm.drivers._shared_pool import SharedAddresses, SharedPool
    from cnm.ipam.default import DefaultIPAM

    book = SharedAddresses("ov")
    pools = []
    for i, ip_range in enumerate(["10.81.0.0/26", "10.81.0.64/26", None]):
        inner = DefaultIPAM().request_pool(
            network="ov", family=4, subnet=ip_network("10.81.0.0/24"), ip_range=ip_network(ip_range) if ip_range else None,
            gateway=None, in_use=[], seed="s",
        )
        host = (ip_address(f"198.18.1.{i + 2}"), f"h{i + 1}")
        if inner.ip_range is not None:
            book.add_range(host, inner.ip_range)
        pools.append(SharedPool(inner, book, host))
    return book, pools


def test_a_shared_pool_refuses_what_another_host_holds_or_has_in_its_range():
    book, (h1, h2, h3) = _shared_pools()
    with pytest.raises(ConflictError, match=r"address 10.81.0.70 is in the ip_range 10.81.0.64/26 of host 'h2'"):
        h1.allocate(ip_address("10.81.0.70"))
    assert ip_address("10.81.0.70") not in h1.allocated()
    assert h2.allocate(ip_address("10.81.0.70")) == ip_address("10.81.0.70")
    assert h1.allocate(ip_address("10.81.0.200")) == ip_address("10.81.0.200")  # nobody's range
    with pytest.raises(ConflictError, match="address 10.81.0.200 is in use on the overlay: host 'h1' has it"):
        h3.allocate(ip_address("10.81.0.200"))
    h1.release(ip_address("10.81.0.200"))
    h1.release(ip_address("10.81.0.200"))  # twice: silent
    assert h3.allocate(ip_address("10.81.0.200")) == ip_address("10.81.0.200")


def test_a_shared_pool_never_hands_out_what_another_host_holds():
    _, (h1, _, h3) = _shared_pools()
    assert h1.allocate() == ip_address("10.81.0.2")  # .1 is the gateway
    assert h3.allocate() == ip_address("10.81.0.3")  # no range: the whole subnet, but .2 is h1's
    assert h1.allocate() == ip_address("10.81.0.4")  # .3 is h3's: skipped, and given back to h1's own pool
    assert h1.allocated() == {ip_address("10.81.0.2"), ip_address("10.81.0.4")}
