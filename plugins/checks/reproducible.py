"""reproducible: the kept head gives the same vectors when it encodes the same texts twice in eval mode.

After training, the trainer encodes each eval dataset's queries and a fixed sample of its documents twice with
the kept weights, the random number generators running on between the passes
(``harness.measure.reproducibility``). A head whose retrieval path draws random numbers (dropout called with
``training=True``, sampling noise outside ``self.training``) scores every query differently from one call to
the next, while a run seeded the same way replays the same draws: its NDCG@10, and its regression baseline, look
stable although retrieval is not.
"""
from __future__ import annotations

from harness import hookimpl
from harness.checks import BaseCheck, fmt, need_run


class Reproducible(BaseCheck):
    name = "reproducible"
    description = "the kept head encodes the same eval vectors identically twice in eval mode"
    defaults = {
        "max_rel_diff": 1e-4,  # largest ||a - b|| / ||a|| between the two passes, over every vector
    }
    cause = (
        "the head's retrieval path draws random numbers: dropout called as F.dropout(x, p, training=True) or noise "
        "added outside `if self.training`, so each search scores the corpus with other vectors"
    )
    fix = (
        "use nn.Dropout modules or F.dropout(x, p, training=self.training), and draw noise only while training; "
        "then gate again"
    )

    def run(self, candidate, max_rel_diff=1e-4):
        run = need_run(self, candidate)
        r = run.reproducibility
        if r is None:
            return self.not_applicable("the run did not measure it (telemetry written before this check existed)")
        worst = float(r["max_rel_diff"])
        changed, vectors = r.get("changed", {}), r.get("vectors", {})
        where = ", ".join(f"{changed.get(side, 0)} of {vectors.get(side, 0)} {side}" for side in ("queries", "documents"))
        what = f"encoding the same vectors twice with the kept weights changed {where} of {', '.join(r.get('datasets', []))}"
        epoch = run.selected_epoch.epoch
        if not worst <= max_rel_diff:
            return self.failed(f"the head's output is not reproducible: {what}, by up to {fmt(worst)} of a vector's "
                               f"norm (bound {fmt(max_rel_diff)}), so retrieval scores change from one search to the next",
                               worst, max_rel_diff, epoch, **r)
        return self.passed(f"{what} (largest relative difference {fmt(worst)}; bound {fmt(max_rel_diff)})",
                           worst, max_rel_diff, epoch, **r)


@hookimpl
def register_checks(register):
    check = Reproducible()
    register("reproducible", check, description=check.description)
