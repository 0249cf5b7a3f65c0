"""Published ports: ``-p`` parsing, the mapping types and host port bookkeeping."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cnm
from cnm.errors import ConflictError, ExhaustedError, InvalidArgumentError
from cnm.port_books import HostPortAllocator, HostSockets
from cnm.ports import (
    DEFAULT_EPHEMERAL_PORTS,

    PortMapping,
    PublishedPort,
    docker_ports_view,
    normalize_ports,
)
from cnm.sock_diag import HostSocket
from tests.strategies import bad_port_specs, port_mappings, port_specs, protocols

LOCALHOST = IPv4Address("127.0.0.1")
ANY6 = IPv6Address("::")
DOC6 = IPv6Address("2001:db8::1")
V4, V6, DUAL = (4,), (6,), (4, 6)

# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("80", [PortMapping(80)]),
        ("8080:80", [PortMapping(80, 8080)]),
        ("127.0.0.1:8080:80", [PortMapping(80, 8080, host_ip=LOCALHOST)]),
        ("127.0.0.1::80", [PortMapping(80, None, host_ip=LOCALHOST)]),
        ("[::]:8080:80", [PortMapping(80, 8080, host_ip=ANY6)]),
        ("[2001:db8::1]:8080:80/udp", [PortMapping(80, 8080, "udp", DOC6)]),
        ("[2001:DB8:0:0:0:0:0:1]::80", [PortMapping(80, None, host_ip=DOC6)]),
        ("[::]:8080-8081:80-81", [PortMapping(80, 8080, host_ip=ANY6), PortMapping(81, 8081, host_ip=ANY6)]),
        ("[::]::80-81/sctp", [PortMapping(80, None, "sctp", ANY6), PortMapping(81, None, "sctp", ANY6)]),
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
        ("[::1]:8080:80", "host address '::1' cannot be published on: the kernel never lets ::1 traffic leave"),
        ("2001:db8::1:8080:80", "IPv6 host address '2001:db8::1' must be written in brackets, like [2001:db8::1]:8080:80"),
        ("[2001:db8::1:8080:80", "no ']' after the IPv6 host address"),
        ("[2001:db8::1]8080:80", "expected ':' after the ']'"),
        ("[2001:db8::1]:80", "expected [host_ip]:[host_port]:container_port"),
        ("[2001:db8::1]:1:2:80", "expected [host_ip]:[host_port]:container_port"),
        ("[127.0.0.1]:8080:80", "'127.0.0.1' in brackets is not an IPv6 address"),
        ("[]:8080:80", "empty host address"),
        ("[fe80::1%eth0]:8080:80", "has a zone index"),
        ("[::ffff:127.0.0.1]:8080:80", "is an IPv4-mapped IPv6 address; give it as 127.0.0.1"),
        ("[2001:db8::g]:8080:80", "host address '2001:db8::g' is not a valid IPv6 address"),
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


@given(st.text(min_size=1, max_size=20), st.characters(exclude_characters="0123456789abcdefABCDEF.:-/[]tpusTPUS"))
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
        ({"container_port": 80, "host_ip": "::1"}, "host address '::1' cannot be published on"),
        ({"container_port": 80, "host_ip": IPv6Address("::1")}, "host address '::1' cannot be published on"),
        ({"container_port": 80, "host_ip": IPv6Address("fe80::1%eth0")}, "host address 'fe80::1%eth0' has a zone index"),
        ({"container_port": 80, "host_ip": "::ffff:10.0.0.1"}, "host address '::ffff:10.0.0.1' is an IPv4-mapped"),
        ({"container_port": 80, "host_ip": "300.1.1.1"}, "host address '300.1.1.1' is not a valid IPv4 address"),
        ({"container_port": 80, "host_ip": "fd00::g"}, "host address 'fd00::g' is not a valid IPv6 address"),
        ({"container_port": 80, "host_ip": 5}, "host address 5 is not an IPv4 or IPv6 address"),
    ],
)
def test_port_mapping_validation(kwargs, message):
    with pytest.raises(InvalidArgumentError) as caught:
        PortMapping(**kwargs)
    assert str(caught.value).startswith(message)


def test_wildcard_host_addresses():
    # 0.0.0.0 is Docker's default binding address, so it means every family.
    assert PortMapping(80, host_ip=IPv4Address("0.0.0.0")) == PortMapping(80)
    assert PortMapping(80, host_ip="0.0.0.0").host_ip is None
    # [::] means IPv6 only, so it is kept.
    assert PortMapping(80, host_ip="::").host_ip == ANY6
    assert PortMapping(80, host_ip="127.0.0.1").host_ip == LOCALHOST
    assert PortMapping(80, host_ip="2001:0db8::0001").host_ip == DOC6
    # A publication is on one family; its wildcard is None with that family.
    v4 = PublishedPort("tcp", IPv4Address("0.0.0.0"), 8080, 80)
    v6 = PublishedPort("tcp", "::", 8080, 80)
    assert (v4.host_ip, v4.family) == (None, 4)
    assert (v6.host_ip, v6.family) == (None, 6)
    assert v6 == PublishedPort("tcp", None, 8080, 80, family=6) != v4
    assert PublishedPort("tcp", None, 8080, 80) == v4
    assert PublishedPort("tcp", DOC6, 8080, 80).family == 6


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("tcp", DOC6, 8080, 80), {"family": 4}, "published port: host address 2001:db8::1 is IPv6, not IPv4"),
        (("tcp", "0.0.0.0", 8080, 80), {"family": 6}, "published port: host address 0.0.0.0 is IPv4, not IPv6"),
        (("tcp", None, 8080, 80), {"family": 5}, "published port: family 5 is not 4 or 6"),
        (("tcp", "::1", 8080, 80), {}, "host address '::1' cannot be published on"),
        (("tcp", None, 0, 80), {}, "host port 0 is not a port number"),
    ],
)
def test_published_port_validation(args, kwargs, message):
    with pytest.raises(InvalidArgumentError) as caught:
        PublishedPort(*args, **kwargs)
    assert str(caught.value).startswith(message)


def test_published_port_str_is_docker_ps_form():
    assert str(PublishedPort("tcp", None, 8080, 80)) == "0.0.0.0:8080->80/tcp"
    assert str(PublishedPort("udp", LOCALHOST, 5353, 53)) == "127.0.0.1:5353->53/udp"
    assert str(PublishedPort("tcp", None, 8080, 80, family=6)) == "[::]:8080->80/tcp"
    assert str(PublishedPort("tcp", DOC6, 8080, 80)) == "[2001:db8::1]:8080->80/tcp"


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
    ports.reserve("web0", [PortMapping(80, 8080)], families=V4)
    with pytest.raises(ConflictError) as caught:
        ports.reserve("web1", [PortMapping(80, 8080)], families=V4)
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
    ports.reserve("web0", [held], families=V4)
    if clash:
        with pytest.raises(ConflictError, match="already published by endpoint 'web0'"):
            ports.reserve("web1", [wanted], families=V4)
    else:
        ports.reserve("web1", [wanted], families=V4)
        assert len(ports.published()) == 2


def test_duplicates_inside_one_request_conflict():
    ports = HostPortAllocator()
    with pytest.raises(ConflictError, match="endpoint 'web0': host port 8080/tcp is requested more than once"):
        ports.reserve("web0", [PortMapping(80, 8080), PortMapping(81, 8080)], families=V4)
    assert ports.published() == {}


def test_ephemeral_ports_lowest_free_first_and_reused():
    ports = HostPortAllocator((100, 103))
    a, b = ports.reserve("a", [PortMapping(80), PortMapping(81)], families=V4)
    assert (a.host_port, b.host_port) == (100, 101)
    ports.reserve("fixed", [PortMapping(80, 102)], families=V4)
    (c,) = ports.reserve("c", [PortMapping(80)], families=V4)
    assert c.host_port == 103  # 102 is held by a fixed publication
    ports.release([a])
    (d,) = ports.reserve("d", [PortMapping(80, protocol="tcp")], families=V4)
    assert d.host_port == 100
    (e,) = ports.reserve("e", [PortMapping(80, protocol="udp")], families=V4)
    assert e.host_port == 100  # protocols are separate spaces
    with pytest.raises(ExhaustedError, match="endpoint 'f': no free host port left for tcp in 100-103"):
        ports.reserve("f", [PortMapping(80)], families=V4)


def test_ephemeral_pick_avoids_fixed_ports_later_in_the_same_request():
    ports = HostPortAllocator((100, 101))
    first, second = ports.reserve("a", [PortMapping(80), PortMapping(81, 100)], families=V4)
    assert (first.host_port, second.host_port) == (101, 100)


def test_all_or_nothing_on_exhaustion():
    ports = HostPortAllocator((100, 102))
    ports.reserve("a", [PortMapping(80)], families=V4)
    before = ports.published()
    with pytest.raises(ExhaustedError):
        ports.reserve("b", [PortMapping(83, 9000), PortMapping(80), PortMapping(81), PortMapping(82)], families=V4)
    assert ports.published() == before
    assert [p.host_port for p in ports.reserve("c", [PortMapping(80), PortMapping(81)], families=V4)] == [101, 102]


def test_default_ephemeral_range_is_dockers():
    assert HostPortAllocator().ephemeral_ports == DEFAULT_EPHEMERAL_PORTS == (49153, 60999)
    (published,) = HostPortAllocator().reserve("a", [PortMapping(80)], families=V4)
    assert published.host_port == 49153


@pytest.mark.parametrize("bounds", [(0, 10), (10, 65536), (200, 100)])
def test_invalid_ephemeral_range(bounds):
    with pytest.raises(InvalidArgumentError):
        HostPortAllocator(bounds)


def test_release_is_idempotent_and_ignores_stale_publications():
    ports = HostPortAllocator()
    (first,) = ports.reserve("a", [PortMapping(80, 8080)], families=V4)
    ports.release([first])
    ports.release([first])
    (second,) = ports.reserve("b", [PortMapping(81, 8080)], families=V4)
    ports.release([first])  # a stale publication of the same host port
    assert ports.published() == {second: "b"}


def test_reserve_refuses_non_mappings_without_reserving():
    ports = HostPortAllocator()
    with pytest.raises(InvalidArgumentError):
        ports.reserve("a", [PortMapping(80, 8080), "80"], families=V4)  # type: ignore[list-item]
    assert ports.published() == {}


class NaivePorts:
    """The bookkeeping rules stated plainly, to check HostPortAllocator against."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self.held: dict[PublishedPort, str] = {}

    def clashes(self, wanted: PublishedPort) -> bool:
        return any(
            (p.protocol, p.family, p.host_port) == (wanted.protocol, wanted.family, wanted.host_port)
            and (p.host_ip == wanted.host_ip or None in (p.host_ip, wanted.host_ip))
            for p in self.held
        )

    def reserve(self, owner: str, mappings: list[PortMapping], families: tuple[int, ...]) -> list[PublishedPort]:
        for m in mappings:
            if m.host_ip is not None and m.host_ip.version not in families:
                raise InvalidArgumentError("model")
        saved = dict(self.held)
        results: dict[int, list[PublishedPort]] = {}

        def publish(index: int, m: PortMapping, port: int) -> None:
            on = families if m.host_ip is None else (m.host_ip.version,)
            wanted = [PublishedPort(m.protocol, m.host_ip, port, m.container_port, f) for f in on]
            if any(self.clashes(p) for p in wanted):
                raise ConflictError("model")
            results[index] = wanted
            self.held.update(dict.fromkeys(wanted, owner))

        try:
            for index, m in enumerate(mappings):
                if m.host_port is not None:
                    publish(index, m, m.host_port)
            for index, m in enumerate(mappings):
                if m.host_port is None:
                    # Free means: no address of any family holds it for the protocol.
                    free = [
                        port
                        for port in range(self.first, self.last + 1)
                        if not any(p.protocol == m.protocol and p.host_port == port for p in self.held)
                    ]
                    if not free:
                        raise ExhaustedError("model")
                    publish(index, m, free[0])
        except (ConflictError, ExhaustedError):
            self.held = saved
            raise
        return [p for index in range(len(mappings)) for p in results[index]]

    def release(self, published: list[PublishedPort]) -> None:
        for p in published:
            self.held.pop(p, None)


# A tiny port space (fixed ports 1-8, ephemeral 3-6, host addresses of both
# families) so that clashes, exhaustion and reuse all happen often.
_small_mappings = st.builds(
    PortMapping,
    container_port=st.integers(1, 3),
    host_port=st.none() | st.integers(1, 8),
    protocol=st.sampled_from(["tcp", "udp"]),
    host_ip=st.sampled_from([None, LOCALHOST, IPv4Address("10.0.0.1"), ANY6, DOC6]),
)
_families = st.sampled_from([(4,), (6,), (4, 6)])
_port_operations = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.sampled_from("abc"), st.lists(_small_mappings, max_size=4), _families),
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
            _, owner, mappings, families = operation
            try:
                expected = model.reserve(owner, mappings, families)
            except (ConflictError, ExhaustedError, InvalidArgumentError) as model_error:
                with pytest.raises(type(model_error)):
                    ports.reserve(owner, mappings, families=families)
            else:
                assert ports.reserve(owner, mappings, families=families) == expected
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
            _, owner, mappings, families = operation
            try:
                history.append(ports.reserve(owner, mappings, families=families))
            except (ConflictError, ExhaustedError, InvalidArgumentError):
                assert ports.published() == before
                continue
            after = ports.published()
            expected_count = sum(len(families) if m.host_ip is None else 1 for m in mappings)
            assert len(history[-1]) == expected_count
            assert len(after) == len(before) + expected_count
            assert all(after[p] == owner for p in history[-1])
            # A mapping on every family has the same host port on each.
            by_mapping = iter(history[-1])
            for m in mappings:
                ports_of_m = {next(by_mapping).host_port for _ in range(len(families) if m.host_ip is None else 1)}
                assert len(ports_of_m) == 1
        elif history:
            ports.release(history[operation[1] % len(history)][: operation[2]])
        held = list(ports.published())
        for i, p in enumerate(held):
            for q in held[i + 1 :]:
                same_port = (p.protocol, p.family, p.host_port) == (q.protocol, q.family, q.host_port)
                assert not (same_port and (p.host_ip == q.host_ip or None in (p.host_ip, q.host_ip)))


@given(st.lists(st.tuples(protocols, st.integers(1, 5)), max_size=30))
def test_ephemeral_ports_stay_in_range(requests):
    ports = HostPortAllocator((1000, 1009))
    for protocol, count in requests:
        try:
            published = ports.reserve("x", [PortMapping(80, protocol=protocol)] * count, families=V4)
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


# --- dual stack ------------------------------------------------------------------------------


def test_a_mapping_without_address_is_published_on_every_family_with_one_port():
    ports = HostPortAllocator((100, 103))
    published = ports.reserve("web0", [PortMapping(80, 8080), PortMapping(81)], families=DUAL)
    assert published == [
        PublishedPort("tcp", None, 8080, 80, 4),
        PublishedPort("tcp", None, 8080, 80, 6),
        PublishedPort("tcp", None, 100, 81, 4),
        PublishedPort("tcp", None, 100, 81, 6),
    ]
    assert ports.published() == dict.fromkeys(published, "web0")
    four, six = ports.reserve("web1", [PortMapping(81)], families=DUAL)
    assert (four.family, six.family, four.host_port, six.host_port) == (4, 6, 101, 101)


def test_a_mapping_with_an_address_is_published_on_its_family_only():
    ports = HostPortAllocator()
    published = ports.reserve(
        "web0", [PortMapping(80, 8080, host_ip=DOC6), PortMapping(80, 8081, host_ip=LOCALHOST)], families=DUAL
    )
    assert published == [PublishedPort("tcp", DOC6, 8080, 80), PublishedPort("tcp", LOCALHOST, 8081, 80)]
    (any6,) = ports.reserve("web1", [PortMapping(80, 8082, host_ip=ANY6)], families=DUAL)
    assert (any6.host_ip, any6.family) == (None, 6)


@pytest.mark.parametrize(
    ("mapping", "families", "message"),
    [
        (
            PortMapping(80, 8080, host_ip=DOC6),
            V4,
            "endpoint 'web0': port [2001:db8::1]:8080:80/tcp is published on IPv6 host address 2001:db8::1,"
            " but the endpoint has no IPv6 address",
        ),
        (PortMapping(80, host_ip=ANY6), V4, "but the endpoint has no IPv6 address"),
        (PortMapping(80, host_ip=LOCALHOST), V6, "is published on IPv4 host address 127.0.0.1, but the endpoint has no IPv4"),
    ],
)
def test_a_host_address_of_a_family_the_endpoint_lacks_is_refused(mapping, families, message):
    ports = HostPortAllocator()
    with pytest.raises(InvalidArgumentError) as caught:
        ports.reserve("web0", [PortMapping(81, 9000), mapping], families=families)
    assert message in str(caught.value)
    assert ports.published() == {}


@pytest.mark.parametrize("families", [(), (5,), (True,), "46", None, [4, 7]])
def test_families_must_be_four_six_or_both(families):
    with pytest.raises(InvalidArgumentError, match="endpoint 'web0': families"):
        HostPortAllocator().reserve("web0", [PortMapping(80)], families=families)


def test_families_may_be_given_in_any_order_and_repeated():
    ports = HostPortAllocator()
    assert [p.family for p in ports.reserve("a", [PortMapping(80, 1)], families=[6, 4, 6])] == [4, 6]


@pytest.mark.parametrize(
    ("held", "held_families", "wanted", "wanted_families", "message"),
    [
        # Families are separate spaces: 0.0.0.0:8080 and [::]:8080 are two publications.
        (PortMapping(80, 8080), V4, PortMapping(81, 8080, host_ip=ANY6), DUAL, None),
        (PortMapping(80, 8080, host_ip=ANY6), V6, PortMapping(81, 8080, host_ip=LOCALHOST), DUAL, None),
        # Within a family the wildcard clashes with a specific address, both ways.
        (
            PortMapping(80, 8080, host_ip=ANY6),
            V6,
            PortMapping(81, 8080, host_ip=DOC6),
            DUAL,
            "endpoint 'web1': host port [2001:db8::1]:8080/tcp is already published by endpoint 'web0' (on [::])",
        ),
        (
            PortMapping(80, 8080, host_ip=DOC6),
            DUAL,
            PortMapping(81, 8080),
            DUAL,
            "endpoint 'web1': host port [::]:8080/tcp is already published by endpoint 'web0' (on [2001:db8::1])",
        ),
        (
            PortMapping(80, 8080),
            DUAL,
            PortMapping(81, 8080, host_ip=ANY6),
            V6,
            "endpoint 'web1': host port [::]:8080/tcp is already published by endpoint 'web0'",
        ),
        (
            PortMapping(80, 8080),
            DUAL,
            PortMapping(81, 8080, host_ip=LOCALHOST),
            DUAL,
            "endpoint 'web1': host port 127.0.0.1:8080/tcp is already published by endpoint 'web0' (on 0.0.0.0)",
        ),
        (PortMapping(80, 8080, host_ip=DOC6), V6, PortMapping(81, 8080, host_ip="2001:db8::2"), V6, None),
    ],
)
def test_clash_rules_per_family(held, held_families, wanted, wanted_families, message):
    ports = HostPortAllocator()
    first = ports.reserve("web0", [held], families=held_families)
    if message is None:
        second = ports.reserve("web1", [wanted], families=wanted_families)
        assert ports.published() == {**dict.fromkeys(first, "web0"), **dict.fromkeys(second, "web1")}
    else:
        with pytest.raises(ConflictError) as caught:
            ports.reserve("web1", [wanted], families=wanted_families)
        assert str(caught.value) == message
        assert ports.published() == dict.fromkeys(first, "web0")


def test_a_dual_stack_clash_on_one_family_reserves_neither():
    ports = HostPortAllocator()
    ports.reserve("web0", [PortMapping(80, 8080, host_ip=ANY6)], families=V6)
    with pytest.raises(ConflictError, match=r"host port \[::\]:8080/tcp"):
        ports.reserve("web1", [PortMapping(81, 9000), PortMapping(81, 8080)], families=DUAL)
    assert set(ports.published().values()) == {"web0"}
    # The IPv4 half of the refused mapping was not kept: 0.0.0.0:8080 is free.
    ports.reserve("web2", [PortMapping(81, 8080)], families=V4)


def test_an_ephemeral_port_held_on_one_family_is_not_handed_out_for_the_other():
    ports = HostPortAllocator((100, 101))
    (six,) = ports.reserve("a", [PortMapping(80)], families=V6)
    (four,) = ports.reserve("b", [PortMapping(80)], families=V4)
    assert (six.host_port, four.host_port) == (100, 101)
    with pytest.raises(ExhaustedError):
        ports.reserve("c", [PortMapping(80)], families=DUAL)
    ports.release([six])
    assert [p.host_port for p in ports.reserve("c", [PortMapping(80)], families=DUAL)] == [100, 100]


def test_docker_ports_view_dual_stack():
    ports = HostPortAllocator()
    published = ports.reserve(
        "web0", [PortMapping(80, 8080), PortMapping(53, 5353, "udp", DOC6), PortMapping(80, 8081, host_ip=ANY6)],
        families=DUAL,
    )
    assert docker_ports_view(published) == {
        "80/tcp": [
            {"HostIp": "0.0.0.0", "HostPort": "8080"},
            {"HostIp": "::", "HostPort": "8080"},
            {"HostIp": "::", "HostPort": "8081"},
        ],
        "53/udp": [{"HostIp": "2001:db8::1", "HostPort": "5353"}],
    }


# --- the host's own sockets -----------------------------------------------------------------

ANY4, ANY6 = IPv4Address("0.0.0.0"), IPv6Address("::")


@pytest.mark.parametrize(
    ("held", "wanted", "families", "clash"),
    [
        (HostSocket("tcp", 4, ANY4, 8080), PortMapping(80, 8080), V4, True),
        (HostSocket("tcp", 4, LOCALHOST, 8080), PortMapping(80, 8080), V4, True),
        (HostSocket("tcp", 4, ANY4, 8080), PortMapping(80, 8080, host_ip=LOCALHOST), V4, True),
        (HostSocket("tcp", 4, LOCALHOST, 8080), PortMapping(80, 8080, host_ip="10.0.0.1"), V4, False),
        (HostSocket("tcp", 6, ANY6, 8080, v6only=False), PortMapping(80, 8080), V4, True),
        (HostSocket("tcp", 6, ANY6, 8080, v6only=True), PortMapping(80, 8080), V4, False),
        (HostSocket("tcp", 6, ANY6, 8080, v6only=True), PortMapping(80, 8080), DUAL, True),
        (HostSocket("tcp", 6, IPv6Address("fd00::1"), 8080), PortMapping(80, 8080), V4, False),
        (HostSocket("tcp", 6, IPv6Address("::ffff:127.0.0.1"), 8080), PortMapping(80, 8080, host_ip=LOCALHOST), V4, True),
        (HostSocket("tcp", 6, IPv6Address("::ffff:127.0.0.1"), 8080), PortMapping(80, 8080, host_ip="fd00::1"), V6, False),
        (HostSocket("tcp", 4, ANY4, 8080), PortMapping(80, 8080), V6, False),
        (HostSocket("udp", 4, ANY4, 8080), PortMapping(80, 8080), V4, False),
        (HostSocket("tcp", 4, ANY4, 8081), PortMapping(80, 8080), V4, False),
    ],
)
def test_host_socket_clash_rules(held, wanted, families, clash):
    ports = HostPortAllocator()
    sockets = HostSockets([held])
    if clash:
        with pytest.raises(ConflictError, match=re.escape(f"is in use by a socket in the host's namespace ({held})")):
            ports.reserve("web", [wanted], families=families, sockets=sockets)
        assert ports.published() == {}
    else:
        assert ports.reserve("web", [wanted], families=families, sockets=sockets)


def test_a_host_socket_clash_names_the_port_and_the_socket():
    sockets = HostSockets([HostSocket("tcp", 4, LOCALHOST, 2222, uid=1000, inode=4242)])
    with pytest.raises(ConflictError) as caught:
        HostPortAllocator().reserve("web", [PortMapping(22, 2222)], families=V4, sockets=sockets)
    assert str(caught.value) == (
        "endpoint 'web': host port 2222/tcp is in use by a socket in the host's namespace"
        " (127.0.0.1:2222/tcp, uid 1000, inode 4242)"
    )
    kernel_socket = HostSockets([HostSocket("udp", 6, ANY6, 4789)])
    with pytest.raises(ConflictError, match=re.escape("([::]:4789/udp, a kernel socket)")):
        HostPortAllocator().reserve("web", [PortMapping(4789, 4789, "udp")], families=V4, sockets=kernel_socket)


def test_ephemeral_ports_skip_what_host_sockets_hold_and_keep_nothing_of_it():
    ports = HostPortAllocator((100, 104))
    sockets = HostSockets([HostSocket("tcp", 4, LOCALHOST, 100), HostSocket("tcp", 6, ANY6, 102, v6only=True)])
    a, b = ports.reserve("a", [PortMapping(80), PortMapping(81)], families=V4, sockets=sockets)
    assert (a.host_port, b.host_port) == (101, 103)
    # The ports skipped are not held: without the sockets they are handed out.
    (c,) = ports.reserve("c", [PortMapping(80)], families=V4)
    assert c.host_port == 100
    with pytest.raises(ExhaustedError):
        ports.reserve("d", [PortMapping(80), PortMapping(81)], families=V4, sockets=HostSockets([HostSocket("tcp", 4, ANY4, 104)]))
    assert sorted(p.host_port for p in ports.published()) == [100, 101, 103]
    (e,) = ports.reserve("e", [PortMapping(80)], families=V4)
    assert e.host_port == 102
