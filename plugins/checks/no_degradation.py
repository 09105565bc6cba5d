"""no_degradation: eval NDCG@10 does not fall from the best epoch to the last by more than a bound."""
from __future__ import annotations

from harness import hookimpl
from harness.checks import BaseCheck, fmt, is_finite, mean, need_run


class NoDegradation(BaseCheck):
    name = "no_degradation"
    description = "dev NDCG@10 (eval without a dev split) does not fall from the best epoch to the last by more than a bound"
    defaults = {
        "max_rel_drop": 0.03,  # (best - last) / best, per dataset and for the mean over datasets
        "from_epoch": 0,  # epochs considered for "best" (0 = the untrained head counts too)
        "min_abs_drop": 0.005,  # a smaller absolute fall is query noise, whatever its relative size
    }
    cause = (
        "training optimises a proxy that parts ways with ranking: the loss keeps improving while retrieval gets "
        "worse (seed 004: validation loss 2e-5 -> 7e-6 while SciFact NDCG@10 fell 0.608 -> 0.544; seeds 000/001: "
        "Barlow pretraining pulls embeddings together and destroys ranking)"
    )
    fix = (
        "early-stop on retrieval NDCG@10 of a held-out split instead of the loss, and remove the loss term that "
        "rewards doing nothing (e.g. residual_l2) or that ignores ranking"
    )

    def run(self, candidate, max_rel_drop=0.03, from_epoch=0, min_abs_drop=0.005):
        run = need_run(self, candidate)
        epochs = [e for e in run.epochs if e.epoch >= from_epoch and e.ndcg10]
        if len(epochs) < 2:
            return self.not_applicable(f"fewer than two scored epochs from epoch {from_epoch} (the head was not trained)")
        last = epochs[-1]
        # The curve the protocol watches: dev NDCG@10 when there is a dev split (early stopping and selection read
        # it), else the eval split's. Under early stopping the last `patience` epochs lie past the dev peak by
        # construction; on the test split that tail is query noise for a healthy head (the adapter's NFCorpus test
        # NDCG@10 fell 4.4% while its dev NDCG@10 fell 0.1%, seed 1), so the test curve would flag improving heads.
        split = "dev" if all(e.dev_ndcg10 for e in epochs) else "eval"
        values_of = (lambda e: e.dev_ndcg10) if split == "dev" else (lambda e: e.ndcg10)
        datasets = sorted(values_of(last))
        curves = {d: [values_of(e).get(d, float("nan")) for e in epochs] for d in datasets}
        curves["mean"] = [mean(values_of(e)) for e in epochs]
        nums = [e.epoch for e in epochs]
        drops = {}
        for name, values in curves.items():
            best_i = max(range(len(values)), key=lambda i: values[i])
            best = values[best_i]
            drop = (best - values[-1]) / best if best > 0 else 0.0
            drops[name] = {"best": best, "best_epoch": nums[best_i], "last": values[-1], "rel_drop": drop}
        details = {"curves": curves, "epochs": nums, "drops": drops, "split": split}
        failing = [n for n in drops if drops[n]["rel_drop"] > max_rel_drop and drops[n]["best"] - drops[n]["last"] > min_abs_drop]
        worst = max(failing or drops, key=lambda n: drops[n]["rel_drop"])
        w = drops[worst]
        if failing:
            trail = " -> ".join(f"{v:.4f}" for v in curves[worst])
            where = f"mean {split}" if worst == "mean" else f"{worst} {split}"
            peak = epochs[nums.index(w["best_epoch"])]
            losses = (peak.loss or {}).get("total"), (last.loss or {}).get("total")
            loss_note = (f"; the training loss on the probe pairs went {fmt(losses[0])} -> {fmt(losses[1])} over the same epochs"
                         if all(is_finite(x) for x in losses) else "")
            fix = None
            if split == "dev" and run.selected is not None:
                shipped = ", so this fall is not in the head it ships" if run.selected == w["best_epoch"] else ""
                fix = (f"the protocol already keeps the dev-best epoch ({run.selected}){shipped}; training past the peak "
                       f"makes the head rank worse: remove the loss term that rewards doing nothing (e.g. residual_l2) or "
                       f"that ignores ranking, regularise the head, or lower the learning rate")
            return self.failed(
                f"{where} NDCG@10 fell {w['rel_drop']:.1%} from {w['best']:.4f} at epoch {w['best_epoch']} to "
                f"{w['last']:.4f} at epoch {last.epoch} (epochs {nums[0]}-{nums[-1]}: {trail}; bound {max_rel_drop:.1%}, "
                f"falls under {min_abs_drop} ignored){loss_note}",
                w["rel_drop"], max_rel_drop, last.epoch, fix=fix, dataset=worst, **details,
            )
        return self.passed(
            f"largest fall of {split} NDCG@10 from the best epoch {w['rel_drop']:.1%} ({worst}, {w['best'] - w['last']:.4f} absolute; bound "
            f"{max_rel_drop:.1%} and > {min_abs_drop}); last-epoch mean {split} NDCG@10 "
            f"{fmt(curves['mean'][-1])}", w["rel_drop"], max_rel_drop, last.epoch, **details,
        )


@hookimpl
def register_checks(register):
    check = NoDegradation()
    register("no_degradation", check, description=check.description)
