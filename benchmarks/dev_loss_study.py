"""Does the held-out loss see what no_degradation sees? Dev NDCG@10 and the loss on dev pairs, kept head vs last.

    python benchmarks/dev_loss_study.py reports/final19 reports/final19b [--candidate asym-cos,respred-seed004]

For each per-dataset head a gate run stored (``<report>/seed-N/runs/<candidate>/<unit>/``: ``head.safetensors``,
the epoch dev selection kept, and ``head_last.safetensors``, the last epoch trained), it prints the unit's dev
NDCG@10 curve from the kept epoch to the last (telemetry.json) and the candidate's training loss on the unit's
dev queries, measured from both weight files: one pair per dev query (its most relevant judged document, ties by
id), in-batch negatives, batches of 64 in query-id order, the head in eval mode. It draws no random numbers.

Seed 004's lesson is "validation loss improved while NDCG@10 fell"; an overfitting head's held-out loss rises
with its fall. A fall that ``no_degradation`` would flag (> 3% and > 0.005) is marked FALL. Needs the warm
MiniLM cache (embeddings, mined negatives) and HARNESS_DATA_DIR; a head plugin the run used must be installed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from harness import telemetry as tm
from harness.components import build_loss
from harness.config import TrainConfig
from harness.measure import combine
from harness.protocol import DevQueries, Unit, build_unit
from harness.train import load_head


def dev_pairs(dev: DevQueries) -> tuple[torch.Tensor, torch.Tensor]:
    """Each dev query with its most relevant judged document (ties: the smallest id)."""
    where = {d: i for i, d in enumerate(dev.doc_ids)}
    qi, di = [], []
    for i, q in enumerate(dev.ids):
        judged = sorted((-r, d) for d, r in dev.qrels.get(q, {}).items() if r > 0 and d in where)
        if judged:
            qi.append(i)
            di.append(where[judged[0][1]])
    return dev.emb[qi], dev.docs[di]


@torch.no_grad()
def loss_on(head, losses: dict, stage: dict, q: torch.Tensor, d: torch.Tensor, batch_size: int = 64) -> float:
    total, batches = 0.0, 0
    for start in range(0, len(q), batch_size):
        if len(q[start : start + batch_size]) < 2:
            break
        value, _ = combine(losses, stage, head(q[start : start + batch_size], d[start : start + batch_size]))
        total, batches = total + float(value), batches + 1
    return total / batches


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("reports", type=Path, nargs="+")
    p.add_argument("--candidate", default="", help="comma-separated names (default: every trained candidate)")
    args = p.parse_args()
    wanted = set(filter(None, args.candidate.split(",")))
    devs: dict[tuple, list[DevQueries]] = {}
    print("| seed | candidate | head | kept epoch: dev NDCG@10 | last epoch | fall | dev loss, kept -> last | |")
    print("|---|---|---|---|---|---|---|---|")
    for report in args.reports:
        for unit_dir in sorted(report.glob("seed-*/runs/*/*")):
            if wanted and unit_dir.parent.name not in wanted or not (unit_dir / "head_last.safetensors").exists():
                continue
            run = tm.load_run(unit_dir / "telemetry.json")
            config = TrainConfig.from_dict(run.config)
            if not config.losses or run.selected is None:
                continue
            key = (config.seed, unit_dir.name, config.dev_fraction)
            if key not in devs:
                unit = Unit(unit_dir.name, [unit_dir.name], [unit_dir.name])
                devs[key] = build_unit(config, unit, torch.Generator().manual_seed(config.seed))[1]
            q, d = dev_pairs(devs[key][0])
            losses = {name: build_loss(name, spec) for name, spec in config.losses.items()}
            kept, last = (loss_on(load_head(unit_dir / f), losses, config.losses, q, d)
                          for f in ("head.safetensors", "head_last.safetensors"))
            curve = {e.epoch: e.dev_ndcg10[unit_dir.name] for e in run.epochs if e.dev_ndcg10}
            peak = max(curve, key=lambda e: curve[e])
            end = max(curve)
            fall = (curve[peak] - curve[end]) / curve[peak]
            flag = "FALL" if fall > 0.03 and curve[peak] - curve[end] > 0.005 else ""
            trend = "rose" if last > kept else "fell" if last < kept else "equal"
            print(f"| {unit_dir.parent.parent.parent.name.removeprefix('seed-')} | {unit_dir.parent.name} | {unit_dir.name} "
                  f"| {peak}: {curve[peak]:.4f} | {end}: {curve[end]:.4f} | {fall:.1%} {flag} | {kept:.4g} -> {last:.4g} "
                  f"| {trend} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
