"""beats_baseline: the head beats a stored frozen-encoder baseline on the macro average over datasets and is
not worse on any dataset, judged on the epoch the training protocol selected on its dev split.

Decision rule (an intersection-union test: every part must hold, so no part needs a multiplicity correction
for the verdict to keep level ``alpha``; the per-dataset family is Holm-adjusted all the same):

* superiority on average: one-sided paired sign-flip test of ``H1: macro-mean(diff) > margin``, p < alpha,
  and the measured macro-mean gain > margin;
* non-inferiority on every dataset: one-sided paired sign-flip test of ``H1: mean(diff) > -ni_margin``
  per dataset, Holm-Bonferroni-adjusted across the datasets, adjusted p < alpha.

Per dataset (and for the average) it reports the minimum detectable effect at ``alpha`` and ``power`` (80%),
normal approximation from the per-query sd of the differences, so a "no" says how small a gain could have
been seen with these queries.
"""
from __future__ import annotations

import numpy as np

from harness import hookimpl
from harness.checks import BaseCheck, fmt, kept_epochs_text, named_epoch, need_run

from ._stats import holm, mde, paired, sign_flip_test  # noqa: F401  (sign_flip_test re-exported)

__all__ = ["BeatsBaseline", "sign_flip_test", "holm", "mde", "judged_epoch"]

EPOCH_RULES = ("selected", "last")


def judged_epoch(run, epoch: str = "selected", check: str = "beats_baseline"):
    """The epoch record a verdict is about: ``"selected"`` (chosen on the dev split by the training protocol;
    the last epoch for runs that record no selection) or ``"last"``. ``"best"`` is refused: it picked the
    epoch on the very test split it was then judged on."""
    if epoch == "best":
        raise ValueError(
            f"{check}: threshold epoch = 'best' was removed: it chose the epoch with the highest test-split NDCG@10 "
            f"and then judged that same test split (selection on the test set, an optimistic verdict). Use "
            f"epoch = 'selected' (the epoch the protocol chose on its dev split; the default) or 'last'"
        )
    if epoch not in EPOCH_RULES:
        raise ValueError(f"{check}: threshold epoch must be one of {', '.join(repr(e) for e in EPOCH_RULES)}, got {epoch!r}")
    if epoch == "last":
        return run.epochs[-1], "the last epoch"
    selected = getattr(run, "selected", None)
    rec = getattr(run, "selected_epoch", None) or run.epochs[-1]
    if selected is not None and rec.epoch == selected:
        if named_epoch(run, rec) is None:  # merged from parts that kept different epochs
            return rec, kept_epochs_text(run)
        return rec, f"epoch {selected}, selected on the dev split"
    return rec, "the last epoch (the run records no dev-split selection)"


class BeatsBaseline(BaseCheck):
    name = "beats_baseline"
    scope = "candidate"  # judged once on every dataset's selected numbers, not per training unit
    seeds = "pooled"  # several seeds: judged on per-query NDCG@10 averaged over seeds (plus a gain on every seed)
    description = ("NDCG@10 beats the stored frozen baseline on the macro average and is non-inferior on every dataset "
                   "(paired sign-flip tests, Holm across datasets)")
    defaults = {
        "encoder": "",  # whose stored baseline to beat; empty: the suite's encoder
        "margin": 0.0,  # superiority: required macro-average per-query NDCG@10 gain
        "ni_margin": 0.01,  # non-inferiority: no dataset may be worse by this much (absolute NDCG@10)
        "alpha": 0.05,  # significance level of every one-sided test (Holm family-wise for the per-dataset ones)
        "power": 0.8,  # for the reported minimum detectable effect
        "permutations": 10000,
        "seed": 0,
        "epoch": "selected",  # "selected" (chosen on the dev split; default) or "last". "best" was removed
    }
    cause = "the head does not improve on the frozen encoder's ranking of these queries, or the gain is within query-to-query noise"
    fix = (
        "keep the frozen encoder, or change the architecture/losses and re-gate; more pairs or epochs only help "
        "if the dev-split telemetry shows it still improving (never pick the epoch on the test split)"
    )

    def baselines(self, config: dict, encoder: str = "", **_) -> list[tuple[str, str, str]]:
        """The stored baselines this check compares with (the gate verifies their provenance up front)."""
        enc = encoder or config["encoder"]
        return [(enc, d, config.get("eval_split", "test")) for d in config["eval"]]

    def run(self, candidate, encoder="", margin=0.0, ni_margin=0.01, alpha=0.05, power=0.8, permutations=10000, seed=0,
            epoch="selected"):
        run = need_run(self, candidate)
        rec, which = judged_epoch(run, epoch, self.name)
        if ni_margin < 0:
            raise ValueError(f"beats_baseline: ni_margin must be >= 0, got {ni_margin!r}")
        enc = encoder or run.config["encoder"]
        split = run.config.get("eval_split", "test")
        datasets = list(run.config["eval"])
        per, diffs = {}, []
        for ds in datasets:
            base = candidate.baseline(enc, ds, split)
            cand = rec.per_query_ndcg10.get(ds)
            if not cand:
                raise ValueError(f"beats_baseline: epoch {rec.epoch} of {candidate.name!r} has no per-query NDCG@10 for {ds!r}")
            _, c, b = paired(cand, base.per_query_ndcg10,
                             f"beats_baseline: {ds} of {candidate.name!r} vs baseline {base.path} "
                             f"(regenerate the baseline or check eval_split)")
            d = c - b
            diffs.append(d)
            diff, p = sign_flip_test([d], margin, permutations, seed)
            _, p_ni = sign_flip_test([d], -ni_margin, permutations, seed)
            per[ds] = {"candidate": float(c.mean()), "baseline": float(b.mean()), "diff": diff, "p": p, "p_ni": p_ni,
                       "n": int(d.size), "wins": int((d > 0).sum()), "losses": int((d < 0).sum()),
                       "sd": float(d.std(ddof=1)) if d.size > 1 else float("nan"), "mde": mde(d, alpha, power)}
        p_ni_holm, noninferior = holm({ds: per[ds]["p_ni"] for ds in datasets}, alpha)
        for ds in datasets:
            per[ds]["p_ni_holm"] = p_ni_holm[ds]
            per[ds]["noninferior"] = bool(noninferior[ds])
            per[ds]["superior"] = bool(per[ds]["diff"] > margin and per[ds]["p"] < alpha)  # reported, not required
        diff, p = sign_flip_test(diffs, margin, permutations, seed)
        superior = bool(diff > margin and p < alpha)
        all_ni = all(per[ds]["noninferior"] for ds in datasets)
        # judged on several seeds at once (the per-query scores averaged over seeds): each seed must gain on average too
        seed_gains = {}
        for s, srun in sorted((getattr(candidate, "seed_runs", None) or {}).items()):
            srec = srun.selected_epoch
            seed_gains[s] = float(np.mean([srec.ndcg10[ds] - srun.baseline_ndcg10[ds] for ds in datasets]))
        every_seed = all(g > margin for g in seed_gains.values())
        passed = superior and all_ni and every_seed
        per["average"] = {"candidate": float(np.mean([per[d]["candidate"] for d in datasets])),
                          "baseline": float(np.mean([per[d]["baseline"] for d in datasets])),
                          "diff": diff, "p": p, "mde": mde(diffs, alpha, power), "superior": superior,
                          "noninferior_everywhere": all_ni, "beats": passed}
        details = {"datasets": per, "baseline_encoder": enc, "split": split,
                   "test": "one-sided paired sign-flip (randomization); Holm across datasets for non-inferiority",
                   "rule": f"superior on the macro average (diff > {margin}, p < {alpha}) and non-inferior on every "
                           f"dataset (margin {ni_margin}, Holm-adjusted p < {alpha})",
                   "mde_method": f"normal approximation: (z_(1-{alpha}) + z_({power})) * sd / sqrt(n) of the per-query differences",
                   "permutations": permutations, "selected_epoch": rec.epoch, "epoch_rule": epoch, "judged": which,
                   "margin": margin, "ni_margin": ni_margin, "alpha": alpha, "power": power, "seed_gains": seed_gains}
        bound = (f"average diff > {fmt(margin)} with p < {fmt(alpha)}, and every dataset non-inferior "
                 f"(diff > -{fmt(ni_margin)}, Holm p < {fmt(alpha)})")
        mde_note = (f"MDE = smallest mean gain detectable at alpha {fmt(alpha)} with {power:.0%} power, normal approximation "
                    f"from the per-query sd of the differences")

        def line(name):
            r = per[name]
            if name == "average":
                return (f"average NDCG@10 {r['candidate']:.4f} vs {enc} baseline {r['baseline']:.4f} (diff {r['diff']:+.4f}, "
                        f"superiority p={r['p']:.3g}, MDE {r['mde']:.4f})")
            return (f"{name} {r['candidate']:.4f} vs {r['baseline']:.4f} (diff {r['diff']:+.4f}, non-inferiority "
                    f"Holm p={r['p_ni_holm']:.3g}, MDE {r['mde']:.4f}, n={r['n']})")

        summary = "; ".join(line(n) for n in ["average", *datasets])
        if seed_gains:
            summary += ("; per-query scores averaged over seeds " + ", ".join(map(str, seed_gains)) + ", mean gain per seed "
                        + ", ".join(f"{g:+.4f}" for g in seed_gains.values()))
        epoch_note = f"judged at {which}"
        headline = f"{'yes' if passed else 'no'} (diff {diff:+.4f}, p={p:.3g})"
        if passed:
            return self.passed(f"{summary}; {epoch_note}; {mde_note}", {n: per[n]["diff"] for n in per}, bound, named_epoch(run, rec),
                               headline=headline, **details)
        reasons = []
        if not superior:
            avg_mde = per["average"]["mde"]
            seen = (f"a gain under the MDE {avg_mde:.4f} could not be seen with these queries" if avg_mde > 0 else
                    "every query scores exactly as in the baseline")
            reasons.append(f"the average gain {diff:+.4f} is not significantly above {fmt(margin)} (p={p:.3g}; {seen})")
        losing = [s for s, g in seed_gains.items() if not g > margin]
        if losing:
            reasons.append(f"seed{'s' if len(losing) > 1 else ''} {', '.join(map(str, losing))} gained nothing on average "
                           f"({', '.join(f'{seed_gains[s]:+.4f}' for s in losing)})")
        inferior = [ds for ds in datasets if not per[ds]["noninferior"]]
        if inferior:
            reasons.append("not shown non-inferior (by " + fmt(ni_margin) + ") on " +
                           ", ".join(f"{ds} (diff {per[ds]['diff']:+.4f}, Holm p={per[ds]['p_ni_holm']:.3g})" for ds in inferior))
        what = (f"{' and '.join(reasons)}: {summary} (needs {bound}; one-sided paired sign-flip tests, {permutations} "
                f"permutations; {epoch_note}; {mde_note})")
        cause = self.cause
        if all(per[d]["diff"] < 0 for d in datasets):
            cause = f"the head ranks worse than the frozen {enc} encoder on every dataset; see the other checks for why"
        elif abs(per["average"]["diff"]) < 1e-9 and all(per[d]["wins"] == per[d]["losses"] == 0 for d in datasets):
            cause = f"the head ranks exactly like the frozen {enc} encoder (it is that encoder, or a head that does nothing)"
        elif superior and inferior:
            cause = f"the average gain comes with a loss on {', '.join(inferior)}: the head trades one dataset for another"
        return self.failed(what, {n: per[n]["diff"] for n in per}, bound, named_epoch(run, rec), cause=cause, headline=headline,
                           **details)


@hookimpl
def register_checks(register):
    check = BeatsBaseline()
    register("beats_baseline", check, description=check.description)
