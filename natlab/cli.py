"""``coremesh-natlab``: bring a declared topology up and down, list runs, clean up stale ones."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import TOPOLOGIES, runs
from .lab import Lab, LabError
from .plan import build_plan
from .topology import Topology, TopologyError, load

EPILOG = f"""\
examples:
  coremesh-natlab up {TOPOLOGIES}/cone-cone.toml --prefix demo
  coremesh-natlab up cone-symmetric          (a shipped example, by name)
  coremesh-natlab exec a -- ip -br addr
  coremesh-natlab link nat_a --latency-ms 25 --jitter-ms 5 --loss 0.01
  coremesh-natlab cut a b; coremesh-natlab restore a b
  coremesh-natlab list
  coremesh-natlab down demo
  coremesh-natlab cleanup                    (runs whose process is gone, orphan namespaces)

exit status: 0 done; 2 bad topology or arguments; 1 the lab could not be built or found.
"""


def _topology(text: str) -> Topology:
    path = Path(text)
    if not path.exists() and (TOPOLOGIES / f"{text}.toml").exists():
        path = TOPOLOGIES / f"{text}.toml"
    return load(path)


def _pick(prefix: str | None) -> str:
    if prefix:
        return prefix
    active = runs.read_all()
    if len(active) != 1:
        names = ", ".join(r.prefix for r in active) or "none"
        raise LabError(f"give --prefix (runs: {names})")
    return active[0].prefix


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="coremesh-natlab",
        description="Core Mesh NAT lab: network namespaces, NAT routers and hosts from a topology file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build a topology and leave it running")
    up.add_argument("topology", help="a .toml/.json file, or the name of a shipped example")
    up.add_argument("--prefix", help="run prefix (namespaces are PREFIX-NODE); default cmnlXXXXXX")
    up.add_argument("--seed", type=int, help="fix the NATs' port choices")
    down = sub.add_parser("down", help="remove a run")
    down.add_argument("prefix", nargs="?")
    down.add_argument("--all", action="store_true", help="remove every run")
    sub.add_parser("list", help="runs and their namespaces")
    clean = sub.add_parser("cleanup", help="remove stale runs and orphan namespaces")
    clean.add_argument("--all", action="store_true", help="also runs left up with 'up'")
    show = sub.add_parser("show", help="check a topology and print its plan (builds nothing)")
    show.add_argument("topology")
    link = sub.add_parser("link", help="change a link of a running lab: latency, jitter, loss")
    link.add_argument("--prefix")
    link.add_argument("node")
    link.add_argument("network", nargs="?", help="default: a host's network, a router's WAN")
    link.add_argument("--latency-ms", type=float)
    link.add_argument("--jitter-ms", type=float)
    link.add_argument("--loss", type=float, help="probability 0..1, each way")
    for verb, text in (("cut", "drop everything between two nodes"), ("restore", "undo cut")):
        cut = sub.add_parser(verb, help=text)
        cut.add_argument("--prefix")
        cut.add_argument("a")
        cut.add_argument("b")
    ex = sub.add_parser("exec", help="run a command inside a node: exec [--prefix P] NODE -- CMD...")
    ex.add_argument("node")
    ex.add_argument("--prefix")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except TopologyError as exc:
        print(f"coremesh-natlab: {exc}", file=sys.stderr)
        return 2
    except LabError as exc:
        print(f"coremesh-natlab: {exc}", file=sys.stderr)
        return 1
    except KeyError as exc:
        print(f"coremesh-natlab: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "show":
        topology = _topology(args.topology)
        plan = build_plan(topology, "PREFIX")
        for node in plan.nodes.values():
            addresses = ", ".join(
                f"{i.ifname}={' '.join(str(a) for a in (*i.ipv4, *i.ipv6))}" for i in node.interfaces
            )
            print(f"{node.kind:6} {node.name:12} {addresses}")
        return 0
    if args.command == "up":
        lab = Lab(_topology(args.topology), prefix=args.prefix, seed=args.seed, detached=True)
        lab.up()
        print(lab.describe())
        print(f"take it down: coremesh-natlab down {lab.prefix}")
        return 0
    if args.command == "down":
        targets = [r.prefix for r in runs.read_all()] if args.all else [_pick(args.prefix)]
        for prefix in targets:
            if not runs.destroy(prefix):
                raise LabError(f"no run {prefix!r}")
            print(f"removed {prefix}")
        return 0
    if args.command == "list":
        for run in runs.read_all():
            status = "detached" if run.detached else ("running" if run.owner_alive else "stale")
            print(f"{run.prefix}  {run.topology}  {status}  owner pid {run.owner_pid}")
            for name, node in run.nodes.items():
                print(
                    f"  {node['kind']:6} {name:12} {node['netns']:24} {' '.join(node['ipv4'] + node['ipv6'])}"
                )
        orphans = runs.orphan_namespaces()
        if orphans:
            print(f"orphan namespaces: {' '.join(orphans)}")
        return 0
    if args.command == "cleanup":
        removed = runs.cleanup(include_detached=args.all)
        print(f"removed: {' '.join(removed)}" if removed else "nothing stale")
        return 0
    if args.command == "link":
        lab = Lab.attach(_pick(args.prefix))
        handle = lab.link(args.node, args.network)
        handle.set(latency_ms=args.latency_ms, jitter_ms=args.jitter_ms, loss=args.loss)
        print(f"{args.node}:{handle.iface.network} {handle.spec}")
        return 0
    if args.command in ("cut", "restore"):
        lab = Lab.attach(_pick(args.prefix))
        (lab.cut if args.command == "cut" else lab.restore)(args.a, args.b)
        print(f"{args.command} {args.a} {args.b}")
        return 0
    if args.command == "exec":
        cmd, prefix_arg = list(args.cmd), args.prefix
        if cmd[:1] == ["--prefix"] and len(cmd) >= 2:  # exec NODE --prefix P -- CMD
            prefix_arg, cmd = cmd[1], cmd[2:]
        cmd = cmd[1:] if cmd[:1] == ["--"] else cmd
        prefix = _pick(prefix_arg)
        if not cmd:
            raise LabError("exec NODE -- CMD: no command given")
        netns = f"{prefix}-{args.node}"
        if netns not in runs.list_namespaces():
            raise LabError(f"no namespace {netns}")
        os.execvp("ip", ["ip", "netns", "exec", netns, *cmd])
    return 2


if __name__ == "__main__":
    sys.exit(main())
