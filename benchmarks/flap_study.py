"""The flap study: how often a check's per-seed verdict differs from its majority verdict, per candidate.

    harness run suites/smoke.toml --seeds 0,1,2,3,4,5,6,7,8,9 --out reports/flap
    python benchmarks/flap_study.py reports/flap

Several report folders of one suite with disjoint seeds are read as one run (e.g. seeds 0-2 from the shipped
suite's run, 3-9 from `--seeds 3,...,9`): python benchmarks/flap_study.py reports/a reports/b. They must hold the
same candidates with the same settings apart from the seed, or the script stops and says which differ.

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


def _static(check: str) -> bool:
    """A check run once before training (``stage = "static"``), per the registered plugin."""
    from harness.registry import registry

    try:
        return getattr(registry().get("checks", check).factory, "stage", "trained") == "static"
    except Exception:  # a check whose plugin is not installed here: treat it as per seed
        return False


def _settings(candidate: dict) -> dict:
    return {k: v for k, v in candidate["config"].items() if k != "seed"} | {"expect_fail": candidate.get("expect_fail")}


def merged(reports: list[tuple[str, dict]]) -> dict:
    """One report whose per-seed outcomes are those of every report (same suite, same candidates, disjoint seeds)."""
    first_name, first = reports[0]
    out = json.loads(json.dumps(first))
    by_name = {c["name"]: c for c in out["candidates"]}
    for name, report in reports[1:]:
        if report["suite"]["name"] != first["suite"]["name"]:
            raise SystemExit(f"{name}: suite {report['suite']['name']!r}, but {first_name} is {first['suite']['name']!r}")
        overlap = set(map(str, report["seeds"])) & set(map(str, out["seeds"]))
        if overlap:
            raise SystemExit(f"{name}: seeds {', '.join(sorted(overlap))} are already in an earlier folder; give each seed once")
        if sorted(c["name"] for c in report["candidates"]) != sorted(by_name):
            raise SystemExit(f"{name}: candidates differ from {first_name}'s")
        for c in report["candidates"]:
            mine = by_name[c["name"]]
            if _settings(c) != _settings(mine):
                raise SystemExit(f"{name}: candidate {c['name']!r} was trained or declared differently from {first_name}'s")
            if set(c["checks"]) != set(mine["checks"]):
                raise SystemExit(f"{name}: candidate {c['name']!r} ran other checks than in {first_name}")
            for check, o in c["checks"].items():
                if not _static(check):  # judged once per run, not per seed: the first folder's stays
                    mine["checks"][check].setdefault("per_seed", {}).update(o.get("per_seed") or {})
        out["seeds"] = list(out["seeds"]) + list(report["seeds"])
        if report["verdict"] != out["verdict"]:
            out["verdict"] = f"{out['verdict']} ({first_name}), {report['verdict']} ({name})"
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    report = merged([(folder, json.loads((Path(folder) / "report.json").read_text())) for folder in argv])
    print(f"seeds {', '.join(map(str, report.get('seeds', [])))}; verdict of the suite: {report['verdict']}\n")
    print("| candidate | check | majority | flap rate | minority seeds |")
    print("|---|---|---|---|---|")
    for cand, check, majority, n_min, n, seeds in flaps(report):
        print(f"| {cand} | {check} | {majority} | {n_min}/{n} | {seeds or '—'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
