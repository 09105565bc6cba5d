"""changes_ranking: a trained head changes the frozen encoder's ranking; a head that does nothing fails.

Judged on the epoch the training protocol selected (on its dev split), whatever the head reports about itself
(``aux``: alpha, delta, correction): it fails when, on every evaluation dataset, the head's top 10 is the
frozen encoder's top 10 (mean top-10 overlap >= ``min_overlap``) and its NDCG@10 equals the frozen encoder's
within noise (|mean per-query difference| below the larger of the dataset's minimum detectable effect and
``ndcg_tol``). A head trained for some epochs of which the dev split selected epoch 0 is judged at epoch 0:
the untrained head is then what would be shipped. Not applicable to a head with no trainable parameters (the
identity) or a run that trained no epoch.
"""
from __future__ import annotations

import numpy as np

from harness import hookimpl
from harness.checks import BaseCheck, fmt, is_finite, named_epoch, need_run
from harness.registry import get

from ._stats import mde, paired
from .beats_baseline import judged_epoch


def _trainable_head(config: dict) -> bool:
    head = config.get("head")
    if head == "identity":
        return False
    try:

        factory = get("heads", head).factory  # type: ignore[arg-type]  # no head: get() raises, caught below
    except Exception:  # an unknown or unloadable head: let the telemetry speak
        return True
    return bool(getattr(factory, "trainable", True))


class ChangesRanking(BaseCheck):
    name = "changes_ranking"
    scope = "candidate"  # "does nothing" means: on every dataset
    description = "the trained head ranks differently from the frozen encoder (a head that does nothing fails)"
    defaults = {
        "min_overlap": 0.999,  # mean top-10 overlap with the frozen encoder at or above this counts as "same ranking"
        "ndcg_tol": 0.001,  # |NDCG@10 - frozen| below max(this, the dataset's MDE) counts as "same NDCG@10"
        "alpha": 0.05,  # for the MDE (one-sided, normal approximation)
        "power": 0.8,
        "epoch": "selected",  # "selected" (chosen on the dev split; default) or "last"
    }
    cause = (
        "the head's output ranks exactly like its input: e.g. a residual gate (alpha) that never opens, a correction "
        "too small to reorder any top 10, a last layer that gets no gradient, or an objective the identity already "
        "minimises (seed 004: the ResPred correction shrank towards zero while its validation loss improved)"
    )
    fix = (
        "let the correction matter: initialise the gate open (alpha not ~0, no tanh bound), drop penalties that reward "
        "the identity (residual_l2), check gradients reach the head's parameters, select the epoch on dev NDCG@10 "
        "rather than the loss; or drop the head, which then only adds cost"
    )

    def run(self, candidate, min_overlap=0.999, ndcg_tol=0.001, alpha=0.05, power=0.8, epoch="selected"):
        run = need_run(self, candidate)
        if not _trainable_head(run.config):
            return self.not_applicable(f"head {run.config.get('head')!r} has no trainable parameters")
        if not run.trained:
            return self.not_applicable("the head was not trained (the run has only epoch 0)")
        rec, which = judged_epoch(run, epoch, self.name)
        datasets = list(run.config.get("eval") or rec.top10_overlap or rec.ndcg10)
        per = {}
        for ds in datasets:
            overlap = rec.top10_overlap.get(ds)
            if not is_finite(overlap):
                continue
            r = {"top10_overlap": float(overlap), "ndcg10": rec.ndcg10.get(ds), "baseline": run.baseline_ndcg10.get(ds)}
            cand_pq, base_pq = rec.per_query_ndcg10.get(ds), run.baseline_per_query_ndcg10.get(ds)
            if cand_pq and base_pq:
                _, c, b = paired(cand_pq, base_pq, f"changes_ranking: {ds} of {getattr(candidate, 'name', '?')!r} vs the frozen encoder")
                d = c - b
                r.update(ndcg10=float(c.mean()), baseline=float(b.mean()), diff=float(d.mean()), mde=mde(d, alpha, power),
                         changed_queries=int(np.sum(d != 0)), n=int(d.size))
            elif is_finite(r["ndcg10"]) and is_finite(r["baseline"]):
                r.update(diff=r["ndcg10"] - r["baseline"], mde=float("nan"))
            if "diff" in r:
                r["tol"] = max(ndcg_tol, r["mde"]) if is_finite(r["mde"]) else ndcg_tol
                same_ndcg = abs(r["diff"]) < r["tol"]
            else:  # no frozen NDCG@10 recorded: the ranking overlap alone decides
                r["tol"] = None
                same_ndcg = True
            r["same_ranking"] = bool(overlap >= min_overlap and same_ndcg)
            per[ds] = r
        details = {"datasets": per, "selected_epoch": rec.epoch, "judged": which, "min_overlap": min_overlap,
                   "ndcg_tol": ndcg_tol, "mde_method": f"(z_(1-{alpha}) + z_({power})) * sd / sqrt(n) of per-query differences"}
        if not per:
            return self.not_applicable("the run records no top-10 overlap with the frozen encoder at the judged epoch", **details)

        def line(ds):
            r = per[ds]
            text = f"{ds} top-10 overlap {r['top10_overlap']:.4f}"
            if "diff" in r:
                text += (f", NDCG@10 {r['ndcg10']:.4f} vs frozen {r['baseline']:.4f} (diff {r['diff']:+.4f}, noise band "
                         f"{r['tol']:.4f})")
            return text

        summary = "; ".join(line(ds) for ds in per)
        if all(r["same_ranking"] for r in per.values()):
            res = rec.residual or {}
            aux = ""
            if res:
                aux = (f"; the head itself reports correction {fmt(res.get('correction_rel'))} of the input"
                       + (f", alpha {fmt(res.get('alpha'))}" if res.get("alpha") is not None else ""))
            what = (f"the head does nothing: at {which} it ranks like the frozen encoder on every eval dataset ({summary}; "
                    f"counts as the same when the overlap is >= {fmt(min_overlap)} and |diff| is below the larger of "
                    f"{fmt(ndcg_tol)} and the dataset's MDE at alpha {fmt(alpha)}, {power:.0%} power){aux}"
                    + (f"; none of its {run.last_trained_epoch} trained epochs beat the untrained head on the dev split"
                       if rec.epoch == 0 else ""))
            worst = min(per, key=lambda ds: per[ds]["top10_overlap"])
            return self.failed(what, per[worst]["top10_overlap"], min_overlap, named_epoch(run, rec), **details)
        changed = [ds for ds, r in per.items() if not r["same_ranking"]]
        return self.passed(f"the head changes the ranking on {', '.join(changed)} at {which} ({summary})",
                           min(r["top10_overlap"] for r in per.values()), min_overlap, named_epoch(run, rec), **details)


@hookimpl
def register_checks(register):
    check = ChangesRanking()
    register("changes_ranking", check, description=check.description)
