"""The local mesh demo (the README's first command).

Starts a relay, a bootstrap node and a few ``coremesh-node`` processes on loopback; the nodes know
only the bootstrap's address, find each other by PeerId through the DHT and connect into a full mesh
(through their admin APIs), exchange messages and pings, print what happens, and shut down with SIGTERM.
Everything stays on 127.0.0.1; every process it started is stopped by its PID, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class DemoNode:
    name: str
    listen: str
    admin: str
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    peer_id: str = ""
    log: list[str] = field(default_factory=list)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 15.0) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"http://{self.admin}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise RuntimeError(f"{self.name} {method} {path}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:  # the process is gone or does not answer
            raise RuntimeError(f"{self.name} {method} {path}: {exc}") from None


_GIVEN: set[tuple[int, int]] = set()


def free_port(kind: int) -> int:
    """A free port not given to another process of the demo yet: processes started together have not
    bound theirs when the next one is picked, and the kernel may hand the same one out again."""
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if (kind, port) not in _GIVEN:
            _GIVEN.add((kind, port))
            return port


def wait_ready(node: DemoNode, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert node.process is not None
        if node.process.poll() is not None:
            raise RuntimeError(f"{node.name} exited with code {node.process.returncode}")
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            node.call("GET", "/readyz", timeout=1.0)
            return
        time.sleep(0.05)
    raise RuntimeError(f"{node.name} did not become ready within {timeout:g}s")


def say(text: str) -> None:
    print(text, flush=True)


def spawn(name: str, tmp: str, module: str, args: list[str]) -> DemoNode:
    node = DemoNode(
        name=name,
        listen=f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
        admin=f"127.0.0.1:{free_port(socket.SOCK_STREAM)}",
        data_dir=Path(tmp) / name,
    )
    cmd = [
        sys.executable, "-m", module, "--listen", node.listen, "--admin", node.admin,
        "--log-format", "text", "--log-level", "warning", *args,
    ]  # fmt: skip
    if module in ("coremesh_node", "coremesh_bootstrap"):
        cmd += ["--data-dir", str(node.data_dir)]
    node.process = start_child(cmd)
    return node


def start_child(cmd: list[str]) -> subprocess.Popen[bytes]:
    """A process of the demo's, in a session of its own: a Ctrl-C at the terminal reaches the demo
    alone, which then stops its processes one by one with SIGTERM (so each one's peers are still up to
    acknowledge its close); and a demo that is killed takes its processes with it (Linux's
    parent-death signal)."""
    return subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent
    )


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def run(count: int, keep: bool) -> int:
    nodes: list[DemoNode] = []
    extra: list[DemoNode] = []
    relay: DemoNode | None = None
    boot: DemoNode | None = None
    with tempfile.TemporaryDirectory(prefix="coremesh-demo-") as tmp:
        try:
            keyed_port = free_port(socket.SOCK_STREAM)
            relay_args = ["--user", "demo:demo-secret", "--allow-loopback-peers"]
            relay = spawn(
                "relay", tmp, "coremesh_relay", [*relay_args, "--keyed-listen", f"127.0.0.1:{keyed_port}"]
            )
            wait_ready(relay)
            say(f"[relay] STUN/TURN on {relay.listen} (udp+tcp), keyed relay on tcp://127.0.0.1:{keyed_port}")
            turn = ["--relay", f"demo:demo-secret@{relay.listen}"]
            keyed = ["--keyed-relay", f"tcp://127.0.0.1:{keyed_port}"]
            boot = spawn("bootstrap", tmp, "coremesh_bootstrap", [])
            wait_ready(boot)
            boot.peer_id = boot.call("GET", "/v1/status")["peer_id"]
            say(f"[bootstrap] DHT seed on {boot.listen}  id={boot.peer_id}")
            join = ["--bootstrap", boot.listen]
            for i in range(count):
                nodes.append(spawn(f"node-{i}", tmp, "coremesh_node", [*turn, *keyed, *join]))
            for node in nodes:
                wait_ready(node)
                node.peer_id = node.call("GET", "/v1/status")["peer_id"]
                say(f"[{node.name}] started  pid={node.process.pid if node.process else '?'}  "
                    f"udp={node.listen}  admin={node.admin}  id={node.peer_id}")  # fmt: skip

            say("\n-- finding every node by PeerId alone (Kademlia lookup through the DHT)")
            for b in nodes[1:]:
                r = find(nodes[0], b)
                where = ", ".join(f"{a['kind']} {a['address']}" for a in r["addresses"])
                say(f"[{nodes[0].name}] found [{b.name}] in {r['elapsed_ms']:.1f} ms: {where}")

            say("\n-- connecting every pair by PeerId (DHT lookup, then a Noise IK handshake over UDP)")
            for i, a in enumerate(nodes):
                for b in nodes[i + 1 :]:
                    r = a.call("POST", "/v1/connect", {"peer": b.peer_id})
                    say(f"[{a.name}] -> [{b.name}] connected in {r['connect_ms']:.2f} ms ({r['path']})")

            say("\n-- every node sends a message to every other node")
            for a in nodes:
                for b in nodes:
                    if a is not b:
                        a.call(
                            "POST", "/v1/send", {"peer": b.peer_id, "data": f"hello {b.name}, from {a.name}"}
                        )
            names = {n.peer_id: n.name for n in nodes}
            for b in nodes:
                got = b.call("GET", f"/v1/messages?count={count - 1}&timeout=10")["messages"]
                for m in got:
                    say(f"[{b.name}] received from [{names.get(m['from'], m['from'][:10])}]: {m['data']!r}")
                if len(got) != count - 1:
                    say(f"[{b.name}] expected {count - 1} messages, got {len(got)}")
                    return 1

            say("\n-- a 1 MiB message, fragmented and reassembled")
            big = "x" * (1 << 20)
            nodes[0].call("POST", "/v1/send", {"peer": nodes[-1].peer_id, "data": big})
            got = nodes[-1].call("GET", "/v1/messages?count=1&timeout=10")["messages"]
            ok = len(got) == 1 and got[0]["data"] == big
            say(f"[{nodes[-1].name}] received {len(got[0]['data']) if got else 0} bytes intact: {ok}")
            if not ok:
                return 1

            say("\n-- pings")
            for b in nodes[1:]:
                r = nodes[0].call("POST", "/v1/ping", {"peer": b.peer_id, "count": 3})
                say(f"[{nodes[0].name}] ping [{b.name}]: rtt {r['rtt_ms']:.3f} ms over {r['path']} path")

            say("\n-- peers of node-0")
            for p in nodes[0].call("GET", "/v1/peers")["peers"]:
                rtt = p.get("rtt_ms")
                rtt_text = f"{rtt:.3f} ms" if isinstance(rtt, int | float) else "-"
                say(f"  {names.get(p['peer_id'], '?'):8} {p['address']:22} {p['state']:10} rtt {rtt_text}")

            say("\n-- candidates of node-0 (learned from the relay)")
            for c in nodes[0].call("GET", "/v1/status").get("candidates", []):
                say(f"  {c['type']:6} {c['address']}")

            say("\n-- through the relay (TURN allocation, then the keyed relay by PeerId)")
            extra.append(spawn("node-turn", tmp, "coremesh_node", turn))
            extra.append(spawn("node-keyed", tmp, "coremesh_node", keyed))
            for node in extra:
                wait_ready(node)
                node.peer_id = node.call("GET", "/v1/status")["peer_id"]
                names[node.peer_id] = node.name
                target = nodes[0]
                r = node.call(
                    "POST", "/v1/connect", {"peer": f"{target.peer_id}@{target.listen}", "path": "relay"}
                )
                ping = node.call("POST", "/v1/ping", {"peer": target.peer_id, "count": 3})
                node.call("POST", "/v1/send", {"peer": target.peer_id, "data": f"hello from {node.name}"})
                got = target.call("GET", "/v1/messages?count=1&timeout=10")["messages"]
                if not got or r["path"] != "relay":
                    say(f"[{node.name}] expected a relayed connection and a message, got {r} and {got}")
                    return 1
                say(f"[{node.name}] -> [{target.name}] connected over {r['path']} path via {r['address']}; "
                    f"rtt {ping['rtt_ms']:.3f} ms ({ping['path']}); "
                    f"[{target.name}] received {got[0]['data']!r}")  # fmt: skip

            say("\n-- mDNS: two nodes on a private link find each other with no bootstrap and no address")
            mdns = mdns_on_a_private_link(tmp)
            if mdns is False:
                return 1

            if keep:
                say("\nThe mesh keeps running; try: coremesh --admin " + nodes[0].admin + " peers")
                say("Press Ctrl-C to stop.")
                with contextlib.suppress(KeyboardInterrupt):
                    while all(n.process and n.process.poll() is None for n in nodes):
                        time.sleep(0.5)
            say("\n-- stopping (SIGTERM): peers see a close, not a timeout")
            # stop_all forgets each process it stopped: a Ctrl-C in the middle leaves the rest to the
            # finally below, which stops them in the same order.
            if not stop_all(extra + nodes + [n for n in (boot, relay) if n is not None]):
                say("demo: FAILED: a process did not exit cleanly (its output is above)")
                return 1
            shown = "" if mdns else " (the mDNS step was not shown)"
            say(f"\ndemo: OK: {count} nodes found each other by PeerId and exchanged messages directly, "
                f"2 more through the relay; every process exited cleanly{shown}")  # fmt: skip
            return 0
        finally:
            stop_all(extra + nodes + [n for n in (boot, relay) if n is not None])


def mdns_on_a_private_link(tmp: str) -> bool | None:
    """Two nodes with mDNS on in a network namespace of their own, whose loopback carries multicast:
    the second pings the first by PeerId alone. mDNS multicasts to the whole link, so the demo never
    turns it on on the host's own interfaces; without root or iproute2 it says so and goes on."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        say("  (not shown: a private network namespace needs root and iproute2)")
        return None
    ns = f"cmdemo{os.getpid()}"
    procs: list[subprocess.Popen[bytes]] = []

    def inside(*argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout, check=False
        )

    def cli(admin: str, *argv: str) -> Any:
        result = inside(sys.executable, "-m", "coremesh", "--admin", admin, *argv, "--json")
        if result.returncode != 0:
            raise RuntimeError(f"coremesh {' '.join(argv)} in {ns}: {result.stderr.strip()}")
        return json.loads(result.stdout)

    created = subprocess.run(
        ["ip", "netns", "add", ns], capture_output=True, text=True, timeout=10, check=False
    )
    if created.returncode != 0:
        # Root without CAP_SYS_ADMIN (a container, say): the rest of the demo stands without this step.
        reason = (created.stderr.strip().splitlines() or ["no reason given"])[0]
        say(f"  (not shown: cannot create a network namespace here: {reason})")
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10, check=False)
        return None
    try:
        for argv in (("link", "set", "lo", "up"), ("link", "set", "lo", "multicast", "on"),
                     ("route", "add", "224.0.0.0/4", "dev", "lo")):  # fmt: skip
            if inside("ip", *argv).returncode != 0:
                raise RuntimeError(f"cannot set up the loopback of namespace {ns}")
        admins = ["127.0.0.1:7101", "127.0.0.1:7102"]
        for i, admin in enumerate(admins):
            cmd = [
                "ip", "netns", "exec", ns, sys.executable, "-m", "coremesh_node", "--listen", "127.0.0.1:0",
                "--admin", admin, "--data-dir", str(Path(tmp) / f"mdns-{i}"), "--mdns",
                "--mdns-interface", "127.0.0.1", "--log-format", "text", "--log-level", "warning",
            ]  # fmt: skip
            procs.append(start_child(cmd))
        ids = []
        for admin in admins:
            deadline = time.monotonic() + 20
            while True:
                with contextlib.suppress(RuntimeError, ValueError):
                    ids.append(cli(admin, "status")["peer_id"])
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the mDNS node at {admin} in {ns} did not start")
                time.sleep(0.2)
        ping = cli(admins[1], "ping", ids[0])
        say(f"[mdns-1] found [mdns-0] by PeerId over mDNS and pinged it: rtt {ping['rtt_ms']:.3f} ms "
            f"over {ping['path']} path")  # fmt: skip
        return True
    except RuntimeError as exc:
        say(f"[mdns] failed: {exc}")
        return False
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10, check=False)


def find(node: DemoNode, target: DemoNode, timeout: float = 15.0) -> Any:
    """Look ``target`` up from ``node``; a node that has just started may not have published yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return node.call("GET", f"/v1/lookup?peer={target.peer_id}&timeout=5")
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def stop_all(nodes: list[DemoNode]) -> bool:
    """Stop every process, one at a time so each node's peers are still running to acknowledge its
    close; whether every one exited with code 0."""
    clean = True
    for node in nodes:
        if node.process is None:
            continue
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
        try:
            code = node.process.wait(timeout=10)
            say(f"[{node.name}] exited with code {code}")
            clean = clean and code == 0
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()
            say(f"[{node.name}] did not stop within 10 s; killed")
            clean = False
        node.process = None
    return clean


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coremesh.cli.demo",
        description="Run a local mesh of coremesh-node processes on loopback and exchange messages.",
    )
    parser.add_argument("--nodes", type=int, default=4, help="how many node processes (2-16, default 4)")
    parser.add_argument("--keep", action="store_true", help="keep the mesh running until Ctrl-C")
    args = parser.parse_args(argv)
    if not 2 <= args.nodes <= 16:
        parser.error("--nodes must be between 2 and 16")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        return run(args.nodes, args.keep)
    except RuntimeError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # its processes were stopped on the way out (run's finally)
        print("demo: interrupted; every process it started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
