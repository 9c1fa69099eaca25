"""Generate the parts of docs/cli.md, docs/admin-api.md and docs/architecture.md that the code
already says.

    python -m tests.gendocs          rewrite the generated sections in place
    python -m tests.gendocs --check  exit 1 (and name the sections) if a doc does not match the code

A generated section sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``; the
text around it is written by hand and left alone. The sources:

- ``node-flags``: the ``coremesh-node`` argument parser (flags, metavars, help texts), its
  environment variables and its ``[node]`` keys (coremesh_node.settings);
- ``cli-commands``: the ``coremesh`` parser's commands and their options (coremesh.cli.main);
- ``node-endpoints``, ``service-endpoints``: the routes of the node's, the relay's and the bootstrap's
  admin apps, each described by the first paragraph of its handler's docstring.

docs/architecture.md carries the peer connection's state diagram, drawn from the transition table
(``coremesh.endpoint.states.mermaid_diagram``), between ``<!-- peer-states:begin -->`` and
``<!-- peer-states:end -->``.

tests/unit/test_docs_match.py fails when a doc and the code disagree.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

from aiohttp import web

REPO: Final = Path(__file__).resolve().parents[1]
DOCS: Final = REPO / "docs"

_SECTION: Final = re.compile(
    r"(<!-- generated:(?P<name>[a-z-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S
)


def _cell(text: str) -> str:
    """``text`` for a Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _option_text(action: argparse.Action) -> str:
    """``--count N``, ``--log-format json|text``, ``--no-dht``."""
    flag = max(action.option_strings, key=len)
    if action.nargs == 0:
        return f"`{flag}`"
    if action.choices is not None:
        return f"`{flag} {'|'.join(map(str, action.choices))}`"
    metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    return f"`{flag} {metavar}`"


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    skip = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)
    return [a for a in parser._actions if a.option_strings and not isinstance(a, skip)]


# ------------------------------------------------------------------------------------------ sections


def node_flags() -> str:
    from coremesh_node import settings

    env_of = settings.ENV_VARS
    keys = settings.MESH_KEYS | settings.NODE_KEYS
    rows = []
    for action in _options(settings.build_parser()):
        flag = _option_text(action)
        env = env_of.get(action.dest, "")
        if env:
            env = f"`{env}`" + (" (comma-separated)" if action.dest in settings._LIST_KEYS else "")
        key = ""
        if action.dest in keys:
            if isinstance(action, argparse._StoreConstAction):
                key = f"`{action.dest} = {str(action.const).lower()}`"
            else:
                key = f"`{action.dest}`"
        rows.append((flag, env, key, action.help or ""))
    return _table(["Flag", "Environment", "`[node]` key", "Meaning (default)"], rows)


def cli_commands() -> str:
    from coremesh.cli import main as cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {choice.dest: choice.help or "" for choice in sub._choices_actions}
    rows = []
    for name, command in sub.choices.items():
        positionals = [a.metavar or a.dest for a in command._actions if not a.option_strings]
        usage = " ".join([name, *map(str, positionals)])
        options = "; ".join(f"{_option_text(a)}: {a.help}" for a in _options(command) if a.dest != "json")
        rows.append((f"`{usage}`", summaries.get(name, ""), options or "-"))
    return _table(["Command", "What it does", "Options (besides `--json`)"], rows)


def _describe(handler: Callable[..., Any]) -> str:
    doc = inspect.getdoc(handler) or ""
    return " ".join(doc.split("\n\n")[0].split())


def _routes(app: web.Application) -> list[tuple[str, str, str]]:
    out = []
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        path = route.resource.canonical if route.resource is not None else ""
        out.append((route.method, path, _describe(route.handler)))
    return out


def _node_app() -> web.Application:
    from coremesh_node.admin import create_admin_app
    from coremesh_node.inbox import Inbox

    node: Any = object()  # the routes are read, never called
    app: web.Application = create_admin_app(node, Inbox())
    return app


def node_endpoints() -> str:
    rows = [(method, f"`{path}`", text) for method, path, text in _routes(_node_app())]
    return _table(["Method", "Path", "What it does"], rows)


def service_endpoints() -> str:
    from coremesh_bootstrap.admin import BootstrapState
    from coremesh_bootstrap.admin import create_admin_app as bootstrap_app
    from coremesh_relay.admin import RelayState
    from coremesh_relay.admin import create_admin_app as relay_app

    rows = []
    for service, app in (
        ("`coremesh-relay`", relay_app(RelayState())),
        ("`coremesh-bootstrap`", bootstrap_app(BootstrapState())),
    ):
        rows += [(service, method, f"`{path}`", text) for method, path, text in _routes(app)]
    return _table(["Service", "Method", "Path", "What it does"], rows)


SECTIONS: Final[dict[str, Callable[[], str]]] = {
    "node-flags": node_flags,
    "cli-commands": cli_commands,
    "node-endpoints": node_endpoints,
    "service-endpoints": service_endpoints,
}
FILES: Final = (DOCS / "cli.md", DOCS / "admin-api.md")

ARCHITECTURE: Final = DOCS / "architecture.md"
_PEER_STATES: Final = re.compile(
    r"(<!-- peer-states:begin -->\n)(?P<body>.*?)(<!-- peer-states:end -->)", re.S
)


def peer_states() -> str:
    from coremesh.endpoint.states import mermaid_diagram

    return mermaid_diagram()


def render_peer_states(text: str) -> tuple[str, bool]:
    """``text`` with the state diagram between its markers drawn from the table, and whether it
    changed. Missing markers are an error (the diagram would silently go unchecked)."""
    match = _PEER_STATES.search(text)
    if match is None:
        raise ValueError("the peer-states markers are missing")
    body = peer_states()
    new = text[: match.start("body")] + body + text[match.end("body") :]
    return new, body != match["body"]


def render(text: str) -> tuple[str, list[str]]:
    """``text`` with every generated section rewritten from the code, and the names of those that
    changed. An unknown section name is an error (a typo would otherwise never be checked)."""
    changed: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in SECTIONS:
            raise ValueError(f"unknown generated section {name!r}; known: {', '.join(SECTIONS)}")
        body = SECTIONS[name]()
        if body != match["body"]:
            changed.append(name)
        return match.group(1) + body + match.group(4)

    return _SECTION.sub(replace, text), changed


def sections_in(text: str) -> list[str]:
    return [m["name"] for m in _SECTION.finditer(text)]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    check = "--check" in args
    stale = []
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        new, changed = render(text)
        if changed:
            stale += [f"{path.relative_to(REPO)}: {name}" for name in changed]
            if not check:
                path.write_text(new, encoding="utf-8")
    text = ARCHITECTURE.read_text(encoding="utf-8")
    new, diagram_changed = render_peer_states(text)
    if diagram_changed:
        stale.append(f"{ARCHITECTURE.relative_to(REPO)}: peer-states")
        if not check:
            ARCHITECTURE.write_text(new, encoding="utf-8")
    if stale:
        verb = "out of date" if check else "rewritten"
        print(f"generated sections {verb}: {'; '.join(stale)}", file=sys.stderr)
        if check:
            print("run: python -m tests.gendocs", file=sys.stderr)
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
