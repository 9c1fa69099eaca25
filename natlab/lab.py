"""The lab at run time: builds a topology from namespaces, veth pairs and bridges (pyroute2), programs
the routers, runs processes inside hosts, changes links, and takes everything down again."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import secrets
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from socket import AF_INET, AF_INET6
from types import TracebackType
from typing import IO, Any

from . import rules, runs
from .plan import Interface, NodePlan, Plan, build_plan
from .topology import LinkSpec, Topology, TopologyError, from_dict, to_dict

IFA_F_NODAD = 0x02
TOOLS = ("ip", "iptables-restore", "ip6tables-restore", "nft")


class LabError(RuntimeError):
    """The lab could not be built or changed (missing tool, not root, a command failed)."""


def check_prerequisites() -> None:
    """Raise :class:`LabError` naming what is missing: root, ``ip``, ``iptables``, ``nft``."""
    if os.geteuid() != 0:
        raise LabError("the NAT lab needs root (network namespaces, iptables, nftables)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise LabError(
            f"missing tools: {', '.join(missing)} (Debian: apt-get install iproute2 iptables nftables)"
        )


class CommandFailed(subprocess.CalledProcessError):
    """A command in a node failed; unlike its base class, the message shows the node and the end
    of the command's stderr."""

    def __init__(self, node: str, failed: subprocess.CalledProcessError) -> None:
        super().__init__(failed.returncode, failed.cmd, failed.output, failed.stderr)
        self.node = node

    def __str__(self) -> str:
        err = (self.stderr or "").strip()[-1500:]
        argv = " ".join(str(a) for a in self.cmd[4:])
        return f"in {self.node}: {argv!r} exited with {self.returncode}" + (f":\n{err}" if err else "")


class Node:
    """A router or host of a running lab. Commands run inside its namespace with ``ip netns exec``
    (which execs, so a :meth:`popen` PID is the command's own and is stopped by that PID)."""

    def __init__(self, lab: Lab, plan: NodePlan) -> None:
        self.lab = lab
        self.plan = plan
        self.name = plan.name
        self.netns = plan.netns
        self.kind = plan.kind
        self.processes: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"<Node {self.name} netns={self.netns} ipv4={self.ipv4} ipv6={self.ipv6}>"

    @property
    def ipv4(self) -> list[str]:
        """This node's IPv4 addresses, in interface order (a router: LAN, then WAN)."""
        return self.plan.ipv4

    @property
    def ipv6(self) -> list[str]:
        return self.plan.ipv6

    @property
    def address(self) -> str:
        """The first address a peer can reach this node's namespace at: IPv4 if it has one."""
        for iface in sorted(self.plan.interfaces, key=lambda i: i.ifname != "wan0"):
            for text in (*[str(a.ip) for a in iface.ipv4], *[str(a.ip) for a in iface.ipv6]):
                return text
        raise LabError(f"{self.name} has no address")

    @property
    def public_ipv4(self) -> str | None:
        """The IPv4 address the internet sees this node's traffic come from (the outermost NAT's)."""
        return self.lab.public_ipv4(self.name)

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    @staticmethod
    def environment(env: dict[str, str] | None = None) -> dict[str, str]:
        """``env`` (default: ours) with this interpreter's ``bin`` directory first on ``PATH``, so
        the project's console scripts (``coremesh-node``, ``coremesh-relay``) are found in a venv."""
        result = dict(os.environ if env is None else env)
        bindir = os.path.dirname(sys.executable)
        if bindir not in result.get("PATH", "").split(os.pathsep):
            result["PATH"] = os.pathsep.join(p for p in (bindir, result.get("PATH", "")) if p)
        return result

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion; stdout and stderr are captured as text. With ``check``, a failure
        raises :class:`CommandFailed` (a :class:`subprocess.CalledProcessError`)."""
        try:
            return subprocess.run(
                self.command(argv),
                capture_output=True,
                text=True,
                check=check,
                timeout=timeout,
                input=input,
                env=self.environment(),
            )
        except subprocess.CalledProcessError as exc:
            raise CommandFailed(self.name, exc) from None

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process; it is stopped (by PID) at :meth:`Lab.down` at the latest."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs["env"] = self.environment(kwargs.get("env"))
        proc = subprocess.Popen(self.command(argv), **kwargs)
        self.processes.append(proc)
        return proc

    def python(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """:meth:`popen` with this interpreter (``args``: ``["-m", "module", ...]`` or a script)."""
        return self.popen([sys.executable, *args], **kwargs)

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop_all(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.processes:
            try:
                proc.wait(timeout=max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()


class Link:
    """One attachment of a node to a network; its impairments can change while the lab runs."""

    def __init__(self, lab: Lab, iface: Interface) -> None:
        self.lab = lab
        self.iface = iface

    def __repr__(self) -> str:
        return f"<Link {self.iface.node}:{self.iface.network} {self.spec}>"

    @property
    def spec(self) -> LinkSpec:
        return self.iface.link

    def set(
        self, *, latency_ms: float | None = None, jitter_ms: float | None = None, loss: float | None = None
    ) -> None:
        """Change the impairments (unnamed ones stay), both ways, at once."""
        changes = {"latency_ms": latency_ms, "jitter_ms": jitter_ms, "loss": loss}
        spec = replace(self.spec, **{k: float(v) for k, v in changes.items() if v is not None})
        spec.check(f"link {self.iface.node}:{self.iface.network}")
        self.iface.link = spec
        self.lab._apply_links(self.iface.network)


class Lab:
    """A running topology. Use as a context manager: everything is removed on exit, also on errors.

    ``prefix`` names the run (namespaces are ``PREFIX-NODE``); by default a fresh ``cmnlXXXXXX``.
    ``seed`` fixes the NAT port choices (ranges, offsets). ``detached``: the run outlives this
    process on purpose (the CLI's ``up``) and ``cleanup`` leaves it alone.
    """

    def __init__(
        self,
        topology: Topology,
        *,
        prefix: str | None = None,
        seed: int | None = None,
        detached: bool = False,
    ) -> None:
        self.prefix = prefix or f"cmnl{secrets.token_hex(3)}"
        if not runs.PREFIX_RE.match(self.prefix):
            raise TopologyError(
                f"prefix: {self.prefix!r}: expected 1-12 of a-z and 0-9, starting with a letter"
            )
        self.topology = topology
        self.plan: Plan = build_plan(topology, self.prefix)
        self.rng = random.Random(seed)
        self.detached = detached
        self.nodes = {name: Node(self, plan) for name, plan in self.plan.nodes.items()}
        self.workdir = runs.STATE_DIR / self.prefix
        self._delayd: dict[str, subprocess.Popen[bytes]] = {}
        self._up = False
        self._owner: tuple[int, str] | None = None  # set when attached to a run another process made

    @classmethod
    def attach(cls, prefix: str) -> Lab:
        """A handle on a running lab that another process brought up (``coremesh-natlab up``), to
        change its links or cut paths. It does not own the run: it never takes it down."""
        run = runs.read(prefix)
        if run is None or not run.topology_data:
            raise LabError(f"no run {prefix!r} to attach to")
        lab = cls(from_dict(run.topology_data), prefix=prefix, detached=run.detached)
        lab._owner = (run.owner_pid, run.owner_start)
        return lab

    def current_topology(self) -> Topology:
        """The topology with the links as they are now (after :meth:`Link.set`)."""
        links = {(i.node, i.network): i.link for n in self.plan.nodes.values() for i in n.interfaces}
        routers = tuple(
            replace(r, wan_link=links[(r.name, r.wan)], lan_link=links[(r.name, r.lan)])
            for r in self.topology.routers
        )
        hosts = tuple(replace(h, link=links[(h.name, h.network)]) for h in self.topology.hosts)
        return replace(self.topology, routers=routers, hosts=hosts)

    # -- access ----------------------------------------------------------------------------

    def node(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise KeyError(f"no node {name!r} (nodes: {', '.join(self.nodes)})") from None

    host = node
    router = node

    def link(self, node: str, network: str | None = None) -> Link:
        """The link of ``node`` to ``network`` (default: a host's only network, a router's WAN)."""
        plan = self.node(node).plan
        if network is None:
            network = plan.router.wan if plan.router is not None else plan.interfaces[0].network
        return Link(self, plan.interface(network))

    def public_ipv4(self, name: str) -> str | None:
        plan = self.node(name).plan
        router = plan.router
        network = router.wan if router is not None else plan.interfaces[0].network
        address = plan.interface(network).ipv4[0].ip if plan.interface(network).ipv4 else None
        while (gateway := self.topology.router_of(network)) is not None:
            wan = self.plan.nodes[gateway.name].interface(gateway.wan)
            address = wan.ipv4[0].ip if wan.ipv4 else None
            network = gateway.wan
        return str(address) if address is not None else None

    def appears_as(self, name: str) -> tuple[list[str], list[str]]:
        """The source addresses (IPv4, IPv6) other nodes may see ``name``'s packets come from."""
        plan = self.node(name).plan
        v4, v6 = list(plan.ipv4), list(plan.ipv6)
        network = plan.router.wan if plan.router is not None else plan.interfaces[0].network
        while (gateway := self.topology.router_of(network)) is not None:
            v4 += self.plan.nodes[gateway.name].ipv4
            network = gateway.wan
        return v4, v6

    # -- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()

    def up(self) -> None:
        check_prerequisites()
        if runs.read(self.prefix) is not None or any(
            ns.startswith(self.prefix + "-") for ns in runs.list_namespaces()
        ):
            raise LabError(f"a run with prefix {self.prefix!r} exists (coremesh-natlab down {self.prefix})")
        runs.write(self._state())
        self._up = True
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            # In a thread: pyroute2's synchronous API refuses to run inside an event loop, and a
            # test may build its lab from a coroutine.
            _in_thread(self._build)
            self._configure()
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Stop every process, delete every namespace and the run's state. Safe to call twice."""
        if not self._up:
            return
        for node in self.nodes.values():
            node.stop_all()
        for proc in self._delayd.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._delayd.values():
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self._delayd.clear()
        runs.destroy(self.prefix)
        self._up = False

    def _state(self) -> runs.Run:
        pid = os.getpid()
        owner_pid, owner_start = self._owner or (pid, runs.process_start(pid) or "")
        return runs.Run(
            prefix=self.prefix,
            owner_pid=owner_pid,
            owner_start=owner_start,
            detached=self.detached,
            namespaces=tuple(self.plan.namespaces),
            topology=self.topology.name,
            created=time.time(),
            nodes={
                n.name: {"netns": n.netns, "kind": n.kind, "ipv4": n.ipv4, "ipv6": n.ipv6}
                for n in self.plan.nodes.values()
            },
            topology_data=to_dict(self.current_topology()),
        )

    def _build(self) -> None:
        from pyroute2 import IPRoute, netns

        for ns in self.plan.namespaces:
            netns.create(ns)
        # No duplicate address detection: a tentative link-local address makes the first packets
        # of a test wait for neighbour discovery. Switches need no IPv6 at all.
        no_dad = {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"}
        for switch in self.plan.switches.values():
            write_sysctls(
                switch.netns,
                {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"},
            )
        for node in self.plan.nodes.values():
            sysctls = rules.router_sysctls(node) if node.router is not None else rules.host_sysctls()
            write_sysctls(
                node.netns, {**no_dad, **{k: v for k, v in sysctls.items() if "netfilter" not in k}}
            )
        for switch in self.plan.switches.values():
            with IPRoute(netns=switch.netns, flags=0) as ipr:
                ipr.link("add", ifname="br0", kind="bridge", br_mcast_snooping=0)
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        for node in self.plan.nodes.values():
            with IPRoute(netns=node.netns, flags=0) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                for iface in node.interfaces:
                    switch = self.plan.switches[iface.network]
                    ipr.link(
                        "add",
                        ifname=iface.ifname,
                        kind="veth",
                        peer={"ifname": iface.port, "net_ns_fd": switch.netns},
                    )
                    index = ipr.link_lookup(ifname=iface.ifname)[0]
                    ipr.link("set", index=index, address=iface.mac)
                    ipr.link("set", index=index, state="up")
                    for a4 in iface.ipv4:
                        ipr.addr("add", index=index, address=str(a4.ip), prefixlen=a4.network.prefixlen)
                    for a6 in iface.ipv6:
                        ipr.addr(
                            "add",
                            index=index,
                            address=str(a6.ip),
                            prefixlen=a6.network.prefixlen,
                            family=AF_INET6,
                            flags=IFA_F_NODAD,
                        )
        for switch in self.plan.switches.values():
            with IPRoute(netns=switch.netns, flags=0) as ipr:
                bridge = ipr.link_lookup(ifname="br0")[0]
                for port in switch.ports:
                    ipr.link("set", index=ipr.link_lookup(ifname=port)[0], master=bridge, state="up")
                ipr.link("set", index=bridge, state="up")
        for node in self.plan.nodes.values():
            if not node.routes:
                continue
            with IPRoute(netns=node.netns, flags=0) as ipr:
                for route in node.routes:
                    six = ":" in (route.gateway or route.destination)
                    dst = (
                        route.destination
                        if route.destination != "default"
                        else ("::/0" if six else "0.0.0.0/0")
                    )
                    spec: dict[str, Any] = {
                        "dst": dst,
                        "oif": ipr.link_lookup(ifname=route.ifname)[0],
                        "family": AF_INET6 if six else AF_INET,
                    }
                    if route.gateway:
                        spec["gateway"] = route.gateway
                    ipr.route("add", **spec)

    def _configure(self) -> None:
        """Start the delay elements, then program every namespace (in parallel)."""
        for node in self.plan.nodes.values():
            if rules.needs_delay(self.plan, node):
                self._start_delayd(node)
        procs = []
        for node in self.plan.nodes.values():
            script = self._script(node)
            procs.append(
                (
                    node,
                    subprocess.Popen(
                        ["ip", "netns", "exec", node.netns, "sh", "-ec", script],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    ),
                )
            )
        failures = []
        for node, proc in procs:
            _, err = proc.communicate(timeout=60)
            if proc.returncode != 0:
                failures.append(f"{node.name}: {err.strip()[-800:]}")
        if failures:
            raise LabError("configuring the namespaces failed:\n" + "\n".join(failures))

    def _script(self, node: NodePlan) -> str:
        def write(name: str, text: str) -> str:
            path = self.workdir / f"{node.name}.{name}"
            path.write_text(text)
            return str(path)

        lines = []
        sysctls = rules.router_sysctls(node) if node.router is not None else rules.host_sysctls()
        late = {k: v for k, v in sysctls.items() if k.startswith("net.netfilter.")}
        if node.router is not None:
            if self.topology.network(node.router.lan).ipv4:
                iptables = rules.router_iptables(self.plan, node, self.rng)
                lines.append(f"iptables-restore < {write('iptables', iptables)}")
            lines.append(f"nft -f {write('nft', rules.router_nft(self.plan, node))}")
        lines.append(f"nft -f {write('cut.nft', rules.CUT_TABLE)}")
        lines += self._link_commands(node)
        if late:
            lines.append("modprobe nf_conntrack 2>/dev/null || true")
            for key, value in late.items():
                lines.append(f"echo {value} > /proc/sys/{key.replace('.', '/')}")
        return "\n".join(lines) + "\n"

    def _link_commands(self, node: NodePlan) -> list[str]:
        """Shell commands (run inside ``node``'s namespace) that load its link impairments."""
        files = {
            "link.nft": rules.link_nft(self.plan, node),
            "raw4": rules.link_raw(self.plan, node),
            "raw6": rules.link_raw(self.plan, node, ipv6=True),
        }
        for name, text in files.items():
            (self.workdir / f"{node.name}.{name}").write_text(text)
        base = self.workdir / node.name
        return [
            f"nft -f {base}.link.nft",
            f"iptables-restore < {base}.raw4",
            f"ip6tables-restore < {base}.raw6",
        ]

    # -- links and cuts ------------------------------------------------------------------------

    def _start_delayd(self, node: NodePlan) -> None:
        config = self.workdir / f"{node.name}.delay.json"
        config.write_text(json.dumps({**rules.delay_config(self.plan, node), "seed": self.rng.random()}))
        log = open(self.workdir / f"{node.name}.delay.log", "wb")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(
            ["ip", "netns", "exec", node.netns, sys.executable, "-m", "coremesh_natlab.delayd", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        log.close()
        self._delayd[node.name] = proc
        assert proc.stdout is not None
        if not _wait_line(proc.stdout, b"ready\n", 15.0):
            proc.kill()
            proc.wait()
            tail = (self.workdir / f"{node.name}.delay.log").read_text(errors="replace")[-800:]
            raise LabError(f"the delay element in {node.netns} did not start:\n{tail}")

    def _wait_reloaded(self, node: NodePlan, config: Path, generation: str, timeout: float = 10.0) -> None:
        """Wait until the delay element acknowledged ``generation`` of its configuration, so that the
        rules fed to it next already meet the new delays."""
        done = config.with_name(config.name + ".loaded")
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                if done.read_text() == generation:
                    return
            if time.monotonic() > deadline:
                raise LabError(f"the delay element in {node.netns} did not reload its configuration")
            time.sleep(0.002)

    def _apply_links(self, network: str) -> None:
        """Reconfigure every node on ``network``: delay elements first (started, or told to re-read
        their configuration), then the rules that feed them, in all namespaces at once."""
        affected = [n for n in self.plan.nodes.values() if any(i.network == network for i in n.interfaces)]
        told: list[tuple[NodePlan, Path, str]] = []
        for node in affected:
            proc = self._delayd.get(node.name)
            running = proc.pid if proc is not None and proc.poll() is None else _find_delayd(node.netns)
            if rules.needs_delay(self.plan, node):
                if running is None:
                    self._start_delayd(node)
                else:
                    config = self.workdir / f"{node.name}.delay.json"
                    generation = secrets.token_hex(8)
                    tmp = config.with_name(config.name + ".tmp")
                    wanted = {**rules.delay_config(self.plan, node), "generation": generation}
                    tmp.write_text(json.dumps(wanted))
                    os.replace(tmp, config)
                    os.kill(running, signal.SIGHUP)
                    told.append((node, config, generation))
        for node, config, generation in told:
            self._wait_reloaded(node, config, generation)
        procs = [
            (node, subprocess.Popen(
                self.nodes[node.name].command(["sh", "-ec", "\n".join(self._link_commands(node))]),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            ))
            for node in affected
        ]  # fmt: skip
        failures = []
        for node, reload in procs:
            _, err = reload.communicate(timeout=60)
            if reload.returncode != 0:
                failures.append(f"{node.name}: {err.strip()[-500:]}")
        runs.write(self._state())
        if failures:
            raise LabError("changing the links failed:\n" + "\n".join(failures))

    def cut(self, a: str, b: str) -> None:
        """Drop everything between nodes ``a`` and ``b`` (each drops what comes from the other's
        addresses, including those of the NATs in front of it), until :meth:`restore`."""
        self._set_cut(a, b, "add")

    def restore(self, a: str, b: str) -> None:
        """Undo :meth:`cut` (restoring a path that is not cut does nothing)."""
        self._set_cut(a, b, "delete")

    def _set_cut(self, a: str, b: str, verb: str) -> None:
        for here, there in ((a, b), (b, a)):
            v4, v6 = self.appears_as(there)
            own4, own6 = self.appears_as(here)
            v4 = [x for x in v4 if x not in own4]
            v6 = [x for x in v6 if x not in own6]
            for set_name, addresses in (("cut4", v4), ("cut6", v6)):
                for address in addresses:  # one at a time: restoring what was not cut is no error
                    command = ["nft", verb, "element", "inet", "natlab_cut", set_name, f"{{ {address} }}"]
                    self.node(here).run(command, check=verb == "add")

    def rebind(self, router: str) -> None:
        """A NAT rebinding, as after a router reboot: every mapping and session of ``router`` is
        forgotten and the port choices are drawn anew (with ``ports = "random"`` a host's next
        packet leaves from a new public port; with ``preserve`` it keeps its own port)."""
        node = self.node(router).plan
        if node.router is None:
            raise LabError(f"{router} is not a router")
        if self.topology.network(node.router.lan).ipv4:
            iptables = rules.router_iptables(self.plan, node, random.Random(self.rng.random()))
            self.node(router).run(["iptables-restore"], input=iptables)
            self.node(router).run(
                ["nft", "flush map ip natlab_nat mappings; flush set ip natlab_nat contacted"]
            )
        flush_conntrack(node.netns)

    # -- description -----------------------------------------------------------------------

    def describe(self) -> str:
        """Hosts, routers and their addresses, and how to get a shell inside."""
        lines = [f"lab {self.topology.name!r}, prefix {self.prefix}"]
        for node in self.nodes.values():
            extra = ""
            if node.plan.router is not None:
                nat = node.plan.router.nat
                extra = f" nat: mapping {nat.mapping}, filtering {nat.filtering}, ports {nat.ports}"
                extra += f", hairpinning {'on' if nat.hairpinning else 'off'}, timeout {nat.mapping_timeout}s"
                extra += ", UDP blocked" if nat.udp_blocked else ""
            addresses = ", ".join(
                f"{i.ifname} {' '.join(str(a) for a in (*i.ipv4, *i.ipv6))} ({i.network})"
                for i in node.plan.interfaces
            )
            lines.append(f"  {node.kind:6} {node.name:12} netns {node.netns}: {addresses}{extra}")
        lines.append(f"shell: ip netns exec {self.prefix}-NODE bash   (or coremesh-natlab exec NODE -- CMD)")
        return "\n".join(lines)


CLONE_NEWNET = 0x40000000


def in_netns(netns: str, work: Callable[[], None]) -> None:
    """Run ``work`` in a short-lived thread that enters the namespace (setns changes only the
    calling thread; that thread then ends, so no other thread ever moves)."""
    errors: list[BaseException] = []

    def enter() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {netns}")
            work()
        except BaseException as exc:
            errors.append(exc)
        finally:
            os.close(fd)

    thread = threading.Thread(target=enter, name=f"in-{netns}")
    thread.start()
    thread.join()
    if errors:
        raise LabError(f"in {netns}: {errors[0]}")


def _find_delayd(netns: str) -> int | None:
    """The PID of the delay element running in ``netns`` (started by another process), if any."""
    for pid in runs.namespace_pids(netns):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"coremesh_natlab.delayd" in cmdline:
            return pid
    return None


def _in_thread(work: Callable[[], None]) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="natlab-build")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def write_sysctls(netns: str, values: dict[str, str]) -> None:
    """Write ``/proc/sys`` entries of a namespace."""

    def work() -> None:
        for key, value in values.items():
            with open(f"/proc/sys/{key.replace('.', '/')}", "w") as f:
                f.write(value)

    in_netns(netns, work)


def flush_conntrack(netns: str) -> None:
    def work() -> None:
        from pyroute2 import Conntrack

        with Conntrack() as ct:
            ct.flush()

    in_netns(netns, work)


def _wait_line(stream: IO[bytes], expected: bytes, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    buffer = b""
    fd = stream.fileno()
    while time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        chunk = os.read(fd, 256)
        if not chunk:
            return False
        buffer += chunk
        if expected in buffer:
            return True
    return False
