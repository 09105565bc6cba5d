"""Residual predictor (seed 004's ResPred): ``q + alpha * tanh(MLP(q))`` predicts the document embedding."""
from typing import cast

import torch
from torch import nn

from harness import hookimpl
from harness.types import Aux, Head, HeadOutput, Similarity

from ._layers import check_dropout, check_scoring, hidden_width, mlp


class ResPred(Head):
    """Query side ``q + alpha * tanh(MLP(q))``, documents unchanged, scored by cosine.

    Options: ``tanh`` (bound delta to [-1, 1]; the seed's fix drops it), ``learn_alpha`` (seed: learnable),
    ``alpha_init`` (seed: 0.1), ``hidden`` (MLP width or "2x", default ``dim``), ``dropout`` (after the GELU).
    Seed 004 trains it with isotropy 1.5 + predictive 1.2 + residual_l2 0.01 (``default_losses``).

    The seed's code (ragcun ``ragcun/respred_model.py``, ``scripts/train_respred.py``) differs; its options:
    ``projection=True`` puts one shared, randomly initialised MLP (dim -> hidden -> dim, like ``hidden``) in
    front of both sides: ``z_q = P(q)``, ``z_d = P(d)``, the prediction is ``z_q + alpha * delta(z_q)`` and
    ``aux["prediction"]`` carries it (``predictive`` with ``source="prediction", stop_grad=True`` is the seed's
    ``MSE(prediction, stopgrad(z_d))``). ``score_with``: "predictor" (the query side is the prediction) or
    "projection" (the query side is ``z_q``, no predictor: ``scripts/eval_respred_quick.py``). ``similarity``:
    "cos" or "dot" (the seed ranks by negative Euclidean distance, which retrieval does not offer).
    """

    similarity: Similarity = "cos"
    default_losses = {"isotropy": {"weight": 1.5}, "predictive": {"weight": 1.2}, "residual_l2": {"weight": 0.01}}

    def __init__(self, dim: int, hidden: int | str | None = None, tanh: bool = True, learn_alpha: bool = True,
                 alpha_init: float = 0.1, projection: bool = False, dropout: float = 0.0,
                 score_with: str = "predictor", similarity: str = "cos"):
        super().__init__(dim)
        check_scoring("respred", similarity, score_with, projection)
        self.similarity = cast(Similarity, similarity)  # checked by check_scoring
        self.score_with = score_with
        self.tanh = bool(tanh)
        width = hidden_width("respred", dim, hidden) or dim
        dropout = check_dropout("respred", dropout)
        self.projection = mlp(dim, width, dropout) if projection else None
        self.mlp = mlp(dim, width, dropout)
        alpha = torch.tensor(float(alpha_init))
        if learn_alpha:
            self.alpha = nn.Parameter(alpha)
        else:
            self.register_buffer("alpha", alpha)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.projection is None else self.projection(x)

    def residual(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        delta = self.mlp(q)
        if self.tanh:
            delta = torch.tanh(delta)
        return delta, self.alpha * delta

    def encode_queries(self, q: torch.Tensor) -> torch.Tensor:
        z = self.project(q)
        return z if self.score_with == "projection" else z + self.residual(z)[1]

    def encode_docs(self, d: torch.Tensor) -> torch.Tensor:
        return self.project(d)

    def forward(self, q: torch.Tensor, d: torch.Tensor) -> HeadOutput:
        z_q, z_d = self.project(q), self.project(d)
        delta, correction = self.residual(z_q)
        prediction = z_q + correction
        aux = Aux(delta=delta, alpha=self.alpha, correction=correction)
        if self.projection is not None:
            aux["prediction"], aux["residual_base"] = prediction, z_q
        query = z_q if self.score_with == "projection" else prediction
        return HeadOutput(query, z_d, q, d, aux)


@hookimpl
def register_heads(register):
    register("respred", ResPred)
