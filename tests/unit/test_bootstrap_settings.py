"""``coremesh-bootstrap`` settings: precedence, validation, one-line errors naming the source."""

from __future__ import annotations

from pathlib import Path

import pytest
from coremesh_bootstrap.main import main, mesh_config
from coremesh_bootstrap.settings import merge, resolve

from coremesh.errors import ConfigError


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    config = tmp_path / "b.toml"
    config.write_text('[bootstrap]\nlisten = "127.0.0.1:7100"\ndht-k = 16\nadvertise = ["192.0.2.7:7100"]\n')
    s = resolve(
        ["--config", str(config), "--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1:7200"],
        {"COREMESH_BOOTSTRAP_LISTEN": "127.0.0.1:7300", "COREMESH_BOOTSTRAP_DHT_ALPHA": "4"},
    )
    assert str(s.listen) == "127.0.0.1:7200"
    assert (s.dht_k, s.dht_alpha) == (16, 4)
    assert [str(a) for a in s.advertise] == ["192.0.2.7:7100"]
    mesh = mesh_config(s)
    assert mesh.dht_config.k == 16 and mesh.dht_config.alpha == 4
    assert mesh.data_dir == tmp_path / "d"


@pytest.mark.parametrize(
    ("flags", "env", "expected"),
    [
        ({}, {}, "--data-dir is required"),
        ({"data_dir": "d", "dht_k": "0"}, {}, "--dht-k: expected 2 to 64"),
        ({"data_dir": "d"}, {"dht_alpha": "x"}, "COREMESH_BOOTSTRAP_DHT_ALPHA: expected a whole number"),
        ({"data_dir": "d", "bootstrap": ["nope"]}, {}, "--bootstrap"),
        ({"data_dir": "d", "advertise": ["0.0.0.0:7"]}, {}, "wildcard"),
        ({"data_dir": "d", "admin": "192.0.2.1:9"}, {}, "loopback"),
    ],
)
def test_bad_values_name_their_source(
    flags: dict[str, object], env: dict[str, object], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        merge(flags=flags, env=env, file={})


def test_main_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--listen", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("coremesh-bootstrap: error: --data-dir is required")
    with pytest.raises(SystemExit) as exc:
        main(["--bogus"])
    assert exc.value.code == 2
