"""A coverage-guided fuzzing campaign over every network decoder, with atheris (docs/fuzzing.md).

The targets are the table of ``tests/unit/test_fuzz_decoders.py`` (one per decoder: mesh packets,
handshake, STUN/TURN, keyed relay, DHT, routing, flood, reliability, path frames, and the server
cores that take datagrams from anyone). Each target runs in its own process (libFuzzer runs once per
process), with coremesh instrumented for coverage and the target's valid encodings as the seed
corpus. An exception other than the target's typed error, or a failed round trip, is a crash:
libFuzzer stops and the input is saved under ``--artifacts``.

    .venv/bin/pip install -e '.[fuzz]'          # atheris: not needed by the install or the tests
    .venv/bin/python benchmarks/fuzz_decoders.py [--decoder NAME ...] (--runs N | --seconds S) [--json]
    .venv/bin/python benchmarks/fuzz_decoders.py --list

The summary has one row per decoder: inputs tried, coverage (libFuzzer's ``cov``: edges of the
instrumented Python bytecode; ``ft``: features), corpus size, and crashes (0 or 1: the run stops at
the first). Exit status 1 if any decoder crashed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MAX_LEN = 2048


def child(name: str, corpus: str, libfuzzer_args: list[str]) -> None:
    """Fuzz one target in this process (never returns: libFuzzer exits)."""
    import atheris

    with atheris.instrument_imports(include=["coremesh"]):
        from tests.unit import test_fuzz_decoders as table

    target = table.BY_NAME[name]
    for i, seed in enumerate(table.seeds_of(name)):
        Path(corpus, f"seed-{i}").write_bytes(seed)

    def one_input(data: bytes) -> None:
        table.run(target, data)

    atheris.Setup([sys.argv[0], corpus, *libfuzzer_args], one_input)
    atheris.Fuzz()


_DONE = re.compile(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_STATUS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_UNITS = re.compile(r"stat::number_of_executed_units: (\d+)")


def campaign(name: str, runs: int | None, seconds: float | None, artifacts: Path) -> dict[str, object]:
    """Run one target in a child process; parse libFuzzer's report."""
    artifacts.mkdir(parents=True, exist_ok=True)
    args = [f"-max_len={MAX_LEN}", "-print_final_stats=1", f"-artifact_prefix={artifacts}/{name}-"]
    if runs is not None:
        args.append(f"-runs={runs}")
    if seconds is not None:
        args.append(f"-max_total_time={max(1, int(seconds))}")
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as corpus:
        cmd = [sys.executable, __file__, "--child", name, "--corpus", corpus, "--", *args]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ})
        elapsed = time.monotonic() - t0
    log = proc.stderr
    done = _DONE.findall(log) or _STATUS.findall(log)
    units = _UNITS.findall(log)
    tried = int(units[-1]) if units else (int(done[-1][0]) if done else 0)
    cov, ft, corp = (int(x) for x in done[-1][1:]) if done else (0, 0, 0)
    crashed = proc.returncode != 0
    crash_text = ""
    if crashed:
        start = log.find("=== Uncaught Python exception")
        crash_text = log[start : start + 3000] if start >= 0 else log[-3000:]
    return {
        "decoder": name,
        "inputs": tried,
        "cov": cov,
        "ft": ft,
        "corpus": corp,
        "crashes": int(crashed),
        "seconds": round(elapsed, 1),
        "crash": crash_text,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--decoder", action="append", help="a target name (repeatable; default: all)")
    parser.add_argument("--runs", type=int, help="inputs per decoder")
    parser.add_argument("--seconds", type=float, help="seconds per decoder")
    parser.add_argument("--artifacts", type=Path, default=Path(tempfile.gettempdir()) / "coremesh-fuzz")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--list", action="store_true", help="list the decoders and exit")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("libfuzzer", nargs="*", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        child(opts.child, opts.corpus, opts.libfuzzer)
        return 0

    from tests.unit.test_fuzz_decoders import BY_NAME, TARGETS

    if opts.list:
        print("\n".join(t.name for t in TARGETS))
        return 0
    names = opts.decoder or [t.name for t in TARGETS]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown decoder(s): {', '.join(unknown)} (see --list)")
    if opts.runs is None and opts.seconds is None:
        parser.error("give --runs N or --seconds S")
    try:
        import atheris  # noqa: F401
    except ImportError:
        parser.error("atheris is not installed: pip install -e '.[fuzz]'")

    rows = []
    for name in names:
        row = campaign(name, opts.runs, opts.seconds, opts.artifacts)
        rows.append(row)
        if not opts.json:
            print(
                f"{name:26} {row['inputs']:>10} inputs  cov {row['cov']:>5}  ft {row['ft']:>6}  "
                f"corpus {row['corpus']:>5}  crashes {row['crashes']}  {row['seconds']:>7}s",
                flush=True,
            )
            if row["crashes"]:
                print(row["crash"], flush=True)
    if opts.json:
        print(json.dumps(rows, indent=2))
    else:
        total = sum(int(r["inputs"]) for r in rows)  # type: ignore[call-overload]
        crashes = sum(int(r["crashes"]) for r in rows)  # type: ignore[call-overload]
        print(f"{'total':26} {total:>10} inputs  crashes {crashes}")
    return 1 if any(r["crashes"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
