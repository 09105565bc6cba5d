"""The flap study: how often a check's per-seed verdict differs from its majority verdict, per candidate.

    harness run suites/smoke.toml --seeds 0,1,2,3,4,5,6,7,8,9 --out reports/flap
    python benchmarks/flap_study.py reports/flap

A seed's verdict is "fails" (fail, xfail) or "holds" (pass, xpass; n/a is left out). The flap rate is the share
of seeds whose verdict differs from the majority; 0 means every seed agrees. Static checks run once and are
left out. Prints a markdown table.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def flaps(report: dict) -> list[tuple[str, str, str, int, int, str]]:
    rows = []
    for c in report["candidates"]:
        for name, o in c["checks"].items():
            per = o.get("per_seed") or {}
            if len(per) < 2:
                continue
            verdicts = [("fails" if v["outcome"] in ("fail", "xfail") else "holds") for v in per.values() if v["outcome"] != "n/a"]
            if not verdicts:
                continue
            majority = max(set(verdicts), key=verdicts.count)
            minority = [s for s, v in per.items() if v["outcome"] != "n/a" and
                        ("fails" if v["outcome"] in ("fail", "xfail") else "holds") != majority]
            declared = "declared" if name in c.get("expect_fail", {}) else ""
            rows.append((c["name"], name, majority, len(minority), len(verdicts), ",".join(minority) + (f" {declared}" if declared else "")))
    return rows


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    report = json.loads((Path(argv[0]) / "report.json").read_text())
    print(f"seeds {', '.join(map(str, report.get('seeds', [])))}; verdict of the suite: {report['verdict']}\n")
    print("| candidate | check | majority | flap rate | minority seeds |")
    print("|---|---|---|---|---|")
    for cand, check, majority, n_min, n, seeds in flaps(report):
        print(f"| {cand} | {check} | {majority} | {n_min}/{n} | {seeds or '—'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
