"""Keyed relay configuration and client URLs: invalid values are refused with clear messages."""

from __future__ import annotations

import ssl

import pytest
from coremesh_relay.keyed import KeyedRelayConfig

from coremesh.aio.keyedrelay import KeyedRelayClient
from coremesh.errors import ConfigError
from coremesh.identity import Identity
from coremesh.keyedrelay import parse_relay_url


def test_defaults_are_valid() -> None:
    config = KeyedRelayConfig()
    assert config.listen_address.port == 0
    assert config.limits().max_packet == 65535
    assert config.total_queue_limit == 64 << 20 and config.limits().max_unregistered == 1024
    assert config.max_unregistered_per_ip == 32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"listen": "nowhere"}, "listen: invalid address"),
        ({"listen": "127.0.0.1:70000"}, "listen: invalid port"),
        ({"rate_bytes_per_s": 0}, "rate_bytes_per_s must be a positive number"),
        ({"rate_packets_per_s": -1}, "rate_packets_per_s must be a positive number"),
        ({"burst": 0}, "burst must be a positive number"),
        ({"max_sessions": 0}, "max_sessions must be a positive integer"),
        ({"max_frame": 10}, "max_frame must be an integer in 1313..65568"),
        ({"queue_limit": 1000}, "queue_limit must be an integer of at least max_frame"),
        (
            {"total_queue_limit": (1 << 20) - 1},
            "total_queue_limit must be an integer of at least queue_limit",
        ),
        ({"total_queue_limit": 1e9}, "total_queue_limit must be an integer"),
        ({"queue_stuck_timeout": 0}, "queue_stuck_timeout must be a positive number"),
        ({"max_unregistered": 0}, "max_unregistered must be a positive integer"),
        ({"max_unregistered_per_ip": 0}, "max_unregistered_per_ip must be an integer in 1..max_unregistered"),
        ({"max_unregistered": 8, "max_unregistered_per_ip": 9}, "max_unregistered_per_ip must be"),
        ({"register_timeout": 0}, "register_timeout must be a positive number"),
        ({"idle_timeout": float("nan")}, "idle_timeout must be a positive number"),
        ({"ssl_context": "yes"}, "ssl_context must be an ssl.SSLContext"),
    ],
)
def test_invalid_config_names_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        KeyedRelayConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "path"),
    [
        ("tcp://127.0.0.1:4443", "tcp", "127.0.0.1", 4443, ""),
        ("tls://relay.example.org:443", "tls", "relay.example.org", 443, ""),
        ("ws://[::1]:80/v1/relay", "ws", "::1", 80, "/v1/relay"),
        ("wss://relay.example.org:443", "wss", "relay.example.org", 443, "/v1/relay"),
    ],
)
def test_relay_urls(url: str, scheme: str, host: str, port: int, path: str) -> None:
    parsed = parse_relay_url(url)
    assert (parsed.scheme, parsed.host, parsed.port, parsed.path) == (scheme, host, port, path)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("udp://1.2.3.4:5", "unknown scheme 'udp'"),
        ("tcp://1.2.3.4", "expected HOST:PORT"),
        ("tcp://1.2.3.4:0", "invalid port"),
        ("tcp://1.2.3.4:5/path", "a tcp url has no path"),
        ("1.2.3.4:5", "unknown scheme"),
    ],
)
def test_bad_relay_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_relay_url(url)


def test_client_options_are_checked() -> None:
    identity = Identity.generate()
    with pytest.raises(ConfigError, match="backoff_initial must be positive"):
        KeyedRelayClient(identity, "tcp://127.0.0.1:1", on_packet=print, backoff_initial=0)
    with pytest.raises(ConfigError, match="ssl_context given for a tcp:// url"):
        KeyedRelayClient(
            identity, "tcp://127.0.0.1:1", on_packet=print, ssl_context=ssl.create_default_context()
        )
