"""Every package in the source tree is listed in pyproject.toml, so a wheel install is complete."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_package_is_listed() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    folders = {name: Path(folder) for name, folder in config["package-dir"].items()}
    found = set()
    for name, folder in folders.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            found.add(".".join((name, *relative.parts)) if relative.parts else name)
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
