"""beats_baseline: NDCG@10 beats a stored frozen-encoder baseline per dataset and on average, by a
margin, judged by a seeded one-sided paired randomization (sign-flip) test on per-query NDCG@10."""
from __future__ import annotations

import numpy as np

from harness import hookimpl
from plugins.checks import BaseCheck, fmt, need_run


def sign_flip_test(diffs: list[np.ndarray], margin: float = 0.0, permutations: int = 10000, seed: int = 0) -> tuple[float, float]:
    """One-sided paired randomization test of ``H1: mean(diff) > margin``.

    ``diffs`` holds per-query differences (candidate - baseline), one array per dataset; the statistic
    is the macro average over datasets of the mean of ``diff - margin``. Under H0 each shifted difference
    is symmetric about 0, so its sign is flipped at random. Returns (statistic + margin, p-value), the
    p-value counting the observed assignment: ``(1 + #{T* >= T}) / (1 + permutations)``.
    """
    rng = np.random.default_rng(seed)
    shifted = [np.asarray(d, dtype=np.float64) - margin for d in diffs]
    observed = float(np.mean([d.mean() for d in shifted]))
    null = np.zeros(permutations)
    for d in shifted:
        signs = rng.integers(0, 2, size=(permutations, d.size), dtype=np.int8) * 2 - 1
        null += (signs * d).mean(axis=1)
    null /= len(shifted)
    p = (1 + int(np.sum(null >= observed - 1e-12))) / (1 + permutations)
    return observed + margin, p


class BeatsBaseline(BaseCheck):
    name = "beats_baseline"
    description = "NDCG@10 beats the stored frozen baseline per dataset and on average (paired randomization test)"
    defaults = {
        "encoder": "",  # whose stored baseline to beat; empty: the suite's encoder
        "margin": 0.0,  # required mean per-query NDCG@10 gain
        "alpha": 0.05,  # significance level of the one-sided test
        "permutations": 10000,
        "seed": 0,
        "epoch": "last",  # "last" (no selection on the test split) or "best" (by mean eval NDCG@10; optimistic)
    }
    cause = "the head does not improve on the frozen encoder's ranking of these queries, or the gain is within query-to-query noise"
    fix = (
        "keep the frozen encoder, or change the architecture/losses and re-gate; more pairs or epochs only help "
        "if the telemetry shows it still improving (never pick the epoch on the test split)"
    )

    def baselines(self, config: dict, encoder: str = "", **_) -> list[tuple[str, str, str]]:
        """The stored baselines this check compares with (the gate verifies their provenance up front)."""
        enc = encoder or config["encoder"]
        return [(enc, d, config.get("eval_split", "test")) for d in config["eval"]]

    def run(self, candidate, encoder="", margin=0.0, alpha=0.05, permutations=10000, seed=0, epoch="last"):
        run = need_run(self, candidate)
        if epoch not in ("last", "best"):
            raise ValueError(f"beats_baseline: threshold epoch must be 'last' or 'best', got {epoch!r}")
        rec = run.last_epoch if epoch == "last" else run.best_epoch
        enc = encoder or run.config["encoder"]
        split = run.config.get("eval_split", "test")
        datasets = list(run.config["eval"])
        per, diffs = {}, []
        for ds in datasets:
            base = candidate.baseline(enc, ds, split)
            cand = rec.per_query_ndcg10.get(ds)
            if not cand:
                raise ValueError(f"beats_baseline: epoch {rec.epoch} of {candidate.name!r} has no per-query NDCG@10 for {ds!r}")
            missing = sorted(set(base.per_query_ndcg10) - set(cand))
            extra = sorted(set(cand) - set(base.per_query_ndcg10))
            if missing or extra:
                raise ValueError(
                    f"beats_baseline: {ds} query ids differ between the run and baseline {base.path}: "
                    f"{len(missing)} only in the baseline (e.g. {missing[:3]}), {len(extra)} only in the run (e.g. {extra[:3]}); "
                    f"regenerate the baseline or check eval_split"
                )
            qids = sorted(base.per_query_ndcg10)
            c = np.array([cand[q] for q in qids])
            b = np.array([base.per_query_ndcg10[q] for q in qids])
            d = c - b
            diffs.append(d)
            diff, p = sign_flip_test([d], margin, permutations, seed)
            per[ds] = {"candidate": float(c.mean()), "baseline": float(b.mean()), "diff": diff, "p": p, "n": int(d.size),
                       "wins": int((d > 0).sum()), "losses": int((d < 0).sum()),
                       "beats": bool(diff > margin and p < alpha)}
        diff, p = sign_flip_test(diffs, margin, permutations, seed)
        per["average"] = {"candidate": float(np.mean([per[d]["candidate"] for d in datasets])),
                          "baseline": float(np.mean([per[d]["baseline"] for d in datasets])),
                          "diff": diff, "p": p, "beats": bool(diff > margin and p < alpha)}
        details = {"datasets": per, "baseline_encoder": enc, "split": split, "test": "one-sided paired sign-flip",
                   "permutations": permutations, "selected_epoch": rec.epoch, "epoch_rule": epoch}
        bound = f"diff > {fmt(margin)} and p < {fmt(alpha)}"

        def line(name):
            r = per[name]
            return (f"{name} NDCG@10 {r['candidate']:.4f} vs {enc} baseline {r['baseline']:.4f} "
                    f"(diff {r['diff']:+.4f}, p={r['p']:.3g})")

        losing = [name for name in [*datasets, "average"] if not per[name]["beats"]]
        if losing:
            what = "; ".join(line(n) for n in losing) + f" (needs {bound}, one-sided paired sign-flip test, {permutations} permutations)"
            cause = self.cause
            if all(per[d]["diff"] < 0 for d in datasets):
                cause = f"the head ranks worse than the frozen {enc} encoder on every dataset; see the other checks for why"
            elif abs(per["average"]["diff"]) < 1e-9:
                cause = f"the head ranks exactly like the frozen {enc} encoder (it is that encoder, or a collapsed head)"
            return self.failed(what, {n: per[n]["diff"] for n in per}, bound, rec.epoch, cause=cause, **details)
        return self.passed("; ".join(line(n) for n in [*datasets, "average"]), {n: per[n]["diff"] for n in per}, bound,
                           rec.epoch, **details)


@hookimpl
def register_checks(register):
    check = BeatsBaseline()
    register("beats_baseline", check, description=check.description)
