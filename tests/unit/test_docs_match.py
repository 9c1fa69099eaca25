"""docs/cli.md and docs/admin-api.md say what the parsers and the admin apps say (tests/gendocs.py).

When this fails, run ``python -m tests.gendocs`` and commit the docs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import gendocs


@pytest.mark.parametrize("path", gendocs.FILES, ids=lambda p: p.name)
def test_generated_sections_match_the_code(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    _, changed = gendocs.render(text)
    assert changed == [], f"{path}: sections {changed} differ from the code; run: python -m tests.gendocs"


def test_every_section_is_in_a_doc() -> None:
    found = [name for path in gendocs.FILES for name in gendocs.sections_in(path.read_text(encoding="utf-8"))]
    assert sorted(found) == sorted(gendocs.SECTIONS)


def test_a_doc_that_drifted_is_caught_and_rewritten() -> None:
    text = (gendocs.DOCS / "cli.md").read_text(encoding="utf-8")
    stale = text.replace("| `--no-dht` |", "| `--no-dht-at-all` |", 1)
    assert stale != text
    fixed, changed = gendocs.render(stale)
    assert changed == ["node-flags"] and fixed == text
    with pytest.raises(ValueError, match="unknown generated section 'node-flag'"):
        gendocs.render("<!-- generated:node-flag -->\n<!-- /generated:node-flag -->")


def test_the_tables_cover_every_flag_and_route() -> None:
    from coremesh_node.settings import build_parser

    flags = gendocs.node_flags()
    for action in build_parser()._actions:
        for option in action.option_strings:
            if option.startswith("--") and option not in ("--help", "--version"):
                assert f"`{option}" in flags, option
    endpoints = gendocs.node_endpoints()
    for path in ("/v1/lookup", "/v1/connect", "/v1/ping", "/metrics", "/v1/netcheck"):
        assert f"`{path}`" in endpoints, path
    for row in endpoints.splitlines()[2:]:  # every route describes itself (its handler's docstring)
        assert not row.endswith("|  |"), row
