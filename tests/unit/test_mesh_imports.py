"""The rooms of coremesh.mesh and the discovery plugins never import MeshNode, not even for types:
a Connection talks to its ConnectionOwner, a discovery service to its DiscoveryHost."""

from __future__ import annotations

import ast
from pathlib import Path

import coremesh

PACKAGE = Path(coremesh.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (also under ``if TYPE_CHECKING:``), as absolute names."""
    package = "coremesh." + ".".join(path.relative_to(PACKAGE).parent.parts)
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - max(node.level - 1, 0)]
            prefix = ".".join(base) if node.level else ""
            name = ".".join(p for p in (prefix, node.module or "") if p)
            out.add(name)
            out.update(f"{name}.{alias.name}" for alias in node.names)
    return out


def test_only_the_node_module_is_allowed_to_know_mesh_node() -> None:
    rooms = [p for p in (PACKAGE / "mesh").glob("*.py") if p.name != "node.py"]
    assert {p.name for p in rooms} >= {"connection.py", "dialer.py", "registry.py"}
    for path in rooms:
        assert "coremesh.mesh.node" not in imported_modules(path), path


def test_discovery_does_not_import_the_mesh_package() -> None:
    plugins = list((PACKAGE / "discovery").glob("*.py"))
    assert {p.name for p in plugins} >= {"base.py", "mdns.py"}
    for path in plugins:
        assert not any(m.startswith("coremesh.mesh") for m in imported_modules(path)), path


def test_the_check_sees_type_checking_imports() -> None:
    source = PACKAGE / "mesh" / "node.py"
    assert "coremesh.mesh.dialer" in imported_modules(source)
    assert "coremesh.discovery.base" in imported_modules(source)  # imported under TYPE_CHECKING
