"""An external retrieval-harness plugin: one head and one check, registered through the same hooks as the
built-ins. Installed, it is found through the ``retrieval_harness`` entry point; nothing else is needed."""
import torch
from torch import nn

from harness import hookimpl
from harness.types import CheckResult, Head


class LinearResidual(Head):
    """``x + W x`` on both sides, W zero-initialised (epoch 0 is exactly the frozen encoder), scored by cosine."""

    similarity = "cos"

    def __init__(self, dim: int, shared: bool = True):
        super().__init__(dim)
        self.w = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.w.weight)
        if not shared:
            self.w_doc = nn.Linear(dim, dim, bias=False)
            nn.init.zeros_(self.w_doc.weight)

    def encode_queries(self, q: torch.Tensor) -> torch.Tensor:
        return q + self.w(q)

    def encode_docs(self, d: torch.Tensor) -> torch.Tensor:
        return d + getattr(self, "w_doc", self.w)(d)


class NdcgFloor:
    """Last-epoch NDCG@10 on every eval dataset stays above an absolute floor."""

    name = "ndcg_floor"
    description = "last-epoch NDCG@10 is at least `floor` on every evaluation dataset"
    defaults = {"floor": 0.2}

    def run(self, candidate, floor=0.2):
        last = candidate.run.last_epoch
        low = {d: v for d, v in last.ndcg10.items() if v < floor}
        if low:
            worst = min(low, key=low.get)
            return CheckResult(self.name, False, low[worst], floor, last.epoch,
                               f"ndcg_floor FAILED at epoch {last.epoch}: {worst} NDCG@10 {low[worst]:.4f} < floor {floor}. "
                               f"Likely cause: the head destroyed the encoder's ranking. Fix: see the other checks.",
                               "the head destroyed the encoder's ranking", "see the other checks")
        shown = ", ".join(f"{d} {v:.4f}" for d, v in sorted(last.ndcg10.items()))
        return CheckResult(self.name, True, min(last.ndcg10.values()), floor, last.epoch,
                           f"ndcg_floor passed: {shown} (floor {floor}).")


@hookimpl
def register_heads(register):
    register("linear_residual", LinearResidual)


@hookimpl
def register_checks(register):
    register("ndcg_floor", NdcgFloor())
