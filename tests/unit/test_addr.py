from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coremesh.addr import Address, format_address, normalize_socket_address, parse_address
from coremesh.errors import InvalidAddress


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7946", Address("127.0.0.1", 7946)),
        ("[::1]:80", Address("::1", 80)),
        ("[2001:DB8::1]:1", Address("2001:db8::1", 1)),
        ("[::ffff:192.0.2.1]:5", Address("192.0.2.1", 5)),
        (" 0.0.0.0:0 ", Address("0.0.0.0", 0)),
    ],
)
def test_parse(text: str, expected: Address) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "127.0.0.1",
        "::1:80",
        "[::1]80",
        "[::1]:",
        "1.2.3.4:65536",
        "1.2.3.4:-1",
        "1.2.3.4:x",
        "host:1",
        ":80",
    ],
)
def test_rejects(text: str) -> None:
    with pytest.raises(InvalidAddress):
        parse_address(text)


def test_zero_port_and_names_are_opt_in() -> None:
    with pytest.raises(InvalidAddress):
        parse_address("1.2.3.4:0", allow_zero_port=False)
    assert parse_address("Relay.Example:3478", allow_names=True) == Address("relay.example", 3478)


def test_format() -> None:
    assert str(Address("::1", 5)) == "[::1]:5"
    assert format_address("::ffff:127.0.0.1", 9) == "127.0.0.1:9"
    assert normalize_socket_address(("::ffff:127.0.0.1", 9, 0, 0)) == Address("127.0.0.1", 9)
    assert normalize_socket_address(("fe80::1%eth0", 9, 0, 2)) == Address("fe80::1", 9)


@given(st.ip_addresses(), st.integers(0, 65535))
def test_round_trip(ip: object, port: int) -> None:
    addr = parse_address(format_address(str(ip), port))
    assert parse_address(str(addr)) == addr
