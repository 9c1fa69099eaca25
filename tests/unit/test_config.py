from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from coremesh.config import MeshConfig, parse_peer_address
from coremesh.errors import ConfigError, InvalidAddress, InvalidPeerId
from coremesh.identity import Identity


def test_defaults_are_valid() -> None:
    config = MeshConfig()
    assert config.datagram_size == 1200
    assert config.listen_address.host == "::"


def test_durations_accept_units() -> None:
    config = MeshConfig(heartbeat_interval="250ms", idle_timeout="1m")  # type: ignore[arg-type]
    assert config.heartbeat_interval == 0.25 and config.idle_timeout == 60.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"listen_addr": "nope"}, "listen_addr"),
        ({"max_connections": 0}, "max_connections"),
        ({"max_connections": True}, "max_connections"),
        ({"heartbeat_interval": "soon"}, "heartbeat_interval"),
        ({"heartbeat_interval": 10, "idle_timeout": 15}, "idle_timeout"),
        ({"datagram_size": 500}, "datagram_size"),
        ({"bootstrap_peers": "1.2.3.4:5"}, "bootstrap_peers"),
        ({"bootstrap_peers": ("bad@1.2.3.4:5",)}, "bootstrap_peers"),
        ({"enable_relay": "yes"}, "enable_relay"),
    ],
)
def test_bad_values_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        MeshConfig(**kwargs)  # type: ignore[arg-type]


def test_from_dict_refuses_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="lisen_addr"):
        MeshConfig.from_dict({"lisen_addr": "1.2.3.4:5"})
    config = MeshConfig.from_dict({"bootstrap_peers": ["127.0.0.1:9"], "data_dir": "/tmp/x"})
    assert config.bootstrap_peers == ("127.0.0.1:9",)
    assert config.data_dir == Path("/tmp/x")


def test_peer_address_parsing() -> None:
    peer = Identity.generate().peer_id
    parsed = parse_peer_address(f"{peer}@[::1]:9")
    assert parsed.peer_id == peer and parsed.address.port == 9
    assert parse_peer_address("127.0.0.1:9").peer_id is None
    with pytest.raises(InvalidAddress):
        parse_peer_address("127.0.0.1:9", require_id=True)
    with pytest.raises(InvalidPeerId):
        parse_peer_address("@127.0.0.1:9")
    with pytest.raises(InvalidAddress):
        parse_peer_address(f"{peer}@127.0.0.1:0")


def test_relays_parse_with_and_without_credentials() -> None:
    from coremesh.config import parse_relay

    config = MeshConfig(relays=("127.0.0.1:3478", "1700000000:alice:c2VjcmV0@[::1]:3478"))
    plain, timed = config.relay_servers
    assert plain.username is None and plain.address.port == 3478
    assert (timed.username, timed.password, timed.address.host) == ("1700000000:alice", "c2VjcmV0", "::1")
    assert "c2VjcmV0" not in str(timed)
    assert parse_relay("relay.example:3478").address.host == "relay.example"
    for bad in ("", "user@1.2.3.4:3478", ":pw@1.2.3.4:3478", "1.2.3.4"):
        with pytest.raises(InvalidAddress):
            parse_relay(bad)
    with pytest.raises(ConfigError, match="relays"):
        MeshConfig(relays=("nope",))


def test_keyed_relay_urls_are_validated() -> None:
    config = MeshConfig(keyed_relays=("ws://127.0.0.1:8443/v1/relay", "tcp://[::1]:9000"))
    assert config.keyed_relay_urls == ("ws://127.0.0.1:8443/v1/relay", "tcp://[::1]:9000")
    with pytest.raises(ConfigError, match="keyed_relays"):
        MeshConfig(keyed_relays=("http://127.0.0.1:80",))


def test_the_tuple_fields_come_from_the_field_types() -> None:
    from coremesh.config import tuple_fields

    assert tuple_fields(MeshConfig) == {
        "bootstrap_peers",
        "relays",
        "keyed_relays",
        "advertise_addresses",
        "stun_servers",
        "mdns_interfaces",
        "allow_peers",
        "deny_peers",
        "padding_buckets",
    }
    config = MeshConfig.from_dict(
        {key: ["127.0.0.1:9"] for key in ("bootstrap_peers", "advertise_addresses", "stun_servers")}
        | {"relays": ["127.0.0.1:3478"], "keyed_relays": ["tcp://127.0.0.1:9"], "mdns_interfaces": ["::1"]}
    )
    for key in tuple_fields(MeshConfig):
        assert isinstance(getattr(config, key), tuple), key


@dataclasses.dataclass(frozen=True, kw_only=True)
class _WiderConfig(MeshConfig):
    """MeshConfig with one more tuple field, as a future setting would add it."""

    trusted_peers: tuple[str, ...] = ()


def test_a_new_tuple_field_is_read_from_a_list_without_being_listed() -> None:
    config = _WiderConfig.from_dict({"trusted_peers": ["a", "b"], "relays": ["127.0.0.1:3478"]})
    assert config.trusted_peers == ("a", "b")
    assert config.relays == ("127.0.0.1:3478",)
