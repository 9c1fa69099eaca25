"""Netcheck and discovery settings in MeshConfig and the node's flags: validated, errors name the field."""

from __future__ import annotations

import pytest
from coremesh_node.settings import resolve

from coremesh.addr import Address
from coremesh.config import MeshConfig
from coremesh.errors import ConfigError


def test_defaults_have_no_public_server_and_mdns_off() -> None:
    config = MeshConfig()
    assert config.stun_servers == () and config.stun_addresses == ()
    assert config.mdns is False and config.mdns_interfaces == ()
    assert config.netcheck_interval == 300.0


def test_stun_servers_fall_back_to_the_relays() -> None:
    config = MeshConfig(relays=("alice:pw@192.0.2.1:3478", "192.0.2.2:3478", "192.0.2.1:3478"))
    assert config.stun_addresses == (Address("192.0.2.1", 3478), Address("192.0.2.2", 3478))
    own = MeshConfig(relays=("192.0.2.2:3478",), stun_servers=("198.51.100.7:3478", "stun.example:3478"))
    assert own.stun_addresses == (Address("198.51.100.7", 3478), Address("stun.example", 3478))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stun_servers": "192.0.2.1:3478"}, "stun_servers: expected a list"),
        ({"stun_servers": ("192.0.2.1",)}, "stun_servers:"),
        ({"stun_servers": ("192.0.2.1:0",)}, "stun_servers:"),
        ({"stun_servers": tuple(f"192.0.2.1:{p}" for p in range(1, 18))}, "stun_servers: at most 16"),
        ({"netcheck_interval": 0.5}, "netcheck_interval: expected 0 (off) or 1 to 86400"),
        ({"netcheck_interval": "soon"}, "netcheck_interval: expected a duration"),
        ({"mdns": "yes"}, "mdns: expected true or false"),
        ({"mdns_interfaces": ("eth0",)}, "mdns_interfaces: expected IP addresses"),
        ({"mdns_interfaces": "10.0.0.1"}, "mdns_interfaces: expected a list"),
    ],
)
def test_bad_values_are_refused_by_name(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        MeshConfig(**kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_durations_and_lists_from_a_mapping() -> None:
    config = MeshConfig.from_dict(
        {"netcheck_interval": "5m", "stun_servers": ["192.0.2.1:3478"], "mdns_interfaces": ["10.0.0.1"]}
    )
    assert config.netcheck_interval == 300.0 and config.netcheck_interval == 300.0
    assert config.stun_servers == ("192.0.2.1:3478",) and config.mdns_interfaces == ("10.0.0.1",)
    assert MeshConfig(netcheck_interval=0).netcheck_interval == 0.0


def test_node_flags() -> None:
    settings = resolve(
        [
            "--stun-server",
            "192.0.2.1:3478",
            "--stun-server",
            "192.0.2.2:3478",
            "--netcheck-interval",
            "1m",
            "--mdns",
            "--mdns-interface",
            "10.0.0.1",
        ]
    )
    mesh = settings.mesh
    assert mesh.stun_servers == ("192.0.2.1:3478", "192.0.2.2:3478")
    assert mesh.netcheck_interval == 60.0 and mesh.mdns is True and mesh.mdns_interfaces == ("10.0.0.1",)
    env = resolve([], env={"COREMESH_STUN_SERVERS": "192.0.2.9:3478, 192.0.2.8:3478"}).mesh
    assert env.stun_servers == ("192.0.2.9:3478", "192.0.2.8:3478")
    with pytest.raises(ConfigError, match="--stun-server: "):
        resolve(["--stun-server", "nope"])
