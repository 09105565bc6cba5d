"""Per-seed statistics of one candidate's kept heads, from a report folder's telemetry.

    python benchmarks/seed_stats.py reports/smoke [adapter]

For every seed and dataset: the lr and epoch the protocol kept (of the epochs its trial ran), the test NDCG@10,
the mean per-query gain over the frozen encoder, the one-sided paired sign-flip p (10,000 permutations, as
`beats_baseline` computes it) and the minimum detectable effect at alpha 0.05 and 80% power. `beats_baseline`
itself judges the seed-averaged per-query scores; this prints what each seed alone would show.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from harness.plugins.checks._stats import mde, sign_flip_test


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    report = Path(argv[0])
    candidate = argv[1] if len(argv) > 1 else "adapter"
    print("| seed | dataset | lr (dev) | kept epoch / trained | NDCG@10 (frozen) | gain | one-sided p | MDE |")
    print("|---|---|---|---|---|---|---|---|")
    seeds = sorted(int(p.name.split("-")[1]) for p in report.glob("seed-*"))
    for dataset in ("scifact", "nfcorpus"):
        for seed in seeds:
            path = report / f"seed-{seed}" / "runs" / candidate / dataset / "telemetry.json"
            if not path.is_file():
                continue
            t = json.loads(path.read_text())
            rec = next(e for e in t["epochs"] if e["epoch"] == t["selected"])
            cand, base = rec["per_query_ndcg10"][dataset], t["baseline_per_query_ndcg10"][dataset]
            diff = np.array([cand.get(q, 0.0) - base[q] for q in sorted(base)])
            gain, p = sign_flip_test([diff])
            trial = next(tr for tr in t["protocol"]["trials"] if tr["lr"] == t["protocol"]["lr"])
            print(f"| {seed} | {dataset} | {t['protocol']['lr']:g} | {t['selected']} / {trial['epochs_run']} | "
                  f"{rec['ndcg10'][dataset]:.4f} ({t['baseline_ndcg10'][dataset]:.4f}) | {gain:+.4f} | {p:.4f} | {mde(diff):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
