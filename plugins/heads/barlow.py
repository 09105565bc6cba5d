"""Barlow Twins head (seeds 000/001): a shared layer over the frozen encoder plus a projector for pretraining."""
import torch
from torch import nn

from harness import hookimpl
from harness.types import Head, HeadOutput


class Barlow(Head):
    """Siamese ``backbone`` (Linear, identity-initialised so epoch 0 is the frozen encoder) shared by
    queries and documents, and a ``projector`` (Linear-BatchNorm-ReLU-Linear, as Zbontar et al.) whose
    outputs ``aux["projection_q"/"projection_d"]`` the ``barlow`` loss pulls together in pretraining.

    Retrieval scores the backbone output by cosine (``retrieve_with="projector"`` scores the projector's).
    Use ``pretrain={"losses": {"barlow": {"weight": 1}}, "epochs": n}`` then a ranking loss.
    """

    similarity = "cos"
    default_losses = {"infonce_cos": {"weight": 1.0}}

    def __init__(self, dim: int, proj_dim: int | None = None, init: str = "identity", retrieve_with: str = "backbone"):
        super().__init__(dim)
        if init not in ("identity", "default"):
            raise ValueError(f"barlow: init must be 'identity' or 'default', got {init!r}")
        if retrieve_with not in ("backbone", "projector"):
            raise ValueError(f"barlow: retrieve_with must be 'backbone' or 'projector', got {retrieve_with!r}")
        self.retrieve_with = retrieve_with
        self.backbone = nn.Linear(dim, dim)
        if init == "identity":
            nn.init.eye_(self.backbone.weight)
            nn.init.zeros_(self.backbone.bias)
        p = proj_dim or dim
        self.projector = nn.Sequential(nn.Linear(dim, p), nn.BatchNorm1d(p), nn.ReLU(), nn.Linear(p, p))

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone(x)
        return self.projector(h) if self.retrieve_with == "projector" else h

    def encode_queries(self, q: torch.Tensor) -> torch.Tensor:
        return self._encode(q)

    def encode_docs(self, d: torch.Tensor) -> torch.Tensor:
        return self._encode(d)

    def forward(self, q: torch.Tensor, d: torch.Tensor) -> HeadOutput:
        hq, hd = self.backbone(q), self.backbone(d)
        zq, zd = self.projector(hq), self.projector(hd)  # separate passes, as the paper's two branches
        if self.retrieve_with == "projector":
            hq, hd = zq, zd
        return HeadOutput(hq, hd, q, d, {"projection_q": zq, "projection_d": zd})


@hookimpl
def register_heads(register):
    register("barlow", Barlow)
