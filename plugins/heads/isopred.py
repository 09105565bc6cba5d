"""Direct predictor (seed 004's ISO15_PRED12): an MLP maps the query embedding to its document's."""
from typing import cast

import torch

from harness import hookimpl
from harness.types import Aux, Head, HeadOutput, Similarity

from ._layers import check_dropout, check_scoring, hidden_width, mlp


class IsoPred(Head):
    """Query side ``MLP(q)`` (no residual path), documents unchanged, scored by cosine.

    Seed 004 trains it with isotropy 1.5 + predictive 1.2 (``default_losses``). ``hidden``: MLP width or "2x".

    The code behind ISO15_PRED12 (ragcun ``ragcun/model.py`` IsotropicGaussianEncoder with ``use_predictor``,
    trained by ``scripts/train/isotropic.py``) differs; its options: ``projection=True`` puts one shared,
    randomly initialised MLP in front of both sides (``z_q = P(q)``, ``z_d = P(d)``), the predictor maps
    ``z_q`` to ``aux["prediction"]`` (``predictive`` with ``source="prediction", stop_grad=True``); with
    ``score_with="projection"`` the query side is ``z_q`` (its evaluation, ``scripts/eval/beir.py``, never
    calls the predictor). ``dropout`` after each GELU; ``similarity`` "cos" or "dot".
    """

    similarity: Similarity = "cos"
    default_losses = {"isotropy": {"weight": 1.5}, "predictive": {"weight": 1.2}}

    def __init__(self, dim: int, hidden: int | str | None = None, projection: bool = False, dropout: float = 0.0,
                 score_with: str = "predictor", similarity: str = "cos"):
        super().__init__(dim)
        check_scoring("isopred", similarity, score_with, projection)
        self.similarity = cast(Similarity, similarity)  # checked by check_scoring
        self.score_with = score_with
        width = hidden_width("isopred", dim, hidden) or dim
        dropout = check_dropout("isopred", dropout)
        self.projection = mlp(dim, width, dropout) if projection else None
        self.predictor = mlp(dim, width, dropout)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.projection is None else self.projection(x)

    def encode_queries(self, q: torch.Tensor) -> torch.Tensor:
        z = self.project(q)
        return z if self.score_with == "projection" else self.predictor(z)

    def encode_docs(self, d: torch.Tensor) -> torch.Tensor:
        return self.project(d)

    def forward(self, q: torch.Tensor, d: torch.Tensor) -> HeadOutput:
        z_q, z_d = self.project(q), self.project(d)
        prediction = self.predictor(z_q)
        aux = Aux(prediction=prediction) if self.projection is not None else Aux()
        return HeadOutput(z_q if self.score_with == "projection" else prediction, z_d, q, d, aux)


@hookimpl
def register_heads(register):
    register("isopred", IsoPred)
