"""The patience study: what early stopping costs the positive control, read on the dev split only.

    python benchmarks/patience_study.py [--seeds 0,1,2,3,4] [--out /tmp/patience-study]

Trains the smoke suite's `adapter` (cosine InfoNCE / 0.05, one hard negative from the frozen top 50, one positive
per query per epoch, lr grid 1e-4 / 3e-4 / 1e-3, 20 epochs) with early stopping off, per dataset and seed, and
replays each trial's dev NDCG@10 curve under patience 3, 5, 8, 10 and "never": the lr and epoch each would keep,
their dev NDCG@10 and the epochs trained. No test number is read or printed: this study chooses a protocol
setting, and test never selects (docs/gate.md, "The patience study").
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PATIENCES = (3, 5, 8, 10, 0)


def replay(curve: list[float], patience: int) -> tuple[int, float, int]:
    """(kept epoch, its dev NDCG@10, epochs trained) had the trial stopped after ``patience`` epochs without a
    better dev NDCG@10 (0: never), by harness/train.py's own rule."""
    from harness.train import patience_ran_out

    best = 0
    for epoch in range(1, len(curve)):
        if curve[epoch] > curve[best]:
            best = epoch
        if patience_ran_out(epoch, best, patience):
            return best, curve[best], epoch
    return best, curve[best], len(curve) - 1


def train(seed: int, out: Path) -> None:
    cmd = ["harness", "train", "--head", "adapter", "--loss", "infonce_cos", "--loss-option", "infonce_cos.temperature=0.05",
           "--lr-grid", "1e-4,3e-4,1e-3", "--patience", "0", "--epochs", "20", "--seed", str(seed), "--out", str(out)]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--out", type=Path, default=Path("/tmp/patience-study"))
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        if not (args.out / f"seed-{seed}" / "nfcorpus" / "telemetry.json").exists():
            train(seed, args.out / f"seed-{seed}")
    print("| dataset | patience | kept dev NDCG@10 per seed (lr, epoch) | mean | epochs trained (all trials) |")
    print("|---|---|---|---|---|")
    for dataset in ("scifact", "nfcorpus"):
        for patience in PATIENCES:
            kept, epochs = [], 0
            for seed in seeds:
                t = json.loads((args.out / f"seed-{seed}" / dataset / "telemetry.json").read_text())
                runs = [(tr["lr"], *replay(tr["dev_ndcg10"], patience)) for tr in t["protocol"]["trials"]]
                epochs += sum(r[3] for r in runs)
                lr, epoch, dev, _ = max(runs, key=lambda r: r[2])
                kept.append((dev, lr, epoch))
            cells = ", ".join(f"{d:.4f} ({lr:g}, {e})" for d, lr, e in kept)
            mean = sum(d for d, _, _ in kept) / len(kept)
            print(f"| {dataset} | {patience or 'never'} | {cells} | {mean:.4f} | {epochs} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
