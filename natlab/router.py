"""One NAT router inside a container, with the lab's own rules (compose/docker-compose.nat.yml).

``python -m coremesh_natlab.router nat --nat PRESET --wan PREFIX --lan PREFIX`` builds a one-router
plan (:func:`~coremesh_natlab.plan.build_plan`), renames the container's interfaces in those prefixes
to ``wan0``/``lan0`` (the names the rules use), applies :func:`~coremesh_natlab.rules.router_iptables`
with ``iptables-restore`` and :func:`~coremesh_natlab.rules.router_nft` with ``nft -f``, checks the
router's sysctls (``/proc/sys`` is read-only in a container: compose sets them), then waits; SIGTERM
exits 0. A NAT preset means here exactly what it means in the lab's namespaces.

``python -m coremesh_natlab.router gateway --via ADDRESS --user NAME -- COMMAND...`` (a host behind
such a router): sets the default route via the router, drops root for ``NAME`` (and with it every
capability), then executes ``COMMAND``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import pwd
import random
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pyroute2 import IPRoute

from .plan import NodePlan, Plan, build_plan
from .rules import router_iptables, router_nft, router_sysctls
from .topology import Network, Router, Topology, TopologyError, nat_spec

NAME = "nat"


class RouterError(RuntimeError):
    """The container cannot be made the router the arguments describe."""


def one_router_plan(preset: str, wan: str, lan: str, wan_ip: str) -> tuple[Plan, NodePlan]:
    """The lab's plan of one router between ``wan`` and ``lan`` with WAN address ``wan_ip``."""
    try:
        wan_net = ipaddress.IPv4Network(wan, strict=True)
        lan_net = ipaddress.IPv4Network(lan, strict=True)
    except ValueError as exc:
        raise RouterError(f"bad prefix: {exc}") from None
    try:
        topology = Topology(
            name="compose",
            networks=(Network("wan", (wan_net,)), Network("lan", (lan_net,))),
            routers=(Router(NAME, "wan", "lan", nat=nat_spec(preset), wan_ipv4=(wan_ip,)),),
        )
        plan = build_plan(topology, "compose")
    except TopologyError as exc:
        raise RouterError(str(exc)) from None
    return plan, plan.nodes[NAME]


def _find(ipr: IPRoute, prefix: str) -> tuple[int, str, str]:
    """(index, name, address) of the interface with an IPv4 address in ``prefix``."""
    net = ipaddress.IPv4Network(prefix)
    for msg in ipr.get_addr(family=2):
        address = msg.get_attr("IFA_ADDRESS")
        if address and ipaddress.IPv4Address(address) in net:
            index = msg["index"]
            name = ipr.get_links(index)[0].get_attr("IFLA_IFNAME")
            return index, name, address
    raise RouterError(f"no interface has an address in {prefix}")


def rename(ipr: IPRoute, index: int, name: str, new: str) -> None:
    """Rename a link (down, rename, up: the kernel restores its prefix routes)."""
    if name == new:
        return
    ipr.link("set", index=index, state="down")
    ipr.link("set", index=index, ifname=new)
    ipr.link("set", index=index, state="up")


def check_sysctls(wanted: dict[str, str]) -> None:
    """Write each sysctl that differs; a read-only ``/proc/sys`` (a container) must already hold it."""
    for key, value in wanted.items():
        path = Path("/proc/sys") / key.replace(".", "/")
        if not path.exists():
            raise RouterError(f"sysctl {key} does not exist here")
        if path.read_text().strip() == value:
            continue
        try:
            path.write_text(value)
        except OSError:
            raise RouterError(
                f"sysctl {key} is {path.read_text().strip()}, needs {value}: set it in the container's "
                "sysctls (compose: sysctls:)"
            ) from None


def _apply(cmd: list[str], text: str) -> None:
    result = subprocess.run(cmd, input=text, capture_output=True, text=True)
    if result.returncode != 0:
        raise RouterError(f"{' '.join(cmd)} failed: {result.stderr.strip()}\n{text}")


def run_nat(preset: str, wan: str, lan: str) -> None:
    with IPRoute() as ipr:
        wan_index, wan_name, wan_ip = _find(ipr, wan)
        lan_index, lan_name, _ = _find(ipr, lan)
        plan, node = one_router_plan(preset, wan, lan, wan_ip)
        rename(ipr, wan_index, wan_name, "wan0")
        rename(ipr, lan_index, lan_name, "lan0")
        # The router reaches only its two networks: no way around the NAT through Docker's gateway.
        for route in ipr.get_default_routes(family=2):
            ipr.route("del", dst="0.0.0.0/0", gateway=route.get_attr("RTA_GATEWAY"))
    wanted = {k: v for k, v in router_sysctls(node).items() if not k.startswith("net.ipv6.")}
    check_sysctls(wanted)
    _apply(["iptables-restore"], router_iptables(plan, node, random.Random()))
    _apply(["nft", "-f", "-"], router_nft(plan, node))
    assert node.router is not None
    print(f"router: {preset} ({node.router.nat}) wan0={wan_ip} lan0={lan}", flush=True)


def run_gateway(via: str, user: str, command: Sequence[str]) -> None:
    if not command:
        raise RouterError("gateway: give the command to run after --")
    try:
        ipaddress.IPv4Address(via)
        account = pwd.getpwnam(user)
    except (ValueError, KeyError) as exc:
        raise RouterError(f"gateway: {exc}") from None
    with IPRoute() as ipr:
        ipr.route("replace", dst="0.0.0.0/0", gateway=via)
    os.setgroups([])
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)  # from root to a user: the capabilities go too
    os.execvp(command[0], list(command))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coremesh_natlab.router", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    nat = sub.add_parser("nat", help="NAT between two container networks, then wait for SIGTERM")
    nat.add_argument(
        "--nat", required=True, help="a NAT preset of the lab: port-restricted-cone, symmetric, ..."
    )
    nat.add_argument("--wan", required=True, help="the internet network's IPv4 prefix")
    nat.add_argument("--lan", required=True, help="the LAN's IPv4 prefix")
    gw = sub.add_parser("gateway", help="default route via a router, then run a command as a user")
    gw.add_argument("--via", required=True, help="the router's LAN address")
    gw.add_argument("--user", default="coremesh", help="the user that runs the command")
    gw.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    try:
        if args.command == "gateway":
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            run_gateway(args.via, args.user, cmd)
            return 0  # not reached: exec
        run_nat(args.nat, args.wan, args.lan)
    except (RouterError, OSError) as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
