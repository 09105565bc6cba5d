"""The report's plots, here and at an earlier commit, side by side: the same 8 runs drawn by each side's
`harness.report.plot_candidate`.

    python benchmarks/plot_speed.py reports/smoke [--old 7312bf0] [--repeat 3]

Reads seed 0's runs of adapter, asym-dot, asym-cos and respred-seed004 (SciFact and NFCorpus heads) from the
report folder; each side runs in its own process from its own checkout (benchmarks/_checkout.py), draws one
warm-up plot, then times the 8. Prints the median seconds of each side and the ratio.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from _checkout import ROOT, checkout, run_in

CHILD = r"""
import json, statistics, sys, tempfile, time
from pathlib import Path
from types import SimpleNamespace
from harness.telemetry import load_run
from harness.report import plot_candidate
report, repeat = Path(sys.argv[1]), int(sys.argv[2])
runs = [load_run(report / "seed-0" / "runs" / c / d / "telemetry.json")
        for c in ("adapter", "asym-dot", "asym-cos", "respred-seed004") for d in ("scifact", "nfcorpus")]
out = Path(tempfile.mkdtemp())
plot_candidate(SimpleNamespace(name="warm", outcomes={}, run=runs[0]), out / "warm.png")
times = []
for _ in range(repeat):
    t = time.perf_counter()
    for i, run in enumerate(runs):
        plot_candidate(SimpleNamespace(name=f"c{i}", outcomes={}, run=run), out / f"c{i}.png")
    times.append(time.perf_counter() - t)
print(json.dumps(statistics.median(times)))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report", type=Path)
    p.add_argument("--old", default="7312bf0")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    report = args.report.resolve()
    old = json.loads(run_in(checkout(args.old), CHILD, str(report), str(args.repeat)))
    new = json.loads(run_in(ROOT, CHILD, str(report), str(args.repeat)))
    print(f"8 plots: {args.old} {old:.2f} s, HEAD {new:.2f} s, {old / new:.1f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
