"""A gate run serially and with ``--workers auto``, side by side on this machine: wall time and equal numbers.

    HARNESS_DATA_DIR=../shared/data/beir python benchmarks/workers_speed.py [--suite suites/smoke.toml]
        [--seeds 0,1,2] [--candidate a,b] [--reps 1] [--out /tmp/workers_speed]

Times, as whole processes (imports included), for each repetition in alternating order:

    python -m harness run SUITE [--seeds ...] [--candidate ...] --workers 1    --no-github-summary --out ...
    python -m harness run SUITE [--seeds ...] [--candidate ...] --workers auto --no-github-summary --out ...

and prints each wall time, the median ratio serial / auto, what ``auto`` resolved to here, and whether the two
reports hold the same verdicts, per-seed outcomes, measured values and kept NDCG@10
(``benchmarks/compare_reports.py``); exits 1 when they differ. Warm: both read ``$HARNESS_CACHE_DIR``; a run
that had to encode or mine is not warm (run the gate once first). The load average is printed before each run:
another job on the machine makes the parallel run gain less.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from compare_reports import load, numbers  # noqa: E402


def run_gate(args: argparse.Namespace, workers: str, out: Path) -> float:
    cmd = [sys.executable, "-m", "harness", "run", args.suite, "--workers", workers, "--no-github-summary",
           "--no-progress", "--out", str(out)]
    if args.seeds:
        cmd += ["--seeds", args.seeds]
    if args.candidate:
        cmd += ["--candidate", args.candidate]
    print(f"load {os.getloadavg()[0]:.1f}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if done.returncode not in (0, 1):  # 1 is a red gate: still a timed, comparable run
        sys.exit(f"the gate exited {done.returncode}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
    print(f"  {wall:.1f} s (exit {done.returncode})", flush=True)
    return wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--suite", default="suites/smoke.toml")
    p.add_argument("--seeds", help="default: the suite's")
    p.add_argument("--candidate", help="default: every candidate")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--out", default="/tmp/workers_speed")
    args = p.parse_args()

    sys.path.insert(0, str(ROOT))
    from harness import fanout
    from harness.suite import load_suite

    suite = load_suite(args.suite)
    names = args.candidate.split(",") if args.candidate else [c.name for c in suite.candidates]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(suite.seeds or [suite.seed])
    auto = fanout.resolve_workers("auto", "local", len(names) * len(seeds), suite.device, 1)
    print(f"{len(names)} candidates x {len(seeds)} seeds = {len(names) * len(seeds)} jobs; --workers auto is {auto} here "
          f"({os.cpu_count()} CPUs)")
    times: dict[str, list[float]] = {"1": [], "auto": []}
    for rep in range(args.reps):
        order = ["1", "auto"] if rep % 2 == 0 else ["auto", "1"]
        for w in order:
            times[w].append(run_gate(args, w, Path(args.out) / f"w{w}-{rep}"))
    serial, par = statistics.median(times["1"]), statistics.median(times["auto"])
    print(f"serial {serial:.1f} s, --workers auto ({auto}) {par:.1f} s: {serial / par:.2f}x (medians of {args.reps})")
    a, b = (numbers(load(str(Path(args.out) / f"w{w}-0"))) for w in ("1", "auto"))
    same = a == b
    print("reports: identical verdicts, per-seed outcomes, measured values and kept NDCG@10" if same else
          "reports: DIFFERENT (python benchmarks/compare_reports.py shows where)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
