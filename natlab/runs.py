"""Bookkeeping of lab runs, so that nothing outlives its run: one state file per run prefix.

The state file (``/run/coremesh-natlab/PREFIX.json``) is written *before* the first namespace is
created and lists every namespace the run will create, the owning process (PID and start time, so a
recycled PID is not mistaken for it) and whether the run was left up on purpose (``detached``, by
``coremesh-natlab up``). A run is stale when its owner is gone and it is not detached; namespaces
named like a default prefix (``cmnlXXXXXX-...``) with no state file are orphans. Destroying a run
stops every process inside its namespaces (by PID, from ``ip netns pids``), then deletes the
namespaces; links, addresses and rules live inside them and go with them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Final

STATE_DIR: Final = Path(os.environ.get("COREMESH_NATLAB_STATE", "/run/coremesh-natlab"))
DEFAULT_PREFIX_RE: Final = re.compile(r"^cmnl[0-9a-f]{6}$")
PREFIX_RE: Final = re.compile(r"^[a-z][a-z0-9]{0,11}$")


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    prefix: str
    owner_pid: int
    owner_start: str
    detached: bool
    namespaces: tuple[str, ...]
    topology: str
    created: float
    nodes: dict[str, Any]
    topology_data: dict[str, Any] = dataclasses.field(default_factory=dict)  # topology.to_dict, links current

    @property
    def owner_alive(self) -> bool:
        return process_start(self.owner_pid) == self.owner_start

    @property
    def stale(self) -> bool:
        return not self.detached and not self.owner_alive


def process_start(pid: int) -> str | None:
    """The start time of ``pid`` (field 22 of /proc/PID/stat), or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def state_path(prefix: str) -> Path:
    return STATE_DIR / f"{prefix}.json"


def write(run: Run) -> None:
    """Write atomically (temp file + rename)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    path = state_path(run.prefix)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(run), indent=1))
    os.replace(tmp, path)


def read_all() -> list[Run]:
    runs: list[Run] = []
    if not STATE_DIR.is_dir():
        return runs
    for path in sorted(STATE_DIR.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            data["namespaces"] = tuple(data["namespaces"])
            runs.append(Run(**data))
        except (OSError, ValueError, TypeError, KeyError):
            continue
    return runs


def read(prefix: str) -> Run | None:
    return next((r for r in read_all() if r.prefix == prefix), None)


def list_namespaces() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def orphan_namespaces() -> list[str]:
    """Namespaces with a default-prefix name that no state file accounts for."""
    known = {ns for run in read_all() for ns in run.namespaces}
    return [
        ns
        for ns in list_namespaces()
        if ns not in known and DEFAULT_PREFIX_RE.match(ns.split("-", 1)[0]) and "-" in ns
    ]


def namespace_pids(netns: str) -> list[int]:
    result = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=False)
    return [int(p) for p in result.stdout.split() if p.isdigit()]


def stop_pids(pids: list[int], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL whatever is still there after ``grace`` seconds."""
    starts = {pid: process_start(pid) for pid in pids}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if starts[pid] is not None and process_start(pid) == starts[pid]]
        if alive:
            time.sleep(0.02)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def destroy_namespaces(namespaces: list[str] | tuple[str, ...]) -> None:
    """Stop every process inside, then delete the namespaces (missing ones are skipped)."""
    from pyroute2 import netns

    present = set(list_namespaces())
    pids = [pid for ns in namespaces if ns in present for pid in namespace_pids(ns)]
    if pids:
        stop_pids(sorted(set(pids)))
    for ns in namespaces:
        if ns in present:
            with contextlib.suppress(OSError):
                netns.remove(ns)


def destroy(prefix: str) -> bool:
    """Remove the run ``prefix`` completely; False if there was no such run."""
    run = read(prefix)
    namespaces: list[str] = list(run.namespaces) if run else []
    namespaces += [ns for ns in list_namespaces() if ns.startswith(prefix + "-") and ns not in namespaces]
    if run is None and not namespaces:
        return False
    destroy_namespaces(namespaces)
    with contextlib.suppress(FileNotFoundError):
        state_path(prefix).unlink()
    shutil.rmtree(STATE_DIR / prefix, ignore_errors=True)
    return True


def cleanup(*, include_detached: bool = False) -> list[str]:
    """Destroy stale runs (owner gone; with ``include_detached`` also runs left up on purpose) and
    orphan namespaces. Returns what was removed (prefixes and namespace names)."""
    removed = []
    for run in read_all():
        if run.stale or (include_detached and not run.owner_alive):
            destroy(run.prefix)
            removed.append(run.prefix)
    orphans = orphan_namespaces()
    if orphans:
        destroy_namespaces(orphans)
        removed += orphans
    # Work directories whose run has no state file and no namespace left (and that are not brand
    # new: a run being built writes its state file first, but may not have been read above).
    known = {run.prefix for run in read_all()}
    live = {ns.split("-", 1)[0] for ns in list_namespaces()}
    if STATE_DIR.is_dir():
        for path in STATE_DIR.iterdir():
            if path.is_dir() and path.name not in known | live and time.time() - path.stat().st_mtime > 60:
                shutil.rmtree(path, ignore_errors=True)
    return removed
