"""Rendezvous through a shared peer, in the NAT lab: nodes started with only ``--bootstrap`` and
``--relay`` (TURN; no keyed relay) behind NATs reach each other by PeerId.

Neither side can open a direct path alone (a port-restricted NAT drops what its host did not send
to first) and TURN refuses packets no permission covers, so the first path is the overlay: an
end-to-end session routed through the bootstrap, both nodes' neighbour. Over it the nodes exchange
candidates and punch: behind port-restricted cone NATs they end on a direct path; behind two
symmetric NATs the checks fail and the connection stays routed (or relayed), saying why.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from coremesh_natlab import Lab, from_dict
from coremesh_natlab.testing import require_root

from coremesh.identity import load_or_create_identity

from .nat_matrix import (
    _CLIENT,
    ADMIN,
    READY,
    RELAY_ALT,
    RELAY_IP,
    RELAY_PORT,
    RELAY_USER,
    run_script,
    start_relay,
)

BOOT_IP = "192.0.2.20"
NODE_PORT = 7000

# Ping a peer by PeerId (the node finds its record in the DHT and connects), then watch its path
# until it is argv[3] ("direct"), or its direct checks have failed ("stay"), or time runs out.
PING_AND_WATCH = (
    _CLIENT
    + """
peer, settle, want = sys.argv[1], float(sys.argv[2]), sys.argv[3]
t0 = time.time()
ping = call("POST", "/v1/ping", {"peer": peer, "count": 1, "timeout": 15}, timeout=40)
out = {"ping": ping, "connected_s": round(time.time() - t0, 3)}
deadline = time.time() + settle
while time.time() < deadline:
    p = next((p for p in call("GET", "/v1/peers")["peers"] if p["peer_id"] == peer), {})
    out["via"], out["reason"] = p.get("via"), p.get("reason")
    if want == "direct" and out["via"] == "direct":
        out["direct_s"] = round(time.time() - t0, 3)
        break
    if want == "stay" and out["reason"] and "direct checks failed" in out["reason"]:
        break
    time.sleep(0.2)
out["ping_after"] = call("POST", "/v1/ping", {"peer": peer, "count": 1, "timeout": 10}, timeout=30)
print(json.dumps(out))
"""
)


def _topology() -> Any:
    networks: dict[str, Any] = {"internet": {"ipv4": ["192.0.2.0/24", "198.51.100.0/24"]}}
    routers: dict[str, Any] = {}
    hosts: dict[str, Any] = {
        "stun": {"network": "internet", "ipv4": [RELAY_IP, RELAY_ALT]},
        "boot": {"network": "internet", "ipv4": [BOOT_IP]},
    }
    for index, (name, nat) in enumerate(
        [
            ("pa", "port-restricted-cone"),
            ("pb", "port-restricted-cone"),
            ("sa", "symmetric"),
            ("sb", "symmetric"),
        ],
        start=1,
    ):
        networks[f"lan{index}"] = {"ipv4": f"10.{index}.0.0/24"}
        routers[f"r{index}"] = {"wan": "internet", "lan": f"lan{index}", "nat": nat}
        hosts[name] = {"network": f"lan{index}"}
    return from_dict({"name": "rendezvous", "networks": networks, "routers": routers, "hosts": hosts})


@pytest.mark.timeout(300)
def test_nodes_behind_nats_with_only_a_bootstrap_and_turn_meet_through_the_bootstrap() -> None:
    require_root()
    with tempfile.TemporaryDirectory() as tmp, Lab(_topology()) as lab:
        start_relay(lab, tmp)
        boot_id = load_or_create_identity(Path(tmp) / "boot").peer_id.to_text()
        boot_log = open(f"{tmp}/boot.log", "wb")  # noqa: SIM115 - owned by the process
        lab.host("boot").python(
            ["-m", "coremesh_bootstrap", "--listen", f"{BOOT_IP}:{NODE_PORT}", "--data-dir", f"{tmp}/boot",
             "--admin", "127.0.0.1:7948", "--log-level", "warning"],
            stdout=boot_log, stderr=boot_log,
        )  # fmt: skip
        names = ["pa", "pb", "sa", "sb"]
        for name in names:
            log = open(f"{tmp}/{name}.log", "wb")  # noqa: SIM115 - owned by the process
            lab.host(name).python(
                ["-m", "coremesh_node", "--listen", f"0.0.0.0:{NODE_PORT}", "--admin", ADMIN,
                 "--data-dir", f"{tmp}/{name}", "--relay", f"{RELAY_USER}@{RELAY_IP}:{RELAY_PORT}",
                 "--bootstrap", f"{boot_id}@{BOOT_IP}:{NODE_PORT}", "--log-level", "info"],
                stdout=log, stderr=log,
            )  # fmt: skip
        ids = {name: run_script(lab.host(name), READY)["peer_id"] for name in names}
        # Each node is connected to the bootstrap (its only neighbour) and has a route to the others.
        for name in names:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                routes = run_script(lab.host(name), _CLIENT + 'print(json.dumps(call("GET", "/v1/routes")))')
                if len(routes["routes"]) >= len(names):  # the bootstrap and the three others
                    break
                time.sleep(0.3)
            assert len(routes["routes"]) >= len(names), (name, routes)

        cone = run_script(lab.host("pa"), PING_AND_WATCH, ids["pb"], "30", "direct", timeout=120)
        print(f"\nport-restricted pair: {json.dumps(cone)}")
        assert cone["ping"]["received"] == 1, cone
        assert cone["via"] == "direct", cone  # punched through, candidates exchanged over the routed session
        assert cone["ping_after"]["path"] == "direct", cone
        # The connection began as an end-to-end session through the bootstrap (the rendezvous).
        stats = run_script(lab.host("pa"), _CLIENT + 'print(json.dumps(call("GET", "/v1/status")["stats"]))')
        assert stats.get("routed_packets_sent", 0) > 0, stats
        boot = run_script(
            lab.host("boot"), _CLIENT + 'print(json.dumps(call("GET", "/v1/status")))', admin="127.0.0.1:7948"
        )
        print(
            json.dumps({k: v for k, v in json.dumps(boot).items()} if False else boot.get("stats", {}))[:1500]
        )

        sym = run_script(lab.host("sa"), PING_AND_WATCH, ids["sb"], "30", "stay", timeout=120)
        print(f"symmetric pair: {json.dumps(sym)}")
        assert sym["ping"]["received"] == 1, sym
        assert sym["via"] in ("routed", "turn"), sym
        assert sym["reason"] and "direct checks failed" in sym["reason"], sym
        assert sym["ping_after"]["received"] == 1 and sym["ping_after"]["path"] in ("routed", "relay"), sym
