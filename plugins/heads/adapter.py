"""The residual linear adapter, the gate's positive control: ``x + W x + b`` with W and b zero-initialised."""
import torch
from torch import nn

from harness import hookimpl
from harness.types import Head, HeadOutput

SIDES = ("query", "both")


class Adapter(Head):
    """A residual linear map on the query side (``sides="query"``, documents frozen) or on both sides, each
    ``x + W x + b`` with ``W = 0, b = 0`` at the start: the untrained head *is* the frozen encoder, so training
    can only move it where the loss pays for it. Trained with cosine InfoNCE at temperature 0.05.
    ``aux["correction"]`` is ``W q + b``, what the head adds to the query (``nonzero_residuals`` reads it)."""

    similarity = "cos"
    default_losses = {"infonce_cos": {"weight": 1.0, "temperature": 0.05}}

    def __init__(self, dim: int, sides: str = "query"):
        super().__init__(dim)
        if sides not in SIDES:
            raise ValueError(f"adapter: sides must be one of {SIDES}, got {sides!r}")
        self.query_map = self._zero_linear(dim)
        self.doc_map = self._zero_linear(dim) if sides == "both" else None

    @staticmethod
    def _zero_linear(dim: int) -> nn.Linear:
        layer = nn.Linear(dim, dim)
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
        return layer

    def encode_queries(self, q: torch.Tensor) -> torch.Tensor:
        return q + self.query_map(q)

    def encode_docs(self, d: torch.Tensor) -> torch.Tensor:
        return d if self.doc_map is None else d + self.doc_map(d)

    def forward(self, q: torch.Tensor, d: torch.Tensor) -> HeadOutput:
        correction = self.query_map(q)
        return HeadOutput(q + correction, self.encode_docs(d), q, d, {"correction": correction})


@hookimpl
def register_heads(register):
    register("adapter", Adapter)
