"""The relay's TCP/TLS time limits and per-IP grouping, without sockets (times advanced by hand)."""

from __future__ import annotations

from typing import Any

from coremesh_relay.stunturn_config import StunTurnConfig
from coremesh_relay.tcp_limits import ConnectionKey, TcpConnection, ip_group

from coremesh.addr import Address

CONFIG = StunTurnConfig(
    listen=Address("127.0.0.1", 0), tcp_request_timeout=10, tcp_idle_timeout=30, tcp_partial_timeout=5
)
KEY: ConnectionKey = (Address("192.0.2.1", 5000), Address("127.0.0.1", 3478), "tcp")


def connection(now: float = 100.0) -> TcpConnection:
    writer: Any = None  # the limits never touch the writer; only the sweep aborts through it
    return TcpConnection(writer, KEY, ip_group(KEY[0].host), now)


def never(_key: ConnectionKey) -> bool:
    return False


def always(_key: ConnectionKey) -> bool:
    return True


def test_ip_group_is_the_ipv4_address_or_the_ipv6_slash_64() -> None:
    assert ip_group("192.0.2.1") == "192.0.2.1"
    assert ip_group("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert ip_group("2001:db8:1:2::9") == ip_group("2001:db8:1:2:ffff::1")
    assert ip_group("not:an:ip") == "not:an:ip"
    # The keyed relay counts unregistered connections under the same groups.
    assert ip_group("::ffff:192.0.2.7") == "192.0.2.7"
    assert ip_group("fe80::1%eth0") == "fe80::/64"


def test_a_connection_that_sends_no_request_is_closed_after_the_request_timeout() -> None:
    conn = connection()
    assert conn.broken_limit(110.0, CONFIG, never) is None
    assert conn.broken_limit(110.5, CONFIG, never) == "request_timeout"


def test_an_idle_connection_is_closed_unless_it_carries_an_allocation() -> None:
    conn = connection()
    conn.request_received(101.0)
    assert conn.broken_limit(131.0, CONFIG, never) is None
    assert conn.broken_limit(131.5, CONFIG, never) == "idle"
    assert conn.broken_limit(131.5, CONFIG, always) is None


def test_a_partial_frame_is_timed_from_when_it_began_and_reset_by_progress() -> None:
    conn = connection()
    conn.request_received(100.0)
    conn.buffer_read(101.0, empty=False, progress=False)  # half a frame
    conn.buffer_read(103.0, empty=False, progress=False)  # still the same half frame
    assert conn.partial_since == 101.0
    assert conn.broken_limit(106.5, CONFIG, always) == "partial_frame"
    conn.buffer_read(104.0, empty=False, progress=True)  # a frame ended, a new one began
    assert conn.broken_limit(106.5, CONFIG, always) is None
    conn.buffer_read(105.0, empty=True, progress=True)
    assert conn.partial_since is None
