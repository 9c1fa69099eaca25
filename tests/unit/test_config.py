from __future__ import annotations

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
