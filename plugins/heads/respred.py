"""Residual predictor (seed 004's ResPred): ``q + alpha * tanh(MLP(q))`` predicts the document embedding."""
import torch
from torch import nn

from harness import hookimpl
from harness.types import Head, HeadOutput


class ResPred(Head):
    """Query side ``q + alpha * tanh(MLP(q))``, documents unchanged, scored by cosine.

    Options: ``tanh`` (bound delta to [-1, 1]; the seed's fix drops it), ``learn_alpha`` (seed: learnable),
    ``alpha_init`` (seed: ~0.1), ``hidden`` (MLP width, default ``dim``).
    Seed 004 trains it with isotropy 1.5 + predictive 1.2 + residual_l2 0.01 (``default_losses``).
    """

    similarity = "cos"
    default_losses = {"isotropy": {"weight": 1.5}, "predictive": {"weight": 1.2}, "residual_l2": {"weight": 0.01}}

    def __init__(self, dim: int, hidden: int | None = None, tanh: bool = True, learn_alpha: bool = True,
                 alpha_init: float = 0.1):
        super().__init__(dim)
        self.tanh = bool(tanh)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden or dim), nn.GELU(), nn.Linear(hidden or dim, dim))
        alpha = torch.tensor(float(alpha_init))
        if learn_alpha:
            self.alpha = nn.Parameter(alpha)
        else:
            self.register_buffer("alpha", alpha)

    def residual(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        delta = self.mlp(q)
        if self.tanh:
            delta = torch.tanh(delta)
        return delta, self.alpha * delta

    def encode_queries(self, q: torch.Tensor) -> torch.Tensor:
        return q + self.residual(q)[1]

    def encode_docs(self, d: torch.Tensor) -> torch.Tensor:
        return d

    def forward(self, q: torch.Tensor, d: torch.Tensor) -> HeadOutput:
        delta, correction = self.residual(q)
        aux = {"delta": delta, "alpha": self.alpha, "correction": correction}
        return HeadOutput(q + correction, d, q, d, aux)


@hookimpl
def register_heads(register):
    register("respred", ResPred)
