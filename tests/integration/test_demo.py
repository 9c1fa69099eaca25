"""The README's first command runs the demo; keep it working."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_a_local_mesh() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "coremesh.demo", "--nodes", "3"], capture_output=True, text=True, timeout=120
    )
    out = proc.stdout
    everything = out + proc.stderr
    assert proc.returncode == 0, everything
    assert out.count("connected in") == 3, everything  # every pair of three nodes
    assert out.count("received from") == 6, everything  # every node from every other node
    assert "received 1048576 bytes intact: True" in out, everything
    assert out.count("exited with code 0") == 3 + 2 + 2, everything  # nodes, relayed nodes, relay, bootstrap
    assert out.count("found [node-") == 2, everything  # node-0 finds the others by PeerId (the DHT)
    assert "srflx" in out and "relay  127.0.0.1" in out, everything  # candidates from the relay
    assert "[node-turn] -> [node-0] connected over relay path" in out, everything
    assert "[node-keyed] -> [node-0] connected over relay path via tcp://" in out, everything
    assert "received 'hello from node-turn'" in out and "received 'hello from node-keyed'" in out, everything
    assert "[mdns-1] found [mdns-0] by PeerId over mDNS" in out, everything  # root: a private namespace
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert "cmdemo" not in namespaces  # removed again
    assert "Traceback" not in proc.stderr, everything
    assert "did not acknowledge" not in proc.stderr, everything  # stopping one by one is clean
