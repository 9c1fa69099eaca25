"""The README's first command runs the demo; keep it working: as root with namespaces, without the
capability to create one, and when a user presses Ctrl-C in the middle of it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys


def test_demo_runs_a_local_mesh() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "coremesh.cli.demo", "--nodes", "3"],
        capture_output=True,
        text=True,
        timeout=120,
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
    assert out.rstrip().splitlines()[-1].startswith("demo: OK: 3 nodes found each other"), everything


def test_demo_without_the_capability_for_namespaces_leaves_the_mdns_step_out() -> None:
    """Root without CAP_SYS_ADMIN (a container, say) cannot create a network namespace: the demo says
    so in one line and succeeds with the rest."""
    proc = subprocess.run(
        ["setpriv", "--bounding-set=-sys_admin", sys.executable, "-m", "coremesh.cli.demo", "--nodes", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    everything = proc.stdout + proc.stderr
    assert proc.returncode == 0, everything
    assert "(not shown: cannot create a network namespace here: " in proc.stdout, everything
    assert "[mdns-1] found" not in proc.stdout, everything
    assert "demo: OK: 2 nodes" in proc.stdout and "(the mDNS step was not shown)" in proc.stdout, everything
    assert "Traceback" not in everything, everything


def test_ctrl_c_stops_the_demo_and_its_processes_without_a_traceback() -> None:
    """Ctrl-C at a terminal sends SIGINT to the whole foreground process group: only the demo must act
    on it, stopping every process it started, and print one line, not tracebacks."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "coremesh.cli.demo", "--nodes", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's foreground job has
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "connected in" in line:  # the mesh is up and the demo is in the middle of its work
                os.killpg(proc.pid, signal.SIGINT)
                break
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines) + rest
    assert any("connected in" in line for line in lines), out
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert "demo: interrupted; every process it started was stopped" in out, out
    assert out.count("exited with code 0") == 4, out  # two nodes, the bootstrap and the relay
    for pid in map(int, re.findall(r"pid=(\d+)", out)):
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie_or_other(pid), f"pid {pid} still runs"


def _is_zombie_or_other(pid: int) -> bool:
    """A PID still listed is either not a demo node any more (reused) or a zombie of an exited one."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"coremesh_node" not in f.read()
    except OSError:
        return True
