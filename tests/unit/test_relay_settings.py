"""``coremesh-relay`` settings (flags > env > file > defaults, every check) and its admin API with fake
services: health, readiness, Prometheus metrics read from ``stats()``, and a status the CLI can print."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from coremesh_relay.admin import RelayState, create_admin_app
from coremesh_relay.settings import (
    DEFAULT_ADMIN,
    DEFAULT_LISTEN,
    ENV_VARS,
    KEYS,
    RelaySettings,
    build_parser,
    resolve,
)

from coremesh.addr import Address
from coremesh.cli.main import format_status
from coremesh.errors import ConfigError

from ..certs import make_cert


def settings(*argv: str, env: Mapping[str, str] | None = None) -> RelaySettings:
    return resolve(list(argv), env or {})


def config_error(*argv: str, env: Mapping[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        settings(*argv, env=env)
    message = str(info.value)
    assert "\n" not in message
    return message


def write(tmp_path: Path, text: str, name: str = "relay.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    s = settings()
    assert str(s.listen) == DEFAULT_LISTEN and str(s.admin) == DEFAULT_ADMIN
    assert s.keyed_listen is None and s.alt_address is None
    assert s.realm == "coremesh" and s.users == {} and s.static_auth_secret is None
    assert not s.allow_loopback_peers and s.allowed_peer_ips == () and s.denied_peer_ips == ()
    assert (s.min_port, s.max_port) == (49152, 65535)
    assert (s.user_quota, s.total_quota, s.max_bps) == (0, 0, 0)
    assert not s.no_tcp and not s.no_udp and s.ssl_context is None
    assert (s.log_format, s.log_level) == ("json", "info")


def test_every_flag() -> None:
    s = settings(
        "--listen",
        "127.0.0.1:3478",
        "--alt-address",
        "127.0.0.2",
        "--admin",
        "[::1]:9000",
        "--keyed-listen",
        "127.0.0.1:8443",
        "--realm",
        "example.org",
        "--user",
        "alice:pw:with:colons",
        "--user",
        "bob:secret",
        "--static-auth-secret",
        "s3cret",
        "--allow-loopback-peers",
        "--allowed-peer-ip",
        "10.0.0.1-10.0.0.9",
        "--allowed-peer-ip",
        "192.168.1.0/24",
        "--denied-peer-ip",
        "203.0.113.7",
        "--min-port",
        "40000",
        "--max-port",
        "40100",
        "--user-quota",
        "5",
        "--total-quota",
        "100",
        "--max-bps",
        "125000",
        "--no-tcp",
        "--log-format",
        "text",
        "--log-level",
        "DEBUG",
    )
    assert s.listen == Address("127.0.0.1", 3478)
    assert s.alt_address == ipaddress.ip_address("127.0.0.2")
    assert s.admin == Address("::1", 9000) and s.keyed_listen == Address("127.0.0.1", 8443)
    assert s.realm == "example.org"
    assert s.users == {"alice": "pw:with:colons", "bob": "secret"}
    assert s.static_auth_secret == "s3cret" and s.allow_loopback_peers
    assert s.allowed_peer_ips == ("10.0.0.1-10.0.0.9", "192.168.1.0/24")
    assert s.denied_peer_ips == ("203.0.113.7",)
    assert (s.min_port, s.max_port, s.user_quota, s.total_quota, s.max_bps) == (40000, 40100, 5, 100, 125000)
    assert s.no_tcp and not s.no_udp
    assert (s.log_format, s.log_level) == ("text", "debug")
    summary = s.summary()
    assert "s3cret" not in repr(summary) and "secret" not in repr(summary.get("users"))
    assert summary["users"] == 2 and summary["static_auth_secret"] is True


def test_every_key_has_a_flag_and_a_variable() -> None:
    flags = {a.dest for a in build_parser()._actions}
    for key in KEYS:
        assert key in flags, key
        assert ENV_VARS[key] == "COREMESH_RELAY_" + key.upper()
    assert ENV_VARS["config"] == "COREMESH_RELAY_CONFIG"


# ------------------------------------------------------------------------------------- precedence


def test_flags_over_env_over_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[relay]\nrealm = "file"\nmin-port = 1000\nmax_port = 2000\nuser = ["f:1"]\nno-udp = true\n',
    )
    env = {
        "COREMESH_RELAY_CONFIG": str(path),
        "COREMESH_RELAY_REALM": "env",
        "COREMESH_RELAY_MIN_PORT": "1500",
        "COREMESH_RELAY_USER": "e1:1, e2:2",
    }
    s = settings(env=env)
    assert s.realm == "env" and (s.min_port, s.max_port) == (1500, 2000)
    assert s.users == {"e1": "1", "e2": "2"} and s.no_udp and s.config_file == path
    s = settings("--realm", "flag", "--user", "x:y", env=env)
    assert s.realm == "flag" and s.users == {"x": "y"}  # a list replaces, never concatenates


def test_config_flag_beats_config_variable(tmp_path: Path) -> None:
    a = write(tmp_path, '[relay]\nrealm = "a"\n', "a.toml")
    b = write(tmp_path, '[relay]\nrealm = "b"\n', "b.toml")
    assert settings("--config", str(b), env={"COREMESH_RELAY_CONFIG": str(a)}).realm == "b"


def test_env_switches_and_lists() -> None:
    env = {
        "COREMESH_RELAY_ALLOW_LOOPBACK_PEERS": "yes",
        "COREMESH_RELAY_NO_TCP": "true",
        "COREMESH_RELAY_NO_UDP": "0",
        "COREMESH_RELAY_DENIED_PEER_IP": "10.0.0.0/8,192.0.2.1",
        "COREMESH_RELAY_LOG_FORMAT": "TEXT",
        "COREMESH_RELAY_MAX_BPS": "",  # blank is "not set"
    }
    s = settings(env=env)
    assert s.allow_loopback_peers and s.no_tcp and not s.no_udp
    assert s.denied_peer_ips == ("10.0.0.0/8", "192.0.2.1") and s.log_format == "text" and s.max_bps == 0


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--listen", "nonsense"], ["--listen", "HOST:PORT"]),
        (["--listen", "::1:3478"], ["--listen", "[V6]:PORT"]),
        (["--admin", "192.0.2.1:9641"], ["--admin", "loopback", "--admin-allow-remote"]),
        (["--keyed-listen", "127.0.0.1:99999"], ["--keyed-listen", "port"]),
        (["--min-port", "x"], ["--min-port", "whole number"]),
        (["--min-port", "0"], ["--min-port", "1 to 65535"]),
        (["--max-port", "70000"], ["--max-port", "1 to 65535"]),
        (["--min-port", "5000", "--max-port", "4000"], ["--min-port", "--max-port", "empty"]),
        (["--user-quota", "-1"], ["--user-quota", "0 or more"]),
        (["--max-bps", "1.5"], ["--max-bps", "whole number"]),
        (["--no-udp", "--no-tcp"], ["--no-udp", "--no-tcp"]),
        (["--user", "alice"], ["--user", "NAME:PASSWORD"]),
        (["--user", ":pw"], ["--user", "NAME:PASSWORD"]),
        (["--user", "a:1", "--user", "a:2"], ["--user", "'a'", "twice"]),
        (["--realm", ""], ["--realm", "printable"]),
        (["--realm", 'a"b'], ["--realm", "quotes"]),
        (["--static-auth-secret", ""], ["--static-auth-secret", "empty"]),
        (["--allowed-peer-ip", "10.0.0.300"], ["--allowed-peer-ip", "10.0.0.300"]),
        (["--denied-peer-ip", "10.0.0.9-10.0.0.1"], ["--denied-peer-ip", "above"]),
        (["--denied-peer-ip", "10.0.0.1-::1"], ["--denied-peer-ip", "version"]),
        (["--alt-address", "127.0.0.2"], ["--alt-address", "specific", "0.0.0.0"]),
        (["--listen", "127.0.0.1:3478", "--alt-address", "::2"], ["--alt-address", "IPv6", "IPv4"]),
        (["--listen", "127.0.0.1:3478", "--alt-address", "127.0.0.1"], ["--alt-address", "itself"]),
        (["--listen", "127.0.0.1:3478", "--alt-address", "x"], ["--alt-address", "not an IP"]),
        (["--listen", "127.0.0.1:65535", "--alt-address", "127.0.0.2"], ["PORT+1"]),
        (["--log-format", "xml"], ["--log-format", "json, text"]),
        (["--log-level", "loud"], ["--log-level", "debug"]),
        (["--cert", "/nonexistent/cert.pem"], ["--cert", "no such file"]),
        (["--external-ip", "public"], ["--external-ip", "PUBLIC/PRIVATE"]),
        (["--external-ip", "192.0.2.50/"], ["--external-ip", "PUBLIC/PRIVATE"]),
        (["--external-ip", "192.0.2.50/::1"], ["--external-ip", "one IP family"]),
        (["--external-ip", "0.0.0.0"], ["--external-ip", "unicast"]),
        (["--external-ip", "192.0.2.50/10.0.0.1/10.0.0.2"], ["--external-ip", "PUBLIC/PRIVATE"]),
    ],
)
def test_bad_values_name_the_flag(argv: list[str], words: list[str]) -> None:
    message = config_error(*argv)
    for word in words:
        assert word in message, message


def test_errors_name_the_variable_and_the_file(tmp_path: Path) -> None:
    assert config_error(env={"COREMESH_RELAY_MIN_PORT": "abc"}).startswith("COREMESH_RELAY_MIN_PORT:")
    assert "COREMESH_RELAY_NO_TCP" in config_error(env={"COREMESH_RELAY_NO_TCP": "maybe"})
    path = write(tmp_path, "[relay]\nmax_bps = -5\n")
    assert config_error("--config", str(path)).startswith(f"max_bps in {path}:")
    path = write(tmp_path, '[relay]\nno_udp = "yes please"\n')
    assert f"no_udp in {path}" in config_error("--config", str(path))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[relay]\nbogus = 1\n", ["unknown key 'bogus'", "known:"]),
        ("realm = 'x'\n", ["outside a table", "[relay]"]),
        ("[node]\nlisten_addr = '127.0.0.1:1'\n", ["unknown table", "node"]),
        ("[relay\n", ["invalid TOML"]),
        ("[relay]\nmin-port = 1\nmin_port = 2\n", ["twice"]),
        ("[relay]\nuser = 'a:b'\n", []),  # a string is one comma-separated list: accepted
        ("[relay]\nuser = [1, 2]\n", ["user in", "list of strings"]),
        ("[relay]\nrealm = 5\n", ["realm in", "string"]),
    ],
)
def test_bad_config_files(tmp_path: Path, text: str, words: list[str]) -> None:
    path = write(tmp_path, text)
    if not words:
        assert settings("--config", str(path)).users == {"a": "b"}
        return
    message = config_error("--config", str(path))
    assert str(path) in message
    for word in words:
        assert word in message, message


def test_missing_config_file(tmp_path: Path) -> None:
    assert "not found" in config_error("--config", str(tmp_path / "nope.toml"))


def test_bad_flag_syntax_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        settings("--bogus")
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("coremesh-relay: error: ") and "--bogus" in err[0]


def test_external_ip_from_flag_variable_and_file(tmp_path: Path) -> None:
    assert settings().external_ip is None
    assert settings("--external-ip", "192.0.2.50/127.0.0.1").external_ip == "192.0.2.50/127.0.0.1"
    assert settings("-X", "2001:DB8::50").external_ip == "2001:db8::50"
    env = {"COREMESH_RELAY_EXTERNAL_IP": "198.51.100.7"}
    assert settings(env=env).external_ip == "198.51.100.7"
    path = write(tmp_path, '[relay]\nexternal-ip = "203.0.113.9/10.1.2.3"\n')
    assert settings("--config", str(path)).external_ip == "203.0.113.9/10.1.2.3"
    assert settings("--config", str(path), env=env).external_ip == "198.51.100.7"
    assert settings("--external-ip", "192.0.2.1").summary()["external_ip"] == "192.0.2.1"
    assert config_error(env={"COREMESH_RELAY_EXTERNAL_IP": "x"}).startswith("COREMESH_RELAY_EXTERNAL_IP:")
    bad = write(tmp_path, '[relay]\nexternal_ip = "1.2.3"\n', name="bad.toml")
    assert config_error("--config", str(bad)).startswith(f"external_ip in {bad}:")


# ---------------------------------------------------------------------------------------------- TLS


def test_tls_cert_and_key(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    s = settings("--cert", str(cert), "--pkey", str(key))
    assert s.ssl_context is not None and s.summary()["tls"] is True
    assert "--pkey" in config_error("--cert", str(cert))
    assert "--cert" in config_error("--pkey", str(key))
    garbage = write(tmp_path, "not a key", "garbage.pem")
    message = config_error("--cert", str(cert), "--pkey", str(garbage))
    assert "cannot load" in message and "--cert" in message
    (tmp_path / "other").mkdir()
    _, other_key = make_cert(tmp_path / "other")
    assert "cannot load" in config_error("--cert", str(cert), "--pkey", str(other_key))  # not its key


# ---------------------------------------------------------------------------------------- admin API


class FakeService:
    def __init__(self, stats: dict[str, int]) -> None:
        self.counters = stats

    def stats(self) -> dict[str, int]:
        return dict(self.counters)


class BrokenService:
    def stats(self) -> dict[str, int]:
        raise RuntimeError("boom")


def run_admin(state: RelayState, body: Callable[[TestClient[Any, Any]], Awaitable[None]]) -> None:
    async def go() -> None:
        client: TestClient[Any, Any] = TestClient(TestServer(create_admin_app(state)))
        await client.start_server()
        try:
            await body(client)
        finally:
            await client.close()

    asyncio.run(go())


def relay_state() -> RelayState:
    stun = FakeService(
        {
            "allocations_current": 3,
            "allocations_total": 10,
            "bytes_to_peer": 123456,
            "bytes_to_client": 654321,
            "auth_failures": 2,
            "drop_malformed": 4,
            "drop_no_permission": 1,
            "binding_drop_oversize": 6,
            "tcp_drop_malformed": 8,
            "drops": 5,
            "error_420": 1,
            "binding_error_400": 2,
            "binding_success": 7,
            "tcp_connections": 1,
            "tcp_connections_total": 4,
            "something_new": 9,
        }
    )
    keyed = FakeService(
        {
            "sessions_current": 2,
            "sessions_total": 6,
            "bytes_forwarded": 999,
            "auth_failures": 0,
            "drop_rate_limited": 5,
            "closed_idle_timeout": 3,
        }
    )
    return RelayState(
        listen=["127.0.0.1:3478"],
        addresses=["127.0.0.1:3478"],
        settings={"realm": "coremesh"},
        services={"stun_turn": stun, "keyed": keyed},
        service_info={"stun_turn": lambda: {"addresses": ["127.0.0.1:3478"]}},
    )


def test_health_and_readiness() -> None:
    state = relay_state()

    async def body(client: TestClient[Any, Any]) -> None:
        resp = await client.get("/healthz")
        assert resp.status == 200 and await resp.json() == {"ok": True}
        resp = await client.get("/readyz")
        assert resp.status == 503 and (await resp.json())["code"] == "not_ready"
        state.ready = True
        resp = await client.get("/readyz")
        assert resp.status == 200 and (await resp.json())["ready"] is True
        resp = await client.get("/nope")
        assert resp.status == 404 and (await resp.json())["code"] == "not_found"
        resp = await client.post("/healthz")
        assert resp.status == 405 and "error" in await resp.json()

    run_admin(state, body)


def test_metrics_from_stats() -> None:
    state = relay_state()
    state.services["broken"] = BrokenService()

    async def body(client: TestClient[Any, Any]) -> None:
        resp = await client.get("/metrics")
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
        for line in (
            "coremesh_relay_allocations 3.0",
            "coremesh_relay_allocations_created_total 10.0",
            'coremesh_relay_relayed_bytes_total{direction="to_peer"} 123456.0',
            'coremesh_relay_relayed_bytes_total{direction="to_client"} 654321.0',
            'coremesh_relay_auth_failures_total{service="stun_turn"} 2.0',
            'coremesh_relay_auth_failures_total{service="keyed"} 0.0',
            "coremesh_relay_stun_binding_requests_total 7.0",
            'coremesh_relay_drops_total{reason="malformed",service="stun_turn"} 4.0',
            'coremesh_relay_drops_total{reason="no_permission",service="stun_turn"} 1.0',
            'coremesh_relay_drops_total{reason="binding_oversize",service="stun_turn"} 6.0',
            'coremesh_relay_drops_total{reason="tcp_malformed",service="stun_turn"} 8.0',
            'coremesh_relay_drops_total{reason="rate_limited",service="keyed"} 5.0',
            'coremesh_relay_stun_errors_total{code="420",method="turn"} 1.0',
            'coremesh_relay_stun_errors_total{code="400",method="binding"} 2.0',
            "coremesh_relay_tcp_connections 1.0",
            "coremesh_relay_tcp_accepted_total 4.0",
            'coremesh_relay_keyed_closed_total{reason="idle_timeout"} 3.0',
            "coremesh_relay_keyed_sessions 2.0",
            "coremesh_relay_keyed_connections_total 6.0",
            "coremesh_relay_keyed_forwarded_bytes_total 999.0",
            "coremesh_relay_stun_turn_something_new 9.0",
            'coremesh_relay_service_up{service="stun_turn"} 1.0',
            'coremesh_relay_service_up{service="broken"} 0.0',
            "# TYPE coremesh_relay_relayed_bytes_total counter",
            "# TYPE coremesh_relay_allocations gauge",
        ):
            assert line in text, line
        assert "coremesh_relay_build_info{version=" in text
        assert "process_resident_memory_bytes" in text
        assert "coremesh_relay_stun_turn_drops" not in text  # the sum of drops_total, not repeated

    run_admin(state, body)


def test_status_is_printable_by_the_cli() -> None:
    state = relay_state()
    state.ready = True

    async def body(client: TestClient[Any, Any]) -> None:
        resp = await client.get("/v1/status")
        assert resp.status == 200
        st = await resp.json()
        assert st["role"] == "relay" and st["peer_id"] is None
        assert st["listen"] == ["127.0.0.1:3478"] and st["addresses"] == ["127.0.0.1:3478"]
        assert st["connections"] == 5  # 3 allocations + 2 keyed sessions
        assert st["services"]["stun_turn"]["addresses"] == ["127.0.0.1:3478"]
        assert st["services"]["stun_turn"]["stats"]["allocations_total"] == 10
        assert st["services"]["keyed"]["stats"]["sessions_current"] == 2
        assert st["stats"]["stun_turn.bytes_to_peer"] == 123456
        assert isinstance(st["uptime_s"], float) and isinstance(st["version"], str)
        text = format_status(st)
        assert "role         relay" in text and "listen       127.0.0.1:3478" in text

    run_admin(state, body)
