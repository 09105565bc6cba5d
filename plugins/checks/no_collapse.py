"""no_collapse: the head's effective rank (RankMe) stays near the frozen encoder's."""
from __future__ import annotations

from harness import hookimpl
from harness.checks import BaseCheck, fmt, is_finite, need_run


class NoCollapse(BaseCheck):
    name = "no_collapse"
    description = "effective rank (RankMe) of document embeddings is not far below the frozen encoder's"
    defaults = {"min_rankme_ratio": 0.5}
    cause = (
        "the head squeezes embeddings into a few directions: distances shrink and clusters look tight while ranking "
        "is destroyed (seeds 000/001: Barlow pretraining pulled questions and answers together, NDCG fell to chance)"
    )
    fix = "keep in-batch negatives in the objective (infonce_cos) or an isotropy/uniformity term, and gate on alignment and uniformity together"

    def run(self, candidate, min_rankme_ratio=0.5):
        run = need_run(self, candidate)
        base = run.baseline_rankme
        if not is_finite(base) or base <= 0:
            raise ValueError(f"no_collapse: the run has no frozen-encoder RankMe (baseline_rankme = {base!r})")
        ratios = [(e.epoch, e.rankme, e.rankme / base) for e in run.epochs if is_finite(e.rankme)]
        details = {"baseline_rankme": base, "rankme": {e: r for e, r, _ in ratios}}
        if not ratios:
            return self.failed("no epoch reports a finite RankMe", None, min_rankme_ratio, run.epochs[-1].epoch, **details)
        # An untrained head (epoch 0) is random for most heads: gate what training made of it. A frozen head
        # has only epoch 0, which is then what is judged.
        judged = [x for x in ratios if x[0] >= 1] or ratios
        for epoch, r, ratio in judged:
            if ratio < min_rankme_ratio:
                trail = " -> ".join(fmt(x) for _, x, _ in ratios)
                return self.failed(
                    f"effective rank (RankMe) {fmt(r)} is {ratio:.0%} of the frozen encoder's {fmt(base)} "
                    f"(epochs {ratios[0][0]}-{ratios[-1][0]}: {trail}; bound >= {min_rankme_ratio:.0%})",
                    ratio, min_rankme_ratio, epoch, **details,
                )
        epoch, r, ratio = min(judged, key=lambda x: x[2])
        return self.passed(f"lowest RankMe {fmt(r)} = {ratio:.0%} of the frozen encoder's {fmt(base)} (epoch {epoch}; bound >= "
                           f"{min_rankme_ratio:.0%})", ratio, min_rankme_ratio, epoch, **details)


@hookimpl
def register_checks(register):
    check = NoCollapse()
    register("no_collapse", check, description=check.description)
