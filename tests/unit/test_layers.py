"""The layer rules of docs/architecture.md, checked on the import statements of every module.

Sans-IO cores never import the asyncio shells, the public API or the daemon plumbing (nor asyncio
itself); the shells never import the public API; only ``mesh/node.py`` knows ``MeshNode``;
services never import each other. TYPE_CHECKING imports count: a type-only cycle is still a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "coremesh"

CORES = (
    "secure",
    "reliability",
    "endpoint",
    "routing",
    "traversal",
    "stun",
    "turn",
    "keyedrelay",
    "dht",
    "netcheck",
    "access",
)
CORE_FILES = ("identity.py", "addr.py", "errors.py", "config.py", "ratelimit.py")
SHELL_ONLY = ("coremesh.aio", "coremesh.mesh", "coremesh.service", "coremesh.cli")
SERVICES = {"node": "coremesh_node", "relay": "coremesh_relay", "bootstrap": "coremesh_bootstrap"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(text: str, module: str, *, is_package: bool = False) -> set[str]:
    """Absolute names of every module the source ``text`` of ``module`` imports."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def imports(path: Path) -> set[str]:
    return imports_of(path.read_text(), module_name(path), is_package=path.name == "__init__.py")


def core_modules() -> list[Path]:
    files = [PACKAGE / f for f in CORE_FILES]
    for folder in CORES:
        files.extend(sorted((PACKAGE / folder).glob("*.py")))
    return files


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_core_imports_no_shell(path: Path) -> None:
    bad = sorted(
        name
        for name in imports(path)
        if name == "asyncio" or name.startswith("asyncio.") or name.startswith(SHELL_ONLY)
    )
    assert not bad, f"{path.relative_to(ROOT)} is sans-IO but imports {bad}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "aio").glob("*.py")), ids=lambda p: p.name)
def test_a_shell_does_not_import_the_public_api(path: Path) -> None:
    bad = sorted(name for name in imports(path) if name.startswith(("coremesh.mesh", "coremesh.cli")))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_only_mesh_node_knows_meshnode() -> None:
    knows = sorted(
        str(path.relative_to(ROOT))
        for path in PACKAGE.rglob("*.py")
        if "coremesh.mesh.node" in imports(path)
        and path not in (PACKAGE / "mesh" / "node.py", PACKAGE / "__init__.py")
        and not path.is_relative_to(PACKAGE / "cli")
    )
    assert not knows, f"these modules import coremesh.mesh.node: {knows}"


def test_only_the_programs_know_the_cli() -> None:
    """The CLI and the demo are programs on top of the library: nothing else imports them."""
    knows = sorted(
        str(path.relative_to(ROOT))
        for folder in (PACKAGE, *(ROOT / name for name in SERVICES), ROOT / "natlab")
        for path in folder.rglob("*.py")
        if any(name.startswith("coremesh.cli") for name in imports(path))
        and not path.is_relative_to(PACKAGE / "cli")
        and path != PACKAGE / "__main__.py"
    )
    assert not knows, f"these modules import coremesh.cli: {knows}"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_services_never_import_each_other(service: str) -> None:
    others = tuple(name for folder, name in SERVICES.items() if folder != service)
    bad = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / service).glob("*.py")
        for name in imports(path)
        if name.startswith(others)
    )
    assert not bad, f"{service} imports another service: {bad}"


def test_the_rules_see_a_violation() -> None:
    """The checks above can fail: relative and absolute imports of a shell are both seen."""
    text = "from ..aio.runtime import UdpRuntime\nimport asyncio\nfrom coremesh import mesh\n"
    found = imports_of(text, "coremesh.secure.session")
    assert {"coremesh.aio.runtime", "asyncio", "coremesh.mesh"} <= found
    assert imports_of("from . import wire\n", "coremesh.secure", is_package=True) >= {"coremesh.secure.wire"}


DOCKER_HARNESS = ("testcontainers", "docker", "coremesh.testing")


def test_only_the_container_harness_knows_docker() -> None:
    """coremesh/testing is a test harness over Docker (a shell, like the programs): nothing else in the
    library, the services or the NAT lab imports it, testcontainers or the docker SDK."""
    knows = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for folder in (PACKAGE, *(ROOT / name for name in SERVICES), ROOT / "natlab")
        for path in folder.rglob("*.py")
        if not path.is_relative_to(PACKAGE / "testing")
        for name in imports(path)
        if name in DOCKER_HARNESS or name.startswith(tuple(f"{h}." for h in DOCKER_HARNESS))
    )
    assert not knows, f"these modules import the container harness: {knows}"


def test_importing_the_package_and_the_cli_loads_no_docker() -> None:
    code = (
        "import sys, coremesh, coremesh.testing, coremesh.cli.main\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('testcontainers', 'docker')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
