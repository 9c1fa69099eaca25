"""The README's first command runs the demo; keep it working."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_a_local_mesh() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "coremesh.demo", "--nodes", "3"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.count("connected in") == 3  # every pair of three nodes
    assert out.count("received from") == 6  # every node from every other node
    assert "received 1048576 bytes intact: True" in out
    assert out.count("exited with code 0") == 3
    assert "Traceback" not in proc.stderr
