"""Asymmetric projections (seed 002's AsymmetricProjectionModel): one projection for queries, another for documents."""
from typing import cast

import torch
from torch import nn

from harness import hookimpl
from harness.types import SIMILARITIES, Head, Similarity

from ._layers import check_dropout, hidden_width


def projection(dim: int, out_dim: int, hidden: int | None, init: str, dropout: float = 0.0) -> nn.Module:
    if hidden:
        drop = [nn.Dropout(dropout)] if dropout else []
        return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), *drop, nn.Linear(hidden, out_dim))
    layer = nn.Linear(dim, out_dim)
    if init == "identity":
        if out_dim != dim:
            raise ValueError(f"asymmetric: init='identity' needs out_dim == dim ({dim}), got {out_dim}")
        nn.init.eye_(layer.weight)
        nn.init.zeros_(layer.bias)
    return layer


class Asymmetric(Head):
    """Separate linear (or MLP, ``hidden``) query and document projections of frozen embeddings.

    ``similarity`` is what it is trained and scored with: "dot" (seed 002's original, raw inner products
    of unnormalised projections) or "cos" (its fix). ``init``: "default" (PyTorch) or "identity".
    ``hidden``: width of a hidden GELU layer (or "2x" = twice the input dim), ``dropout`` after the GELU.
    Seed 002's code (ragcun ``ragcun/asymmetric_model.py``) is ``hidden="2x", dropout=0.1``.
    """

    similarity: Similarity = "dot"

    def __init__(self, dim: int, out_dim: int | None = None, hidden: int | str | None = None,
                 init: str = "default", similarity: str = "dot", dropout: float = 0.0):
        super().__init__(dim)
        if similarity not in SIMILARITIES:
            raise ValueError(f"asymmetric: similarity must be one of {SIMILARITIES}, got {similarity!r}")
        if init not in ("default", "identity"):
            raise ValueError(f"asymmetric: init must be 'default' or 'identity', got {init!r}")
        hidden = hidden_width("asymmetric", dim, hidden)
        dropout = check_dropout("asymmetric", dropout)
        if dropout and not hidden:
            raise ValueError("asymmetric: dropout needs a hidden layer (set hidden, e.g. hidden='2x')")
        if hidden and init == "identity":
            raise ValueError("asymmetric: init='identity' is for the single linear layer; leave hidden unset")
        self.similarity = cast(Similarity, similarity)  # checked above
        out_dim = out_dim or dim
        self.query_proj = projection(dim, out_dim, hidden, init, dropout)
        self.doc_proj = projection(dim, out_dim, hidden, init, dropout)

    def encode_queries(self, q: torch.Tensor) -> torch.Tensor:
        return self.query_proj(q)

    def encode_docs(self, d: torch.Tensor) -> torch.Tensor:
        return self.doc_proj(d)


@hookimpl
def register_heads(register):
    register("asymmetric", Asymmetric)
