"""RankMe per epoch as a share of the frozen encoder's, per candidate, over a gate run's seeds and datasets.

    python benchmarks/rankme_trajectory.py reports/flap8b [--candidate asym-dot,respred-seed004,asym-cos]

Reads each trained head's telemetry.json (``<report>/seed-N/runs/<candidate>/<unit>/telemetry.json``, or
``<report>/runs/...`` for a one-seed run) and prints, per candidate, the range over seeds x datasets of the
untrained head (epoch 0), epochs 1 and 5, the lowest trained epoch (what ``no_collapse`` judges) and the last epoch:
the table in docs/gate.md's flap study.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def ratios(telemetry: Path) -> list[float]:
    t = json.loads(telemetry.read_text())
    base = t["baseline_rankme"]
    return [e["rankme"] / base for e in t["epochs"] if e.get("rankme")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("report", type=Path)
    p.add_argument("--candidate", default="asym-dot,respred-seed004,asym-cos")
    args = p.parse_args()
    print("| candidate | untrained (epoch 0) | epoch 1 | epoch 5 | lowest trained | last | heads |")
    print("|---|---|---|---|---|---|---|")
    for name in args.candidate.split(","):
        files = sorted(args.report.glob(f"seed-*/runs/{name}/*/telemetry.json")) or \
            sorted(args.report.glob(f"runs/{name}/*/telemetry.json"))
        curves = [r for r in (ratios(f) for f in files) if len(r) > 1]
        if not curves:
            print(f"| {name} | no trained head in {args.report} | | | | | 0 |")
            continue

        def span(values: list[float]) -> str:
            return f"{min(values):.0%}-{max(values):.0%}"

        print(f"| {name} | {span([c[0] for c in curves])} | {span([c[1] for c in curves])} | "
              f"{span([c[5] for c in curves if len(c) > 5])} | "
              f"{span([min(c[1:]) for c in curves])} | {span([c[-1] for c in curves])} | {len(curves)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
