"""Direct predictor (seed 004's ISO15_PRED12): an MLP maps the query embedding to its document's."""
import torch
from torch import nn

from harness import hookimpl
from harness.types import Head


class IsoPred(Head):
    """Query side ``MLP(q)`` (no residual path), documents unchanged, scored by cosine.

    Seed 004 trains it with isotropy 1.5 + predictive 1.2 (``default_losses``). ``hidden``: MLP width.
    """

    similarity = "cos"
    default_losses = {"isotropy": {"weight": 1.5}, "predictive": {"weight": 1.2}}

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__(dim)
        self.predictor = nn.Sequential(nn.Linear(dim, hidden or dim), nn.GELU(), nn.Linear(hidden or dim, dim))

    def encode_queries(self, q: torch.Tensor) -> torch.Tensor:
        return self.predictor(q)

    def encode_docs(self, d: torch.Tensor) -> torch.Tensor:
        return d


@hookimpl
def register_heads(register):
    register("isopred", IsoPred)
