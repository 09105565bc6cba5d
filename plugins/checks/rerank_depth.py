"""rerank_depth: the head does not get worse as it scores more candidates (seed 003, "Drowning in Documents")."""
from __future__ import annotations

from harness import hookimpl
from harness.checks import BaseCheck, need_run


class RerankDepth(BaseCheck):
    name = "rerank_depth"
    description = "NDCG@10 does not fall as the head scores more candidates (frozen top 10 -> 100 -> 1000 -> corpus)"
    defaults = {
        "max_rel_drop": 0.03,  # (best shallower depth - whole corpus) / best, per dataset
        "min_abs_drop": 0.005,  # a smaller absolute fall is query noise
    }
    cause = (
        "the head's scores only hold near the frozen encoder's neighbourhood: documents it never saw in training "
        "outrank the true positives once it scores deeper candidate lists (seed 003, 'Drowning in Documents', "
        "arXiv 2411.11767: rerankers got worse as they scored more candidates)"
    )
    fix = (
        "train with hard negatives mined deep in the frozen ranking (not only in-batch ones), or deploy the head as a "
        "reranker of the frozen top k with k fixed, and gate that depth"
    )

    def run(self, candidate, max_rel_drop=0.03, min_abs_drop=0.005):
        run = need_run(self, candidate)
        last = run.selected_epoch  # the head the protocol keeps (chosen on dev): the one that would be deployed
        if not last.rerank_ndcg10:
            return self.not_applicable("the run records no reranking-depth NDCG@10 (no eval datasets)")
        curves = {}
        for dataset, by_depth in sorted(last.rerank_ndcg10.items()):
            points = sorted(((int(k), v) for k, v in by_depth.items()), key=lambda kv: kv[0])
            curves[dataset] = [(f"top {k}", v) for k, v in points] + [("corpus", last.ndcg10[dataset])]
        details = {"curves": {d: dict(c) for d, c in curves.items()}}
        worst = None
        for dataset, curve in curves.items():
            label, best = max(curve[:-1], key=lambda kv: kv[1])
            full = curve[-1][1]
            drop = (best - full) / best if best > 0 else 0.0
            if drop > max_rel_drop and best - full > min_abs_drop and (worst is None or drop > worst[2]):
                worst = (dataset, label, drop, best, full)
        if worst:
            dataset, label, drop, best, full = worst
            trail = " -> ".join(f"{lbl} {v:.4f}" for lbl, v in curves[dataset])
            return self.failed(
                f"{dataset} NDCG@10 falls {drop:.1%} as the head scores more candidates, from {best:.4f} reranking the "
                f"frozen {label} to {full:.4f} over the whole corpus ({trail}; bound {max_rel_drop:.1%}, falls under "
                f"{min_abs_drop} ignored)", drop, max_rel_drop, last.epoch, dataset=dataset, **details)
        summary = "; ".join(f"{d}: " + " -> ".join(f"{v:.4f}" for _, v in c) for d, c in curves.items())
        return self.passed(f"NDCG@10 by depth (top 10 -> 100 -> 1000 -> corpus) {summary}", None, max_rel_drop, last.epoch, **details)


@hookimpl
def register_checks(register):
    check = RerankDepth()
    register("rerank_depth", check, description=check.description)
