"""finite: every number the run reports (losses, norms, similarities, gradients, scores) is finite."""
from __future__ import annotations

import math

from harness import hookimpl
from plugins.checks import BaseCheck, need_run


def _numbers(record) -> dict[str, float]:
    out = {}
    for group in ("loss", "q_norm", "d_norm", "ndcg10", "top10_overlap"):
        for k, v in (getattr(record, group) or {}).items():
            out[f"{group}.{k}"] = v
    for k, v in (record.residual or {}).items():
        out[f"residual.{k}"] = v
    for k in ("pos_sim", "neg_sim", "grad_norm", "rankme", "alignment", "uniformity"):
        out[k] = getattr(record, k)
    return out


# Quantities that may be NaN meaning "not measured" (no gradient at epoch 0 or for a frozen head).
OPTIONAL_NAN = {"grad_norm"}


class Finite(BaseCheck):
    name = "finite"
    description = "every reported loss, norm, similarity, gradient norm and score is finite"
    defaults = {}
    cause = "the optimisation diverged: a learning rate too high, magnitudes exploding (seed 002), or a division by a zero norm"
    fix = "lower lr, L2-normalise embeddings inside the loss, and check the head's forward for divisions and logs"

    def run(self, candidate):
        run = need_run(self, candidate)
        for record in run.epochs:
            for key, value in _numbers(record).items():
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    if key in OPTIONAL_NAN:
                        continue
                    return self.failed(f"{key} is NaN", value, "finite", record.epoch, quantity=key)
                if isinstance(value, (int, float)) and math.isinf(value):
                    return self.failed(f"{key} is {value}", value, "finite", record.epoch, quantity=key)
        n = sum(len(_numbers(r)) for r in run.epochs)
        return self.passed(f"{n} reported values over {len(run.epochs)} epochs are finite", n, "finite", run.epochs[-1].epoch)


@hookimpl
def register_checks(register):
    check = Finite()
    register("finite", check, description=check.description)
