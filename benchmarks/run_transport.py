"""Transport benchmark (issue 3): Core Mesh side by side with its anchors, in one run.

  sh benchmarks/setup.sh                      # once: iperf3 + benchmarks/.venv-libp2p
  python benchmarks/run_transport.py [--duration 5] [--only iperf3,asyncio,libp2p,coremesh]
  python benchmarks/run_transport.py --only asyncio,coremesh --base c9361a7 [--rounds 2]

``--base REF`` measures the code of a git commit next to the working tree's, in the same run: it
extracts REF with ``git archive`` into a temporary folder, runs that tree's own
``benchmarks/coremesh_transport.py`` against it (``coremesh@REF``), alternating base and head for
``--rounds`` rounds so that a slow phase of the machine does not fall on one side only, and prints
head/base ratios from the medians.

Runs each anchor as its own subprocess (one after the other, never two at once: the machine has
2 cores and every pair uses both), with a timeout, collects their JSON, writes
benchmarks/results/transport-<timestamp>.json and prints a table (metric, value, unit).
An anchor that fails or times out is recorded as such; the others still run.
Run it with the project's Python (the one with coremesh installed) for the coremesh rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ANCHORS = HERE / "anchors"
LIBP2P_PYTHON = HERE / ".venv-libp2p" / "bin" / "python"
sys.path.insert(0, str(ANCHORS))

from common import exit_on_sigterm, stop  # noqa: E402


# ------------------------------------------------------------------------------------------------
# HOOK: the Core Mesh measurements. Two node processes on loopback, measured like the anchors
# (receiver-side figures, warm-up excluded, time.perf_counter, RSS from /proc/PID/status).
# Return a dict; the keys below, when present, become table rows next to the anchors':
#   udp_1200: {"datagrams_per_s", "mbit_per_s"}   1200-byte payloads over one connection
#   msgs_64:  {"msgs_per_s"}                       64-byte messages over one connection
#   connect:  {"median_ms"}                        fresh node: connect -> first echoed message
#   rss:      {"kib_per_connection"}               listener VmRSS delta / open connections
# Anything else in the dict is kept in the JSON file.
# ------------------------------------------------------------------------------------------------
def measure_coremesh_tree(tree: Path, duration: float) -> dict[str, Any]:
    """The coremesh rows for the source tree at ``tree``, measured by that tree's own script."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return run_anchor(
        [
            sys.executable,
            str(tree / "benchmarks" / "coremesh_transport.py"),
            "all",
            "--duration",
            str(duration),
        ],
        timeout=6 * duration + 180,
        cwd=tree,
        env=env,
    )


def extract_ref(ref: str, into: Path) -> Path:
    """The committed tree of ``ref`` (a commit, tag or branch) as files under ``into``."""
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def median_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per numeric leaf, the median over the runs that succeeded; the first failure if none did."""
    ok = [r for r in runs if r.get("status") == "ok"]
    if not ok:
        return runs[0]

    def merge(values: list[Any]) -> Any:
        if all(isinstance(v, dict) for v in values):
            keys = [k for k in values[0] if all(k in v for v in values)]
            return {k: merge([v[k] for v in values]) for k in keys}
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            ordered = sorted(values)
            mid = len(ordered) // 2
            m = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
            return round(m, 3) if isinstance(m, float) else m
        return values[0]

    return {**merge(ok), "rounds": len(ok)}


def measure_coremesh(duration: float) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))  # so the source tree imports even when coremesh isn't installed
    try:
        import coremesh
    except ImportError as e:
        return {"status": "not available", "reason": f"import coremesh failed: {e}"}
    if not hasattr(coremesh, "MeshNode"):
        return {"status": "not available", "reason": "coremesh has no MeshNode yet"}
    script = HERE / "coremesh_transport.py"
    return run_anchor(
        [sys.executable, str(script), "all", "--duration", str(duration)], timeout=6 * duration + 180
    )


# ------------------------------------------------------------------------------------------------


def machine_busy_s() -> float:
    """CPU seconds spent busy on all cores since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process and of its children that have been waited for (the anchors)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def last_json_object(text: str) -> dict[str, Any] | None:
    """The last JSON object in text that starts at the beginning of a line (one line or indented)."""
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("{"):
            try:
                obj = json.loads("\n".join(lines[i:]))
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def run_anchor(
    argv: list[str], timeout: float, *, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """One anchor as a subprocess printing one JSON object. Stopped by PID on timeout."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc, timeout=15)  # SIGTERM: the anchor's finally blocks stop its own children
        return {"status": "timeout", "timeout_s": timeout}
    finally:
        stop(proc)
    wall = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        return {"status": "failed", "returncode": proc.returncode, "stderr": err.strip()[-2000:]}
    result = last_json_object(out)
    if result is None:
        return {
            "status": "failed",
            "error": "no JSON object on stdout",
            "stdout": out[-2000:],
            "stderr": err[-2000:],
        }
    return {"status": "ok", "wall_s": wall, **result}


def anchors(duration: float) -> dict[str, Any]:
    """name -> zero-argument callable giving that anchor's result dict."""
    d = str(duration)
    py = sys.executable

    def libp2p() -> dict[str, Any]:
        if not LIBP2P_PYTHON.exists():
            return {
                "status": "not available",
                "reason": "no benchmarks/.venv-libp2p: run sh benchmarks/setup.sh",
            }
        return run_anchor(
            [str(LIBP2P_PYTHON), str(ANCHORS / "libp2p_bench.py"), "--duration", d],
            timeout=4 * duration + 180,
        )

    return {
        "iperf3": lambda: run_anchor(
            [py, str(ANCHORS / "iperf3_udp.py"), "--duration", d], timeout=2 * duration + 60
        ),
        "asyncio": lambda: run_anchor(
            [py, str(ANCHORS / "asyncio_udp.py"), "--duration", d], timeout=2 * duration + 60
        ),
        "libp2p": libp2p,
        "coremesh": lambda: measure_coremesh(duration),
    }


# (anchor, metric, path into its result, unit): the printed table. Missing figures are left out.
RX_CPU = "% of a core (receiver)"  # ~100: the receiver had a core to itself; much less: starved
TABLE: list[tuple[str, str, tuple[str, ...], str]] = [
    *[
        row
        for size in (1200, 65000)
        for row in [
            ("iperf3", f"iperf3 UDP {size} B", (f"udp_{size}", "mbit_per_s"), "Mbit/s"),
            ("iperf3", f"iperf3 UDP {size} B", (f"udp_{size}", "datagrams_per_s"), "datagrams/s"),
            ("iperf3", f"iperf3 UDP {size} B", (f"udp_{size}", "loss_percent"), "% loss"),
            ("iperf3", f"iperf3 UDP {size} B", (f"udp_{size}", "receiver_cpu_percent"), RX_CPU),
        ]
    ],
    *[
        row
        for size in (1200, 64)
        for row in [
            ("asyncio", f"asyncio UDP {size} B", (f"udp_{size}", "datagrams_per_s"), "datagrams/s"),
            ("asyncio", f"asyncio UDP {size} B", (f"udp_{size}", "mbit_per_s"), "Mbit/s"),
            ("asyncio", f"asyncio UDP {size} B", (f"udp_{size}", "loss_percent"), "% loss"),
            ("asyncio", f"asyncio UDP {size} B", (f"udp_{size}", "receiver_cpu_percent"), RX_CPU),
        ]
    ],
    ("libp2p", "libp2p 1 stream throughput", ("throughput", "mb_per_s"), "MB/s"),
    ("libp2p", "libp2p 1 stream throughput", ("throughput", "receiver_cpu_percent"), RX_CPU),
    ("libp2p", "libp2p 64 B messages", ("msgs_64", "msgs_per_s"), "msgs/s"),
    ("libp2p", "libp2p 64 B messages", ("msgs_64", "receiver_cpu_percent"), RX_CPU),
    ("libp2p", "libp2p connect (as shipped)", ("connect", "raw", "median_ms"), "ms (median)"),
    ("libp2p", "libp2p connect (no dial delay)", ("connect", "no_dial_delay", "median_ms"), "ms (median)"),
    ("libp2p", "libp2p RSS per connection", ("rss", "kib_per_connection"), "KiB"),
    ("coremesh", "coremesh 1200 B", ("udp_1200", "datagrams_per_s"), "datagrams/s"),
    ("coremesh", "coremesh 1200 B", ("udp_1200", "mbit_per_s"), "Mbit/s"),
    ("coremesh", "coremesh with PMTU discovery", ("udp_pmtu", "mb_per_s"), "MB/s"),
    ("coremesh", "coremesh with PMTU discovery", ("udp_pmtu", "datagram_size"), "bytes/datagram"),
    ("coremesh", "coremesh 64 B messages", ("msgs_64", "msgs_per_s"), "msgs/s"),
    ("coremesh", "coremesh connect", ("connect", "median_ms"), "ms (median)"),
    ("coremesh", "coremesh connect", ("connect", "p95_ms"), "ms (p95)"),
    ("coremesh", "coremesh RSS per connection", ("rss", "kib_per_connection"), "KiB"),
]


def rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, Any, str]]:
    """The table's rows: (metric, value, unit)."""
    out: list[tuple[str, Any, str]] = []
    for name, r in results.items():
        if r.get("status") != "ok":
            out.append((name, r.get("status"), str(r.get("reason", r.get("error", "")))[:70]))
            continue
        for anchor, metric, path, unit in TABLE:
            v: Any = r
            for key in path:
                v = v.get(key) if isinstance(v, dict) else None
            if anchor == name and v is not None:
                out.append((metric, v, unit))
        if "other_cpu_percent" in r:
            out.append((f"{name}: other processes' CPU meanwhile", r["other_cpu_percent"], "% of all cores"))
    return out


# (label, numerator path, denominator path): coremesh as a ratio to its anchor, from the same run.
RATIOS: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    (
        "1200 B throughput / iperf3 UDP 1200 B",
        ("coremesh", "udp_1200", "mbit_per_s"),
        ("iperf3", "udp_1200", "mbit_per_s"),
    ),
    (
        "1200 B throughput / bare asyncio UDP",
        ("coremesh", "udp_1200", "mbit_per_s"),
        ("asyncio", "udp_1200", "mbit_per_s"),
    ),
    (
        "PMTU throughput / py-libp2p stream",
        ("coremesh", "udp_pmtu", "mb_per_s"),
        ("libp2p", "throughput", "mb_per_s"),
    ),
    ("64 B msgs/s / py-libp2p", ("coremesh", "msgs_64", "msgs_per_s"), ("libp2p", "msgs_64", "msgs_per_s")),
    (
        "64 B msgs/s / bare asyncio 64 B datagrams",
        ("coremesh", "msgs_64", "msgs_per_s"),
        ("asyncio", "udp_64", "datagrams_per_s"),
    ),
    (
        "connect ms / py-libp2p (no dial delay)",
        ("coremesh", "connect", "median_ms"),
        ("libp2p", "connect", "no_dial_delay", "median_ms"),
    ),
    (
        "RSS per connection / py-libp2p",
        ("coremesh", "rss", "kib_per_connection"),
        ("libp2p", "rss", "kib_per_connection"),
    ),
]


def ratios(results: dict[str, dict[str, Any]]) -> list[tuple[str, float]]:
    out = []
    for label, num_path, den_path in RATIOS:
        values = []
        for path in (num_path, den_path):
            v: Any = results
            for key in path:
                v = v.get(key) if isinstance(v, dict) else None
            values.append(v)
        num, den = values
        if isinstance(num, int | float) and isinstance(den, int | float) and den:
            out.append((label, round(num / den, 2)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds measured per transfer (default 5)")
    ap.add_argument("--only", default="", help="comma-separated: iperf3, asyncio, libp2p, coremesh")
    ap.add_argument("--base", default="", help="also measure coremesh at this git commit (before/after)")
    ap.add_argument("--rounds", type=int, default=1, help="with --base: alternate base and head N times")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    exit_on_sigterm()  # so a stopped run still stops the anchor it is running

    table = anchors(args.duration)
    chosen = [n.strip() for n in args.only.split(",") if n.strip()] or list(table)
    unknown = [n for n in chosen if n not in table]
    if unknown:
        ap.error(f"unknown anchor(s) {unknown}; choose from {list(table)}")
    base_dir: tempfile.TemporaryDirectory[str] | None = None
    if args.base:
        base_dir = tempfile.TemporaryDirectory(prefix="coremesh-base-")
        try:
            base_tree = extract_ref(args.base, Path(base_dir.name))
        except subprocess.CalledProcessError as e:
            ap.error(f"--base {args.base}: git archive failed: {(e.stderr or b'').decode().strip()}")
        base_name = f"coremesh@{args.base}"
        head_runs: list[dict[str, Any]] = []
        base_runs: list[dict[str, Any]] = []

        def head_and_base() -> dict[str, Any]:
            for _ in range(args.rounds):
                base_runs.append(measure_coremesh_tree(base_tree, args.duration))
                head_runs.append(measure_coremesh_tree(ROOT, args.duration))
            return median_result(head_runs)

        table["coremesh"] = head_and_base
        table[base_name] = lambda: median_result(base_runs)
        if "coremesh" not in chosen:
            chosen.append("coremesh")
        chosen.insert(chosen.index("coremesh") + 1, base_name)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    report: dict[str, Any] = {
        "benchmark": "transport",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "duration_s": args.duration,
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "results": {},
    }
    for name in chosen:
        print(f"[{name}] running ...", file=sys.stderr)
        t0, busy0, own0 = time.perf_counter(), machine_busy_s(), own_cpu_s()
        try:
            result = table[name]()
        except Exception as e:  # one broken anchor must not lose the others
            result = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        wall, busy, own = time.perf_counter() - t0, machine_busy_s() - busy0, own_cpu_s() - own0
        result.setdefault("status", "ok")
        # Other work on the machine skews every figure here: record how much CPU it took meanwhile
        # (machine-wide busy time minus this run's own processes, as a share of all cores; /proc/stat
        # counts in 10 ms ticks, so only for runs of a second or more).
        if wall >= 1.0:
            result["other_cpu_percent"] = round(
                max(0.0, busy - own) / (wall * (os.cpu_count() or 1)) * 100, 1
            )
        report["results"][name] = result
        other = result.get("other_cpu_percent", "-")
        print(f"[{name}] {result['status']}; other processes' CPU meanwhile: {other} %", file=sys.stderr)

    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"transport-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")

    table_rows = rows(report["results"])
    w = max([len(m) for m, _, _ in table_rows] + [6])
    print(f"{'metric':<{w}}  {'value':>12}  unit")
    for metric, value, unit in table_rows:
        print(f"{metric:<{w}}  {value!s:>12}  {unit}")
    ratio_rows = ratios(report["results"])
    if ratio_rows:
        report["ratios"] = dict(ratio_rows)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print("\ncoremesh as a ratio to its anchor, same run:")
        w = max(len(label) for label, _ in ratio_rows)
        for label, value in ratio_rows:
            print(f"  {label:<{w}}  {value:>8}")
    if args.base:
        base = report["results"].get(f"coremesh@{args.base}", {})
        head = report["results"].get("coremesh", {})
        print(f"\nhead / {args.base}, medians of {args.rounds} alternating round(s) (ms: lower is better):")
        compared = {}
        for _anchor, metric, key_path, unit in TABLE:
            if _anchor != "coremesh":
                continue
            pair = []
            for r in (head, base):
                v: Any = r
                for key in key_path:
                    v = v.get(key) if isinstance(v, dict) else None
                pair.append(v)
            h, b = pair
            if isinstance(h, int | float) and isinstance(b, int | float) and b:
                label = f"{metric} ({unit})"
                compared[label] = {"head": h, "base": b, "ratio": round(h / b, 3)}
                print(f"  {label:<48} head {h!s:>10}  base {b!s:>10}  ratio {h / b:6.3f}")
        report["head_vs_base"] = {"base": args.base, "rounds": args.rounds, "metrics": compared}
        path.write_text(json.dumps(report, indent=2) + "\n")
    if base_dir is not None:
        base_dir.cleanup()
    print(f"\nwritten: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
