"""Where a gate run's wall time went, by phase, from its report folder.

    python benchmarks/phase_times.py reports/smoke [reports/smoke-gpu ...]

Phases: ``load`` (embeddings from the cache or the encoder, hard-negative mining, judgements), ``train_steps``
(forward, backward and optimiser steps), ``evaluate`` (every epoch's retrieval on the eval and dev splits,
reranking depths, RankMe/uniformity and the probe), summed over candidates, seeds and units from each
``runs/**/telemetry.json``; ``checks`` (every check's own time beyond training) and the run's total wall
time from ``report.json``. Several folders print side by side (e.g. the same suite on CPU and on a GPU).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def phases(folder: Path) -> dict[str, float]:
    out = {"load": 0.0, "train_steps": 0.0, "evaluate": 0.0}
    units = 0
    for path in sorted(folder.glob("**/runs/**/telemetry.json")):
        seconds = json.loads(path.read_text()).get("protocol", {}).get("seconds", {})
        for k in out:
            out[k] += float(seconds.get(k, 0.0))
        units += 1
    report = json.loads((folder / "report.json").read_text())
    trained = sum(float(c.get("train_seconds") or 0.0) for c in report.get("candidates", []))
    checks = 0.0
    for c in report.get("candidates", []):
        for o in (c.get("checks") or c.get("outcomes") or {}).values():
            if isinstance(o, dict):
                checks += float(o.get("seconds") or 0.0)
    out["checks (beyond training)"] = max(checks - trained, 0.0)
    out["total wall"] = float(report.get("seconds") or 0.0)
    out["units trained"] = units
    out["device"] = report.get("device", "?")
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    cols = {a: phases(Path(a)) for a in argv}
    keys = list(next(iter(cols.values())))
    width = max(len(k) for k in keys)
    print(f"{'phase':<{width}}  " + "  ".join(f"{Path(a).name:>16}" for a in argv))
    for k in keys:
        cells = []
        for a in argv:
            v = cols[a][k]
            cells.append(f"{v:>16.1f}" if isinstance(v, float) else f"{str(v):>16}")
        print(f"{k:<{width}}  " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
