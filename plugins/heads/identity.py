"""The frozen encoder itself: no parameters, scores exactly as the encoder does (the baseline)."""
import torch

from harness import hookimpl
from harness.types import Head


class Identity(Head):
    """Frozen encoder embeddings, unchanged (cosine)."""

    similarity = "cos"
    trainable = False

    def encode_queries(self, q: torch.Tensor) -> torch.Tensor:
        return q

    def encode_docs(self, d: torch.Tensor) -> torch.Tensor:
        return d


@hookimpl
def register_heads(register):
    register("identity", Identity)
