"""Are two gate runs' verdicts and numbers identical? Compares two report folders (or report.json files).

    python benchmarks/compare_reports.py reports/before reports/after

For every candidate both reports hold: the verdict, each check's outcome, measured value and message (numbers
included) per seed, and the kept NDCG@10 per dataset and seed. Prints each difference and a last line "identical: N candidates, M checks"
or "DIFFERENT: K differences"; exits 1 when anything differs. Timings, paths and dates are not compared.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def load(path: str) -> dict:
    p = Path(path)
    return json.loads((p / "report.json" if p.is_dir() else p).read_text())


def numbers(report: dict) -> dict[str, dict]:
    out = {}
    for c in report["candidates"]:
        checks = {}
        for name, check in c["checks"].items():
            per_seed = check.get("per_seed") or {}
            checks[name] = {
                "outcome": check.get("outcome"),
                "measured": check.get("measured"),
                "message": check.get("message"),
                "per_seed": {s: (o.get("outcome"), o.get("measured"), o.get("message")) for s, o in per_seed.items()},
            }
        out[c["name"]] = {"passed": c.get("passed"), "ndcg10_by_seed": c.get("ndcg10_by_seed"), "checks": checks}
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    a, b = (numbers(load(p)) for p in argv)
    diffs, n_checks = [], 0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            diffs.append(f"{name}: only in {'the first' if name in a else 'the second'} report")
            continue
        x, y = a[name], b[name]
        for key in ("passed", "ndcg10_by_seed"):
            if x[key] != y[key]:
                diffs.append(f"{name}: {key} {x[key]} != {y[key]}")
        for check in sorted(set(x["checks"]) | set(y["checks"])):
            n_checks += 1
            cx, cy = x["checks"].get(check), y["checks"].get(check)
            if cx != cy:
                diffs.append(f"{name} / {check}: {cx} != {cy}")
    for d in diffs:
        print(d)
    if diffs:
        print(f"DIFFERENT: {len(diffs)} differences")
        return 1
    print(f"identical: {len(a)} candidates, {n_checks} checks (verdicts, per-seed outcomes and measured values, kept NDCG@10)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
