"""coremesh-node settings: flags > environment > config file > defaults, and clear errors."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from coremesh_node.logs import log
from coremesh_node.settings import DEFAULT_ADMIN, DEFAULT_LISTEN, build_parser, resolve

from coremesh.addr import Address
from coremesh.errors import ConfigError
from coremesh.identity import Identity
from coremesh.service.logs import configure

PEER_A = Identity(bytes(range(32))).peer_id.to_text()
PEER_B = Identity(bytes(range(1, 33))).peer_id.to_text()


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


# -------------------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    s = resolve([], {})
    assert s.mesh.listen_addr == DEFAULT_LISTEN == "[::]:7946"
    assert s.admin == Address("127.0.0.1", 7947)
    assert DEFAULT_ADMIN == "127.0.0.1:7947"
    assert s.admin_allow_remote is False
    assert s.log_format == "json"
    assert s.log_level == "info"
    assert s.mesh.data_dir is None
    assert s.mesh.bootstrap_peers == ()
    assert s.connect == ()
    assert s.config_file is None


def test_contract_flags(tmp_path: Path) -> None:
    s = resolve(
        [
            "--listen",
            "127.0.0.1:9000",
            "--data-dir",
            str(tmp_path / "d"),
            "--admin",
            "127.0.0.1:9001",
            "--bootstrap",
            f"{PEER_A}@127.0.0.1:9100",
            "--bootstrap",
            "127.0.0.1:9200",
        ],
        {},
    )
    assert s.mesh.listen_address == Address("127.0.0.1", 9000)
    assert s.mesh.data_dir == tmp_path / "d"
    assert s.admin == Address("127.0.0.1", 9001)
    assert s.mesh.bootstrap_peers == (f"{PEER_A}@127.0.0.1:9100", "127.0.0.1:9200")
    assert [str(e) for e in s.pinned_bootstrap] == [f"{PEER_A}@127.0.0.1:9100"]
    assert [str(e.address) for e in s.deferred_bootstrap] == ["127.0.0.1:9200"]


def test_tuning_flags() -> None:
    s = resolve(
        [
            "--heartbeat-interval",
            "250ms",
            "--idle-timeout",
            "2s",
            "--connect-timeout",
            "3",
            "--max-connections",
            "17",
            "--datagram-size",
            "1400",
            "--no-pmtu-discovery",
            "--log-format",
            "text",
            "--log-level",
            "DEBUG",
        ],
        {},
    )
    assert s.mesh.heartbeat_interval == 0.25
    assert s.mesh.idle_timeout == 2.0
    assert s.mesh.connect_timeout == 3.0
    assert s.mesh.max_connections == 17
    assert s.mesh.datagram_size == 1400
    assert s.mesh.pmtu_discovery is False
    assert (s.log_format, s.log_level) == ("text", "debug")


# ------------------------------------------------------------------------------------ precedence


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        '[node]\nlisten_addr = "127.0.0.1:1001"\nadmin = "127.0.0.1:2001"\nlog_level = "warning"\n'
        'log_format = "text"\nmax_connections = 5\n',
    )
    env = {"COREMESH_LISTEN": "127.0.0.1:1002", "COREMESH_ADMIN": "127.0.0.1:2002"}

    s = resolve(["--config", str(cfg), "--listen", "127.0.0.1:1003"], env)
    assert s.mesh.listen_addr == "127.0.0.1:1003"  # flag beats env and file
    assert s.admin == Address("127.0.0.1", 2002)  # env beats file
    assert s.log_level == "warning"  # file beats default
    assert s.log_format == "text"
    assert s.mesh.max_connections == 5
    assert s.config_file == cfg

    s = resolve(["--config", str(cfg)], env)
    assert s.mesh.listen_addr == "127.0.0.1:1002"

    s = resolve(["--config", str(cfg)], {})
    assert s.mesh.listen_addr == "127.0.0.1:1001"
    assert s.admin == Address("127.0.0.1", 2001)


def test_config_file_from_environment(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[node]\nlisten_addr = "127.0.0.1:1001"\n')
    assert resolve([], {"COREMESH_CONFIG": str(cfg)}).mesh.listen_addr == "127.0.0.1:1001"


def test_every_environment_variable(tmp_path: Path) -> None:
    env = {
        "COREMESH_LISTEN": "127.0.0.1:1234",
        "COREMESH_DATA_DIR": str(tmp_path),
        "COREMESH_ADMIN": "[::1]:7000",
        "COREMESH_BOOTSTRAP": f" {PEER_A}@127.0.0.1:9100, 127.0.0.1:9200 ,",
        "COREMESH_CONNECT": f"{PEER_B}@127.0.0.1:9300",
        "COREMESH_LOG_FORMAT": "TEXT",
        "COREMESH_LOG_LEVEL": "Warning",
    }
    s = resolve([], env)
    assert s.mesh.listen_addr == "127.0.0.1:1234"
    assert s.mesh.data_dir == tmp_path
    assert s.admin == Address("::1", 7000)
    assert s.mesh.bootstrap_peers == (f"{PEER_A}@127.0.0.1:9100", "127.0.0.1:9200")
    assert [str(e) for e in s.connect] == [f"{PEER_B}@127.0.0.1:9300"]
    assert (s.log_format, s.log_level) == ("text", "warning")


def test_empty_environment_values_are_ignored() -> None:
    s = resolve([], {"COREMESH_LISTEN": "", "COREMESH_LOG_LEVEL": "  "})
    assert s.mesh.listen_addr == DEFAULT_LISTEN
    assert s.log_level == "info"


def test_lists_replace_and_are_not_merged(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, f'[node]\nbootstrap_peers = ["{PEER_A}@127.0.0.1:1"]\n')
    env = {"COREMESH_BOOTSTRAP": "127.0.0.1:2,127.0.0.1:3"}
    assert resolve(["--config", str(cfg)], {}).mesh.bootstrap_peers == (f"{PEER_A}@127.0.0.1:1",)
    assert resolve(["--config", str(cfg)], env).mesh.bootstrap_peers == ("127.0.0.1:2", "127.0.0.1:3")
    s = resolve(["--config", str(cfg), "--bootstrap", "127.0.0.1:4"], env)
    assert s.mesh.bootstrap_peers == ("127.0.0.1:4",)


def test_connect_peers_are_deduplicated_against_pinned_bootstrap() -> None:
    s = resolve(
        [
            "--bootstrap",
            f"{PEER_A}@127.0.0.1:1",
            "--connect",
            f"{PEER_A}@127.0.0.1:1",
            "--connect",
            f"{PEER_B}@127.0.0.1:2",
            "--connect",
            f"{PEER_B}@127.0.0.1:2",
        ],
        {},
    )
    assert [str(e) for e in s.dial_peers] == [f"{PEER_B}@127.0.0.1:2"]


def test_admin_localhost_is_loopback() -> None:
    assert resolve(["--admin", "localhost:9999"], {}).admin == Address("127.0.0.1", 9999)


# ---------------------------------------------------------------------------------------- errors


def error_of(argv: list[str], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        resolve(argv, env or {})
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_listen_names_the_flag_and_the_env_var() -> None:
    assert error_of(["--listen", "nonsense"]).startswith("--listen: ")
    assert error_of([], {"COREMESH_LISTEN": "1.2.3.4"}).startswith("COREMESH_LISTEN: ")


def test_bad_value_in_file_names_the_file_and_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[node]\nmax_connections = 0\n")
    message = error_of(["--config", str(cfg)])
    assert str(cfg) in message and "max_connections" in message


def test_non_loopback_admin_is_refused_with_the_reason() -> None:
    message = error_of(["--admin", "0.0.0.0:7947"])
    assert "--admin" in message and "loopback" in message and "--admin-allow-remote" in message
    assert "COREMESH_ADMIN" in error_of([], {"COREMESH_ADMIN": "192.0.2.1:7947"})
    s = resolve(["--admin", "0.0.0.0:7947", "--admin-allow-remote"], {})
    assert s.admin == Address("0.0.0.0", 7947) and s.admin_allow_remote


def test_remote_admin_from_the_environment() -> None:
    """A container sets the node up by environment alone, like relay and bootstrap."""
    env = {"COREMESH_ADMIN": "0.0.0.0:7947", "COREMESH_ADMIN_ALLOW_REMOTE": "true"}
    s = resolve([], env)
    assert s.admin == Address("0.0.0.0", 7947) and s.admin_allow_remote
    message = error_of([], {**env, "COREMESH_ADMIN_ALLOW_REMOTE": "maybe"})
    assert "COREMESH_ADMIN_ALLOW_REMOTE" in message


def test_bad_peer_entries() -> None:
    assert "--connect" in error_of(["--connect", "127.0.0.1:9"])  # an id is required
    typo = PEER_A[:-1] + ("a" if PEER_A[-1] != "a" else "b")
    assert "invalid peer id" in error_of(["--connect", f"{typo}@127.0.0.1:9"])
    assert error_of(["--bootstrap", "xyz@127.0.0.1:9"]).startswith("--bootstrap: ")
    assert error_of([], {"COREMESH_BOOTSTRAP": "127.0.0.1"}).startswith("COREMESH_BOOTSTRAP: ")


def test_bad_numbers_and_durations() -> None:
    assert error_of(["--max-connections", "many"]).startswith("--max-connections: ")
    assert error_of(["--datagram-size", "100"]).startswith("--datagram-size: ")
    assert error_of(["--heartbeat-interval", "soon"]).startswith("--heartbeat-interval: ")
    message = error_of(["--heartbeat-interval", "5s", "--idle-timeout", "6s"])
    assert "idle_timeout" in message and "twice" in message


def test_bad_log_settings_from_env_and_file(tmp_path: Path) -> None:
    assert error_of([], {"COREMESH_LOG_FORMAT": "xml"}).startswith("COREMESH_LOG_FORMAT: ")
    assert "json or text" in error_of([], {"COREMESH_LOG_FORMAT": "xml"})
    cfg = write_config(tmp_path, '[node]\nlog_level = "loud"\n')
    assert "log_level" in error_of(["--config", str(cfg)])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[node\n", "invalid TOML"),
        ('listen_addr = "127.0.0.1:1"\n', "put them under [node]"),
        ("[node]\nlisten = 1\n", "unknown key(s) in [node]: listen"),
        ("[node]\nbootstrap_peers = 3\n", "bootstrap_peers: expected a list of strings"),
        ("[node]\nadmin = 7947\n", "admin: expected a string"),
        ("[node]\nadmin_allow_remote = 'yes'\n", "admin_allow_remote: expected true or false"),
        ("[node]\nenable_relay = 'yes'\n", "enable_relay"),
    ],
)
def test_bad_config_files(tmp_path: Path, text: str, expected: str) -> None:
    cfg = write_config(tmp_path, text)
    message = error_of(["--config", str(cfg)])
    assert expected in message
    assert str(cfg) in message or "enable_relay" in message


def test_missing_config_file(tmp_path: Path) -> None:
    assert "not found" in error_of(["--config", str(tmp_path / "nope.toml")])


def test_a_config_path_that_is_a_directory_is_one_clear_line(tmp_path: Path) -> None:
    """The same line as coremesh-relay and coremesh-bootstrap give (the file is read by shared code)."""
    from coremesh_bootstrap.settings import resolve as bootstrap_resolve
    from coremesh_relay.settings import resolve as relay_resolve

    expected = f"config file {tmp_path}: is a directory"
    assert error_of(["--config", str(tmp_path)]) == expected
    assert error_of([], {"COREMESH_CONFIG": str(tmp_path)}) == expected
    for other in (relay_resolve, bootstrap_resolve):
        with pytest.raises(ConfigError) as info:
            other(["--config", str(tmp_path), "--data-dir", str(tmp_path)], {})
        assert str(info.value) == expected


def test_malformed_command_line_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--log-format", "xml"], ["--frobnicate"], ["--listen"]):
        with pytest.raises(SystemExit) as info:
            resolve(argv, {})
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("coremesh-node: error: ") and err.count("\n") == 1


def test_help_documents_flags_env_and_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in (
        "--listen",
        "--data-dir",
        "--admin",
        "--bootstrap",
        "--connect",
        "COREMESH_BOOTSTRAP",
        "[node]",
    ):
        assert word in out


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """main() installs its log handler on the root logger; take it off again after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_main_reports_bad_config_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from coremesh_node.main import main

    assert main(["--listen", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("coremesh-node: error: --listen: ") and err.count("\n") == 1


@pytest.mark.usefixtures("restore_logging")
def test_main_reports_a_corrupt_identity_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from coremesh_node.main import main

    key = tmp_path / "identity.key"
    key.write_bytes(b"garbage")
    key.chmod(0o600)
    assert main(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("coremesh-node: error: ") and "identity" in err and err.count("\n") == 1


@pytest.mark.usefixtures("restore_logging")
def test_an_unexpected_error_is_one_line_and_a_node_crashed_event(capsys: pytest.CaptureFixture[str]) -> None:
    from coremesh_node.settings import PROG

    from coremesh.service import service_main

    async def serve(_settings: object) -> int:
        raise RuntimeError("boom")

    assert service_main(PROG, lambda: resolve([], {}), serve, log) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1] == "coremesh-node: error: unexpected error: RuntimeError: boom"
    crashed = json.loads(lines[0])
    assert crashed["event"] == "node.crashed" and crashed["error"] == "RuntimeError: boom"
    assert "Traceback" in crashed["exc"]


# ------------------------------------------------------------------------------------------- logs


def _log_line(fmt: str) -> str:
    stream = io.StringIO()
    handler = configure(fmt, "info", stream)
    try:
        log.info("node.ready", peer_id="abc", addresses=["127.0.0.1:1"], level="x", note="a b")
        log.debug("hidden")
        logging.getLogger("coremesh.node").info("node started", extra={"address": "127.0.0.1:1"})
    finally:
        logging.getLogger().removeHandler(handler)
    return stream.getvalue()


def test_json_logs_are_one_object_per_line() -> None:
    lines = _log_line("json").splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "node.ready" and first["level"] == "info"
    assert first["peer_id"] == "abc" and first["addresses"] == ["127.0.0.1:1"]
    assert first["field_level"] == "x"  # a clashing field does not overwrite the level
    assert first["ts"].endswith("Z")
    assert second["event"] == "log" and second["msg"] == "node started"
    assert second["address"] == "127.0.0.1:1" and second["logger"] == "coremesh.node"


def test_text_logs() -> None:
    first = _log_line("text").splitlines()[0]
    assert " info    node.ready peer_id=abc " in first
    assert 'note="a b"' in first
