"""The NAT-type matrix on the NAT lab: real namespaces, real `coremesh-node` processes and a real
`coremesh-relay` (STUN with RFC 5780, TURN, keyed relay) on the emulated internet.

One lab holds every cell: for each NAT type two routers (an ``a`` side and a ``b`` side) with one
host each; every ``a`` host dials every ``b`` host, so each ordered pair of types (both
directions) is one connection, all running at once. Shared by the matrix test and
``benchmarks/nat_traversal.py``.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from coremesh_natlab import Lab, Node, from_dict

RELAY_IP = "192.0.2.10"
RELAY_ALT = "192.0.2.11"
RELAY_PORT = 3478
KEYED_PORT = 4433
NODE_PORT = 7000
ADMIN = "127.0.0.1:7947"
RELAY_USER = "alice:s3cret"

# NAT types of the lab: short names (host names are short) and the lab's preset. "cgn" is a
# port-restricted home NAT behind a carrier-grade NAT (endpoint-independent, random port offset).
TYPES: dict[str, str] = {
    "fc": "full-cone",
    "rc": "restricted-cone",
    "prc": "port-restricted-cone",
    "sym": "symmetric",
    "seq": "symmetric-sequential",
    "blk": "udp-blocked",
    "cgn": "cgnat",
}
CGN_NAT = {
    "mapping": "endpoint-independent",
    "filtering": "address-and-port-dependent",
    "ports": "random",
    "mapping_timeout": 60,
}
CONES = {"fc", "rc", "prc", "cgn"}
OPEN_FILTER = {"fc", "rc"}  # lets a symmetric NAT's fresh port in
SYMMETRIC = {"sym", "seq"}


def expected_path(x: str, y: str) -> str:
    """What theory allows between hosts behind NAT types ``x`` and ``y`` (see docs/traversal.md)."""
    if "blk" in (x, y):
        return "relay"
    if x in CONES and y in CONES:
        return "direct"  # both mappings endpoint-independent: simultaneous punching
    if {x, y} & SYMMETRIC and {x, y} & OPEN_FILTER:
        return "direct"  # the symmetric side's new port gets in; a triggered check answers it
    if {x, y} in ({"prc", "seq"}, {"cgn", "seq"}):
        return "direct"  # port prediction (netcheck says symmetric; ports +1..+8 are tried)
    if {x, y} in ({"prc", "sym"}, {"cgn", "sym"}):
        return "direct"  # the birthday approach: 256 probe sockets x 2048 sprayed ports (99.97 %)
    return "relay"  # symmetric vs symmetric


def topology(types: Iterable[str], *, latency_ms: float = 0.0) -> Any:
    networks: dict[str, Any] = {"internet": {"ipv4": ["192.0.2.0/24", "198.51.100.0/24"]}}
    routers: dict[str, Any] = {}
    hosts: dict[str, Any] = {"stun": {"network": "internet", "ipv4": [RELAY_IP, RELAY_ALT]}}
    wan_link = {"latency_ms": latency_ms} if latency_ms else {}
    index = 0
    for kind in types:
        for side in ("a", "b"):
            index += 1
            tag = f"{side}{index}"
            networks[f"lan{tag}"] = {"ipv4": f"10.{index}.0.0/24"}
            if kind == "cgn":
                networks[f"car{tag}"] = {"ipv4": f"100.64.{index}.0/24"}
                routers[f"cgn{tag}"] = {
                    "wan": "internet",
                    "lan": f"car{tag}",
                    "nat": CGN_NAT,
                    **_wan(wan_link),
                }
                routers[f"r{tag}"] = {"wan": f"car{tag}", "lan": f"lan{tag}", "nat": "port-restricted-cone"}
            else:
                routers[f"r{tag}"] = {
                    "wan": "internet",
                    "lan": f"lan{tag}",
                    "nat": TYPES[kind],
                    **_wan(wan_link),
                }
            hosts[host_name(kind, side)] = {"network": f"lan{tag}"}
    return from_dict({"name": "nat-matrix", "networks": networks, "routers": routers, "hosts": hosts})


def _wan(link: dict[str, float]) -> dict[str, Any]:
    return {"wan_link": link} if link else {}


def host_name(kind: str, side: str) -> str:
    return f"{side}_{kind}"


def start_relay(lab: Lab, log_dir: str) -> None:
    stun = lab.host("stun")
    log = open(f"{log_dir}/relay.log", "wb")  # noqa: SIM115 - owned by the process
    stun.python(
        [
            "-m", "coremesh_relay", "--listen", f"{RELAY_IP}:{RELAY_PORT}", "--alt-address", RELAY_ALT,
            "--keyed-listen", f"{RELAY_IP}:{KEYED_PORT}", "--user", RELAY_USER,
            "--allowed-peer-ip", "192.0.2.0/24", "--allowed-peer-ip", "198.51.100.0/24",
            "--admin", ADMIN, "--log-level", "warning",
        ],
        stdout=log, stderr=log,
    )  # fmt: skip


def start_node(
    host: Node,
    log_dir: str,
    extra: Iterable[str] = (),
    *,
    listen: str = "0.0.0.0",
    port: int = NODE_PORT,
    admin: str = ADMIN,
) -> Any:
    log = open(f"{log_dir}/{host.name}-{port}.log", "wb")  # noqa: SIM115 - owned by the process
    return host.python(
        [
            "-m", "coremesh_node", "--listen", f"{listen}:{port}", "--admin", admin,
            "--data-dir", f"{log_dir}/{host.name}-{port}", "--relay", f"{RELAY_USER}@{RELAY_IP}:{RELAY_PORT}",
            "--keyed-relay", f"tcp://{RELAY_IP}:{KEYED_PORT}", "--log-level", "warning", *extra,
        ],
        stdout=log, stderr=log,
    )  # fmt: skip


_CLIENT = """
import json, sys, time, urllib.request
def call(method, path, body=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request("http://ADMIN" + path, method=method, data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read() or b"{}")
"""  # ADMIN is replaced by run_script

# Wait until the node serves, its first netcheck finished and the node tells its peers the NAT type
# netcheck found (it takes a report up within a candidate refresh); print its peer id and NAT type.
READY = (
    _CLIENT
    + """
deadline = time.time() + 40
while True:
    try:
        status = call("GET", "/v1/status", timeout=2)
        break
    except Exception:
        if time.time() > deadline:
            raise
        time.sleep(0.1)
report = call("GET", "/v1/netcheck", timeout=30) if "--no-netcheck" not in sys.argv else {}
if report.get("nat_type") and not report.get("error"):
    deadline = time.time() + 20
    while status.get("nat_type") != report["nat_type"][:48]:
        if time.time() > deadline:
            raise SystemExit("the node never announced the NAT type netcheck found: "
                             + repr((status.get("nat_type"), report["nat_type"])))
        time.sleep(0.1)
        status = call("GET", "/v1/status", timeout=2)
print(json.dumps({"peer_id": status["peer_id"], "nat_type": report.get("nat_type")}))
"""
)

# Dial every target at once (threads); per target: connect, send one message, then watch the path
# until it is the expected one (or the checks have failed, for a relayed cell) or time runs out.
DIAL = (
    _CLIENT
    + """
import threading
targets, settle = json.loads(sys.argv[1]), float(sys.argv[2])
results = {}
def dial(t):
    r = {"t0": time.time()}
    body = {"peer": t["peer"] + "@" + t["addr"], "timeout": t.get("timeout", 4.5)}
    c = call("POST", "/v1/connect", body, timeout=30)
    r["t_connected"] = time.time()
    r["connect"] = c
    s = call("POST", "/v1/send", {"peer": t["peer"], "data": "hello " + t["cell"]})
    r["sent"] = "bytes" in s
    deadline = time.time() + settle
    via, reason = None, None
    while time.time() < deadline:
        peers = call("GET", "/v1/peers")["peers"]
        p = next((p for p in peers if p["peer_id"] == t["peer"]), None)
        via, reason = (p or {}).get("via"), (p or {}).get("reason")
        if t["expect"] == "direct" and via == "direct":
            r["t_direct"] = time.time()
            break
        if t["expect"] == "relay" and reason and "direct checks failed" in reason:
            break
        time.sleep(0.2)
    r["via"], r["reason"] = via, reason
    r["ping"] = call("POST", "/v1/ping", {"peer": t["peer"], "count": 1, "timeout": 5})
    results[t["cell"]] = r
threads = [threading.Thread(target=dial, args=(t,)) for t in targets]
for th in threads: th.start()
for th in threads: th.join()
print(json.dumps(results))
"""
)

# The node's inbox: argv[2] messages (100 if not given) or what came within argv[1] seconds.
INBOX = (
    _CLIENT
    + """
count = sys.argv[2] if len(sys.argv) > 2 else "100"
out = call("GET", "/v1/messages?count=" + count + "&timeout=" + sys.argv[1], timeout=60)
out["peers"] = call("GET", "/v1/peers")["peers"]
print(json.dumps(out))
"""
)


@dataclass
class Cell:
    dialer: str
    listener: str
    expected: str
    via: str | None = None
    reason: str | None = None
    first_message_s: float | None = None
    direct_after_s: float | None = None
    ping_path: str | None = None
    error: str | None = None
    listener_via: str | None = None
    listener_reason: str | None = None

    @property
    def path(self) -> str | None:
        return None if self.via is None else ("direct" if self.via == "direct" else "relay")

    @property
    def ok(self) -> bool:
        return self.error is None and self.path == self.expected and self.first_message_s is not None


def run_script(host: Node, code: str, *args: str, timeout: float = 120, admin: str = ADMIN) -> Any:
    result = host.run(
        [sys.executable, "-c", code.replace("ADMIN", admin), *args], timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{host.name}: {result.stderr.strip()[-800:]}")
    return json.loads(result.stdout)


def parallel(items: Iterable[Any], fn: Callable[[Any], Any]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}

    def work(item: Any) -> None:
        try:
            out[item] = fn(item)
        except Exception as exc:  # reported per cell, never lost in a thread
            out[item] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


# How long a dialer watches a cell for the path it expects: a deadline, not a wait (the watch ends as
# soon as the path is the expected one). On a loaded machine a birthday path can take the controlled
# side well past 12 s to follow (seen: the listener direct, the dialer direct just after 12 s), and
# a birthday attempt fails now and then (by design 0.03 % of attempts, more under load: seen once
# in a lab run, cgn -> sym): the watch outlasts the retry 30 s later (BirthdayConfig.retry_initial).
SETTLE = 50.0


def run_matrix(
    lab: Lab, types: list[str], log_dir: str, *, settle: float = SETTLE
) -> dict[tuple[str, str], Cell]:
    """Start the relay and the nodes, dial every cell, and report what each cell did."""
    start_relay(lab, log_dir)
    names = [host_name(k, s) for k in types for s in ("a", "b")]
    for name in names:
        start_node(lab.host(name), log_dir)
    info = parallel(names, lambda n: run_script(lab.host(n), READY))
    for name, value in info.items():
        if isinstance(value, Exception):
            raise RuntimeError(f"{name} did not come up: {value}")
    cells = {(x, y): Cell(x, y, expected_path(x, y)) for x in types for y in types}

    def dial(x: str) -> Any:
        targets = [
            {
                "cell": f"{x}>{y}",
                "peer": info[host_name(y, "b")]["peer_id"],
                "addr": f"{lab.public_ipv4(host_name(y, 'b'))}:{NODE_PORT}",
                "expect": cells[(x, y)].expected,
            }
            for y in types
        ]
        return run_script(lab.host(host_name(x, "a")), DIAL, json.dumps(targets), str(settle))

    dialed = parallel(types, dial)
    # every listener gets one message from each dialer
    inboxes = parallel(types, lambda y: run_script(lab.host(host_name(y, "b")), INBOX, "20", str(len(types))))
    for (x, y), cell in cells.items():
        results = dialed.get(x)
        if isinstance(results, Exception):
            cell.error = str(results)
            continue
        r = results[f"{x}>{y}"]
        cell.via, cell.reason = r.get("via"), r.get("reason")
        cell.ping_path = r["ping"].get("path")
        if "t_direct" in r:
            cell.direct_after_s = r["t_direct"] - r["t0"]
        if "peer_id" not in r["connect"]:
            cell.error = f"connect failed: {r['connect']}"
        inbox = inboxes.get(y)
        if isinstance(inbox, Exception):
            cell.error = str(inbox)
            continue
        sender = info[host_name(x, "a")]["peer_id"]
        seen = next((p for p in inbox["peers"] if p["peer_id"] == sender), {})
        cell.listener_via, cell.listener_reason = seen.get("via"), seen.get("reason")
        got = [m for m in inbox["messages"] if m["from"] == sender and m["data"] == f"hello {x}>{y}"]
        if got:
            cell.first_message_s = got[0]["ts"] - r["t0"]
    return cells


def format_matrix(cells: dict[tuple[str, str], Cell], types: list[str]) -> str:
    width = 13
    lines = ["dialer \\ listener".ljust(18) + "".join(t.ljust(width) for t in types)]
    for x in types:
        row = x.ljust(18)
        for y in types:
            c = cells[(x, y)]
            mark = "" if c.ok else "!"
            t = f"{c.first_message_s:.2f}s" if c.first_message_s is not None else "-"
            row += f"{(c.via or '?')[:6]} {t}{mark}".ljust(width)
        lines.append(row)
    lines.append(
        "cell: path the connection settled on (direct/turn/keyed), time to first message; ! = unexpected"
    )
    return "\n".join(lines)


# -- IPv6: symmetric IPv4 NATs (no direct IPv4 path), IPv6 behind stateful firewalls ----------------


def dual_stack_topology() -> Any:
    """Hosts a1, a2 behind router nat_a and b1, b2 behind nat_b: IPv4 through symmetric NATs,
    IPv6 routed through address-and-port-dependent stateful firewalls."""
    hosts: dict[str, Any] = {
        "stun": {"network": "internet", "ipv4": [RELAY_IP, RELAY_ALT], "ipv6": ["2001:db8::10"]},
    }
    for side in ("a", "b"):
        for n in (1, 2):
            hosts[f"{side}{n}"] = {"network": f"lan_{side}"}
    return from_dict(
        {
            "name": "dual-stack-matrix",
            "networks": {
                "internet": {"ipv4": "192.0.2.0/24", "ipv6": "2001:db8::/64"},
                "lan_a": {"ipv4": "10.1.0.0/24", "ipv6": "2001:db8:1::/64"},
                "lan_b": {"ipv4": "10.2.0.0/24", "ipv6": "2001:db8:2::/64"},
            },
            "routers": {
                f"nat_{side}": {
                    "wan": "internet",
                    "lan": f"lan_{side}",
                    "nat": "symmetric",
                    "ipv6_filtering": "address-and-port-dependent",
                }
                for side in ("a", "b")
            },
            "hosts": hosts,
        }
    )


def run_dual_stack(lab: Lab, log_dir: str, *, settle: float = SETTLE) -> dict[tuple[str, str], Cell]:
    """a1 dials b1 and b2 dials a2 (both directions), each at the peer's public IPv4 address."""
    start_relay(lab, log_dir)
    names = ["a1", "a2", "b1", "b2"]
    for name in names:
        start_node(lab.host(name), log_dir, listen="[::]")
    info = parallel(names, lambda n: run_script(lab.host(n), READY))
    for name, value in info.items():
        if isinstance(value, Exception):
            raise RuntimeError(f"{name} did not come up: {value}")
    cells: dict[tuple[str, str], Cell] = {}
    pairs = [("a1", "b1"), ("b2", "a2")]

    def dial(pair: tuple[str, str]) -> Any:
        x, y = pair
        target = {
            "cell": f"{x}>{y}",
            "peer": info[y]["peer_id"],
            "addr": f"{lab.public_ipv4(y)}:{NODE_PORT}",
            "expect": "direct",
        }
        return run_script(lab.host(x), DIAL, json.dumps([target]), str(settle))

    dialed = parallel(pairs, dial)
    inboxes = parallel([y for _, y in pairs], lambda y: run_script(lab.host(y), INBOX, "20", "1"))
    for x, y in pairs:
        cell = cells[(x, y)] = Cell(x, y, "direct")
        results, inbox = dialed[(x, y)], inboxes[y]
        if isinstance(results, Exception) or isinstance(inbox, Exception):
            cell.error = str(results if isinstance(results, Exception) else inbox)
            continue
        r = results[f"{x}>{y}"]
        cell.via, cell.reason = r.get("via"), r.get("reason")
        got = [m for m in inbox["messages"] if m["from"] == info[x]["peer_id"]]
        if got:
            cell.first_message_s = got[0]["ts"] - r["t0"]
        seen = next((p for p in inbox["peers"] if p["peer_id"] == info[x]["peer_id"]), {})
        cell.listener_via, cell.listener_reason = seen.get("via"), seen.get("reason")
        cell.ping_path = str(seen.get("address"))  # where the listener sends: an IPv6 address
    return cells
