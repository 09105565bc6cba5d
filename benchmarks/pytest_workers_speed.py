"""The test suite serially against pytest-xdist (what `nox -s tests` runs), side by side, on a cold embedding cache.

    python benchmarks/pytest_workers_speed.py            # cold: each run starts from an empty cache (~20 min on 2 cores)
    python benchmarks/pytest_workers_speed.py --warm     # both read $HARNESS_CACHE_DIR as it is (~10 min)

CI starts from a fresh clone, so its test session encodes SciFact's and NFCorpus's corpora with MiniLM first (about
6 minutes of its 11 on 2 cores). Each run here is `python -m pytest -q -p no:cacheprovider` over tests/, serially
(`-n 0`) or with the noxfile's PYTEST_WORKERS; a cold run gets its own empty $HARNESS_CACHE_DIR, removed after.
Runs alternate (``--first``, serial by default, starts odd repetitions); it prints each run's wall time and pytest's summary line, then
the median ratio. Needs HARNESS_DATA_DIR and the models installed, like the suite.
"""
from __future__ import annotations

import argparse
import ast
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def noxfile_constant(name: str) -> list[str]:
    """A literal assigned in noxfile.py: the flags CI runs, read rather than copied (nox need not be installed)."""
    for node in ast.parse((ROOT / "noxfile.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit(f"noxfile.py assigns no {name}")


PYTEST_WORKERS = noxfile_constant("PYTEST_WORKERS")

MODES = {"serial": ["-n", "0"], "xdist": PYTEST_WORKERS}


def run(mode: str, warm: bool) -> tuple[float, str]:
    env = dict(os.environ)
    cache = None if warm else tempfile.mkdtemp(prefix="cold-cache-")
    if cache:
        env["HARNESS_CACHE_DIR"] = cache
    try:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *MODES[mode]],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
    finally:
        if cache:
            shutil.rmtree(cache, ignore_errors=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else f"no output (exit {proc.returncode})"
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-2000:], sep="\n", file=sys.stderr)
    return wall, summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--warm", action="store_true", help="use $HARNESS_CACHE_DIR as it is instead of an empty cache per run")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--first", choices=list(MODES), default="serial", help="the mode run first in odd repetitions")
    args = p.parse_args()
    print(f"{'warm' if args.warm else 'cold'} cache; xdist flags: {' '.join(PYTEST_WORKERS)}; {os.cpu_count()} CPUs", flush=True)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for rep in range(args.reps):
        order = sorted(MODES, key=lambda m: m != args.first)
        for mode in (order if rep % 2 == 0 else order[::-1]):
            wall, summary = run(mode, args.warm)
            times[mode].append(wall)
            print(f"rep {rep + 1} {mode:6s} {wall:7.1f} s  {summary}", flush=True)
    serial, xdist = statistics.median(times["serial"]), statistics.median(times["xdist"])
    print(f"median of {args.reps}: serial {serial:.1f} s, xdist {xdist:.1f} s: xdist takes {xdist / serial:.2f}x the serial "
          f"time ({serial / xdist:.2f}x faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
