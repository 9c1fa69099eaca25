"""benchmarks/routed_transfer.py in its tiny mode: real node processes on loopback, A reaching C
only through a transit node. Asserts the shape of its JSON and what it observed (everything
delivered once and in order, through the transit, across the transit's death), never timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_routed_benchmark_tiny_run_delivers_everything_in_order(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "routed_transfer.py"), "--tiny", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = tmp_path.glob("routed-*.json")
    report = json.loads(path.read_text())
    assert report["benchmark"] == "routed"
    assert all(set(row) == {"metric", "coremesh", "reticulum", "ratio"} for row in report["table"])
    assert report["table"][0]["metric"].startswith("setup through 1 transit")
    assert "Reticulum" in proc.stdout and str(path) in proc.stdout
    r = report["results"]

    # A's only route to C goes through the transit: two hops
    (route,) = r["route"]
    assert len(route["hops"]) == 2 and route["next_hop"] == route["hops"][0]
    for kind in ("routed", "direct"):
        assert r["setup"][kind]["tries"] == 3
        assert r["setup"][kind]["median_ms"] > 0

    def delivered_once_in_order(run: dict) -> None:
        assert run["send_error"] is None
        assert run["sent"] > 0 and run["messages"] == run["sent"] and run["undelivered"] == 0
        assert (run["lost"], run["duplicated"], run["reordered"]) == (0, 0, 0)
        assert run["in_order"] is True

    direct, routed = r["throughput"]["direct"], r["throughput"]["routed"]
    assert (direct["path"], routed["path"]) == ("direct", "routed")
    for run in (direct, routed):
        delivered_once_in_order(run)
        assert run["mb_per_s"] > 0
    # every routed payload byte crossed the transit
    assert routed["transit_forwarded_bytes"] >= routed["messages"] * 64 * 1024

    backup = r["transit_death_with_backup"]
    delivered_once_in_order(backup)
    assert backup["path"] == "routed"
    killed_hop = backup["routes_before"][0]["next_hop"]
    assert len(backup["routes_before"][0]["backups"]) == 1
    assert backup["routes_after"][0]["next_hop"] != killed_hop  # moved to the other transit
    assert backup["received_after_event"] > 0 and backup["resumed_after_s"] > 0
    assert backup["route_switched_after_s"] is not None

    line = r["transit_death_no_backup"]
    delivered_once_in_order(line)
    assert line["same_identity"] is True and line["redial_error"] is None
    assert line["connection_open_at_end"] is True and line["closed_reason"] is None
    assert line["received_after_event"] > 0  # delivery resumed after the transit came back
