"""Published ports: ``-p`` parsing, the mapping types and host port bookkeeping."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cnm
from cnm.errors import ConflictError, ExhaustedError, InvalidArgumentError
from cnm.ports import (
    DEFAULT_EPHEMERAL_PORTS,
    HostPortAllocator,
    PortMapping,
    PublishedPort,
    docker_ports_view,
    normalize_ports,
)
from tests.strategies import bad_port_specs, port_mappings, port_specs, protocols

LOCALHOST = IPv4Address("127.0.0.1")

# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("80", [PortMapping(80)]),
        ("8080:80", [PortMapping(80, 8080)]),
        ("127.0.0.1:8080:80", [PortMapping(80, 8080, host_ip=LOCALHOST)]),
        ("127.0.0.1::80", [PortMapping(80, None, host_ip=LOCALHOST)]),
        ("8080:80/udp", [PortMapping(80, 8080, "udp")]),
        ("53/SCTP", [PortMapping(53, protocol="sctp")]),
        ("0.0.0.0:8080:80", [PortMapping(80, 8080)]),
        ("8080-8081:80-81", [PortMapping(80, 8080), PortMapping(81, 8081)]),
        ("80-81", [PortMapping(80), PortMapping(81)]),
    ],
)
def test_parse_docker_forms(spec, expected):
    assert PortMapping.parse(spec) == expected


@given(port_specs())
def test_parse_matches_an_independent_reading_of_the_syntax(case):
    spec, expected = case
    assert PortMapping.parse(spec) == expected


@given(port_mappings)
def test_str_and_parse_round_trip(mapping):
    assert PortMapping.parse(str(mapping)) == [mapping]


@given(bad_port_specs())
def test_bad_specs_are_refused_with_the_spec_quoted(case):
    spec, word = case
    with pytest.raises(InvalidArgumentError) as caught:
        PortMapping.parse(spec)
    message = str(caught.value)
    assert message.startswith(f"port spec {spec!r}: ")
    assert word in message


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("", "no container port"),
        ("8080:", "no container port"),
        ("80/", "no protocol after '/'"),
        ("80/icmp", "unknown protocol 'icmp'"),
        ("1:2:3:4", "too many ':'"),
        ("::80", "empty host address"),
        ("[::1]:8080:80", "IPv6 host address '::1' is not supported yet"),
        ("localhost:8080:80", "host address 'localhost' is not a valid IPv4 address"),
        ("8000-8010:80", "not ranges of the same length"),
        ("80-", "is not a port number"),
        ("-80", "is not a port number"),
        (" 80", "is not a port number"),
        ("٨٠", "is not a port number"),  # Arabic-Indic digits are not port numbers
        ("+80", "is not a port number"),
    ],
)
def test_bad_spec_examples(spec, reason):
    with pytest.raises(InvalidArgumentError) as caught:
        PortMapping.parse(spec)
    assert str(caught.value).startswith(f"port spec {spec!r}: ")
    assert reason in str(caught.value)


@given(st.text(max_size=30))
def test_parse_accepts_or_refuses_cleanly(spec):
    """Arbitrary text either parses to mappings that round-trip, or is an InvalidArgumentError."""
    try:
        mappings = PortMapping.parse(spec)
    except InvalidArgumentError as exc:
        assert repr(spec) in str(exc)
        return
    assert mappings
    for mapping in mappings:
        assert PortMapping.parse(str(mapping)) == [mapping]


@given(st.text(min_size=1, max_size=20), st.characters(exclude_characters="0123456789.:-/tcpudsTCPUDS"))
def test_a_character_foreign_to_the_syntax_is_refused(text, foreign):
    spec = text[: len(text) // 2] + foreign + text[len(text) // 2 :]
    with pytest.raises(InvalidArgumentError):
        PortMapping.parse(spec)


def test_parse_refuses_non_strings():
    with pytest.raises(InvalidArgumentError, match="port spec 80 is not a string"):
        PortMapping.parse(80)  # type: ignore[arg-type]


# --- the value types ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"container_port": 0}, "container port 0 is not a port number (1-65535)"),
        ({"container_port": 65536}, "container port 65536 is not a port number (1-65535)"),
        ({"container_port": True}, "container port True is not a port number"),
        ({"container_port": "80"}, "container port '80' is not a port number"),
        ({"container_port": 80, "host_port": 0}, "host port 0 is not a port number"),
        ({"container_port": 80, "protocol": "icmp"}, "protocol 'icmp' is not one of tcp, udp, sctp"),
        ({"container_port": 80, "protocol": "TCP"}, "protocol 'TCP' is not one of"),
        ({"container_port": 80, "host_ip": "::1"}, "host address '::1' is IPv6, which is not supported yet"),
        ({"container_port": 80, "host_ip": IPv6Address("::1")}, "host address '::1' is IPv6"),
        ({"container_port": 80, "host_ip": "300.1.1.1"}, "host address '300.1.1.1' is not a valid IPv4 address"),
    ],
)
def test_port_mapping_validation(kwargs, message):
    with pytest.raises(InvalidArgumentError) as caught:
        PortMapping(**kwargs)
    assert str(caught.value).startswith(message)


def test_wildcard_host_address_is_stored_as_none():
    assert PortMapping(80, host_ip=IPv4Address("0.0.0.0")) == PortMapping(80)
    assert PortMapping(80, host_ip="127.0.0.1").host_ip == LOCALHOST
    assert PublishedPort("tcp", IPv4Address("0.0.0.0"), 8080, 80).host_ip is None


def test_published_port_str_is_docker_ps_form():
    assert str(PublishedPort("tcp", None, 8080, 80)) == "0.0.0.0:8080->80/tcp"
    assert str(PublishedPort("udp", LOCALHOST, 5353, 53)) == "127.0.0.1:5353->53/udp"


def test_normalize_ports_mixes_strings_and_mappings():
    given_mapping = PortMapping(443, 8443)
    assert normalize_ports(["80-81", given_mapping, "53/udp"]) == [
        PortMapping(80),
        PortMapping(81),
        given_mapping,
        PortMapping(53, protocol="udp"),
    ]
    assert normalize_ports("8080:80") == [PortMapping(80, 8080)]
    assert normalize_ports([]) == []
    with pytest.raises(InvalidArgumentError, match="port 80 is neither"):
        normalize_ports([80])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("ports", "words"),
    [
        (b"8080:80", "are bytes, not a port spec string"),
        (bytearray(b"80"), "are bytes"),
        ({"80/tcp": 8080}, "is a mapping; give a list of port specs"),
        (None, "not None"),
        (8080, "not int 8080"),
        ([b"80"], "port b'80' is neither"),
    ],
)
def test_ports_of_the_wrong_shape_are_refused(ports, words):
    with pytest.raises(InvalidArgumentError, match=re.escape(words)):
        normalize_ports(ports)
    with pytest.raises(InvalidArgumentError, match=r"^endpoint 'web': .*" + re.escape(words)):
        normalize_ports(ports, owner="endpoint 'web'")


@given(port_mappings)
def test_a_single_spec_string_means_the_same_everywhere(mapping):
    spec = str(mapping)
    # connect(ports=spec), connect(ports=[spec]) and SandboxRequest(ports=spec) alike
    assert normalize_ports(spec) == normalize_ports([spec]) == [mapping]
    assert cnm.SandboxRequest("r", ports=spec).ports == (mapping,)
    assert cnm.SandboxRequest("r", ports=[spec, mapping]).ports == (mapping, mapping)


# --- host port bookkeeping ------------------------------------------------------------------


def test_conflict_message_names_both_endpoints():
    ports = HostPortAllocator()
    ports.reserve("web0", [PortMapping(80, 8080)])
    with pytest.raises(ConflictError) as caught:
        ports.reserve("web1", [PortMapping(80, 8080)])
    assert str(caught.value) == "endpoint 'web1': host port 8080/tcp is already published by endpoint 'web0'"


@pytest.mark.parametrize(
    ("held", "wanted", "clash"),
    [
        (PortMapping(80, 8080), PortMapping(81, 8080, host_ip=LOCALHOST), True),
        (PortMapping(80, 8080, host_ip=LOCALHOST), PortMapping(81, 8080), True),
        (PortMapping(80, 8080, host_ip=LOCALHOST), PortMapping(81, 8080, host_ip=LOCALHOST), True),
        (PortMapping(80, 8080, host_ip=LOCALHOST), PortMapping(81, 8080, host_ip="10.0.0.1"), False),
        (PortMapping(80, 8080), PortMapping(80, 8080, "udp"), False),
        (PortMapping(80, 8080), PortMapping(80, 8081), False),
    ],
)
def test_clash_rules(held, wanted, clash):
    ports = HostPortAllocator()
    ports.reserve("web0", [held])
    if clash:
        with pytest.raises(ConflictError, match="already published by endpoint 'web0'"):
            ports.reserve("web1", [wanted])
    else:
        ports.reserve("web1", [wanted])
        assert len(ports.published()) == 2


def test_duplicates_inside_one_request_conflict():
    ports = HostPortAllocator()
    with pytest.raises(ConflictError, match="endpoint 'web0': host port 8080/tcp is requested more than once"):
        ports.reserve("web0", [PortMapping(80, 8080), PortMapping(81, 8080)])
    assert ports.published() == {}


def test_ephemeral_ports_lowest_free_first_and_reused():
    ports = HostPortAllocator((100, 103))
    a, b = ports.reserve("a", [PortMapping(80), PortMapping(81)])
    assert (a.host_port, b.host_port) == (100, 101)
    ports.reserve("fixed", [PortMapping(80, 102)])
    (c,) = ports.reserve("c", [PortMapping(80)])
    assert c.host_port == 103  # 102 is held by a fixed publication
    ports.release([a])
    (d,) = ports.reserve("d", [PortMapping(80, protocol="tcp")])
    assert d.host_port == 100
    (e,) = ports.reserve("e", [PortMapping(80, protocol="udp")])
    assert e.host_port == 100  # protocols are separate spaces
    with pytest.raises(ExhaustedError, match="endpoint 'f': no free host port left for tcp in 100-103"):
        ports.reserve("f", [PortMapping(80)])


def test_ephemeral_pick_avoids_fixed_ports_later_in_the_same_request():
    ports = HostPortAllocator((100, 101))
    first, second = ports.reserve("a", [PortMapping(80), PortMapping(81, 100)])
    assert (first.host_port, second.host_port) == (101, 100)


def test_all_or_nothing_on_exhaustion():
    ports = HostPortAllocator((100, 102))
    ports.reserve("a", [PortMapping(80)])
    before = ports.published()
    with pytest.raises(ExhaustedError):
        ports.reserve("b", [PortMapping(83, 9000), PortMapping(80), PortMapping(81), PortMapping(82)])
    assert ports.published() == before
    assert [p.host_port for p in ports.reserve("c", [PortMapping(80), PortMapping(81)])] == [101, 102]


def test_default_ephemeral_range_is_dockers():
    assert HostPortAllocator().ephemeral_ports == DEFAULT_EPHEMERAL_PORTS == (49153, 60999)
    (published,) = HostPortAllocator().reserve("a", [PortMapping(80)])
    assert published.host_port == 49153


@pytest.mark.parametrize("bounds", [(0, 10), (10, 65536), (200, 100)])
def test_invalid_ephemeral_range(bounds):
    with pytest.raises(InvalidArgumentError):
        HostPortAllocator(bounds)


def test_release_is_idempotent_and_ignores_stale_publications():
    ports = HostPortAllocator()
    (first,) = ports.reserve("a", [PortMapping(80, 8080)])
    ports.release([first])
    ports.release([first])
    (second,) = ports.reserve("b", [PortMapping(81, 8080)])
    ports.release([first])  # a stale publication of the same host port
    assert ports.published() == {second: "b"}


def test_reserve_refuses_non_mappings_without_reserving():
    ports = HostPortAllocator()
    with pytest.raises(InvalidArgumentError):
        ports.reserve("a", [PortMapping(80, 8080), "80"])  # type: ignore[list-item]
    assert ports.published() == {}


class NaivePorts:
    """The bookkeeping rules stated plainly, to check HostPortAllocator against."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self.held: dict[PublishedPort, str] = {}

    def clashes(self, protocol: str, host_ip: IPv4Address | None, port: int) -> bool:
        return any(
            p.protocol == protocol and p.host_port == port and (p.host_ip == host_ip or None in (p.host_ip, host_ip))
            for p in self.held
        )

    def reserve(self, owner: str, mappings: list[PortMapping]) -> list[PublishedPort]:
        saved = dict(self.held)
        results: dict[int, PublishedPort] = {}
        try:
            for index, m in enumerate(mappings):
                if m.host_port is not None:
                    if self.clashes(m.protocol, m.host_ip, m.host_port):
                        raise ConflictError("model")
                    results[index] = PublishedPort(m.protocol, m.host_ip, m.host_port, m.container_port)
                    self.held[results[index]] = owner
            for index, m in enumerate(mappings):
                if m.host_port is None:
                    free = [
                        port
                        for port in range(self.first, self.last + 1)
                        if not any(p.protocol == m.protocol and p.host_port == port for p in self.held)
                    ]
                    if not free:
                        raise ExhaustedError("model")
                    results[index] = PublishedPort(m.protocol, m.host_ip, free[0], m.container_port)
                    self.held[results[index]] = owner
        except (ConflictError, ExhaustedError):
            self.held = saved
            raise
        return [results[index] for index in range(len(mappings))]

    def release(self, published: list[PublishedPort]) -> None:
        for p in published:
            self.held.pop(p, None)


# A tiny port space (fixed ports 1-8, ephemeral 3-6, two host addresses) so
# that clashes, exhaustion and reuse all happen often.
_small_mappings = st.builds(
    PortMapping,
    container_port=st.integers(1, 3),
    host_port=st.none() | st.integers(1, 8),
    protocol=st.sampled_from(["tcp", "udp"]),
    host_ip=st.sampled_from([None, LOCALHOST, IPv4Address("10.0.0.1")]),
)
_port_operations = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.sampled_from("abc"), st.lists(_small_mappings, max_size=4)),
        st.tuples(st.just("release"), st.integers(0, 50), st.integers(0, 3)),
    ),
    max_size=40,
)


@given(_port_operations)
def test_allocator_matches_model(operations):
    ports, model = HostPortAllocator((3, 6)), NaivePorts(3, 6)
    history: list[list[PublishedPort]] = []
    for operation in operations:
        if operation[0] == "reserve":
            _, owner, mappings = operation
            try:
                expected = model.reserve(owner, mappings)
            except (ConflictError, ExhaustedError) as model_error:
                with pytest.raises(type(model_error)):
                    ports.reserve(owner, mappings)
            else:
                assert ports.reserve(owner, mappings) == expected
                history.append(expected)
        elif history:
            # May name a stale publication: releasing it must change nothing.
            batch = history[operation[1] % len(history)][: operation[2]]
            ports.release(batch)
            model.release(batch)
        assert ports.published() == model.held


@given(_port_operations)
def test_never_the_same_host_port_twice_and_all_or_nothing(operations):
    ports = HostPortAllocator((3, 6))
    history: list[list[PublishedPort]] = []
    for operation in operations:
        before = ports.published()
        if operation[0] == "reserve":
            try:
                history.append(ports.reserve(operation[1], operation[2]))
            except (ConflictError, ExhaustedError):
                assert ports.published() == before
                continue
            after = ports.published()
            assert len(after) == len(before) + len(operation[2])
            assert all(after[p] == operation[1] for p in history[-1])
        elif history:
            ports.release(history[operation[1] % len(history)][: operation[2]])
        held = list(ports.published())
        for i, p in enumerate(held):
            for q in held[i + 1 :]:
                same_port = (p.protocol, p.host_port) == (q.protocol, q.host_port)
                assert not (same_port and (p.host_ip == q.host_ip or None in (p.host_ip, q.host_ip)))


@given(st.lists(st.tuples(protocols, st.integers(1, 5)), max_size=30))
def test_ephemeral_ports_stay_in_range(requests):
    ports = HostPortAllocator((1000, 1009))
    for protocol, count in requests:
        try:
            published = ports.reserve("x", [PortMapping(80, protocol=protocol)] * count)
        except ExhaustedError:
            continue
        assert all(1000 <= p.host_port <= 1009 for p in published)
        assert len({p.host_port for p in published}) == count


# --- the inspect view --------------------------------------------------------------------------


def test_docker_ports_view():
    published = [
        PublishedPort("tcp", None, 8080, 80),
        PublishedPort("tcp", LOCALHOST, 8081, 80),
        PublishedPort("udp", None, 5353, 53),
    ]
    assert docker_ports_view(published) == {
        "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "127.0.0.1", "HostPort": "8081"}],
        "53/udp": [{"HostIp": "0.0.0.0", "HostPort": "5353"}],
    }
    assert docker_ports_view([]) == {}
