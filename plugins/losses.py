"""Built-in losses, composable with weights from configuration (``losses = {name: {"weight": w, **options}}``).

Every loss is ``factory(**options) -> loss`` with ``loss(out: HeadOutput) -> scalar tensor``; each works
with its defaults on any ``HeadOutput`` whose ``query``/``doc``/``input_query``/``input_doc`` are (B, D).
Contrastive losses also expose ``scores(out) -> (B, B)``, the similarity they use (positives on the
diagonal, before the temperature), which telemetry reports as positive/negative similarity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness import hookimpl
from harness.types import HeadOutput


class InfoNCEDot:
    """InfoNCE, in-batch negatives, on raw dot products of unnormalised embeddings (seed 002's original).

    ``loss = CE(q @ d.T / temperature, diagonal)``; ``symmetric`` adds the document-to-query direction.
    Nothing bounds the norms: the loss falls when embeddings simply grow ("cheating with magnitude").
    """

    similarity = "dot"

    def __init__(self, temperature: float = 0.05, symmetric: bool = False):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.symmetric = bool(symmetric)

    def scores(self, out: HeadOutput) -> torch.Tensor:
        return out.query @ out.doc.T

    def __call__(self, out: HeadOutput) -> torch.Tensor:
        logits = self.scores(out) / self.temperature
        labels = torch.arange(logits.shape[0], device=logits.device)
        loss = F.cross_entropy(logits, labels)
        if self.symmetric:
            loss = (loss + F.cross_entropy(logits.T, labels)) / 2
        return loss


class InfoNCECos(InfoNCEDot):
    """InfoNCE, in-batch negatives, on cosine similarity / temperature (seed 002's fix): norms cannot help."""

    similarity = "cos"

    def scores(self, out: HeadOutput) -> torch.Tensor:
        return F.normalize(out.query, dim=-1) @ F.normalize(out.doc, dim=-1).T


def isotropy_of(x: torch.Tensor) -> torch.Tensor:
    """``||M - I/D||_F^2`` for ``M = z.T @ z / B`` the second-moment matrix of the L2-normalised rows ``z``.

    ``tr(M) = 1``, so this is ``sum(lambda_i^2) - 1/D`` over M's eigenvalues: 0 iff the directions are
    isotropic, ``1 - 1/D`` when every row points along one line. Not centred on purpose: a common mean
    direction (the "narrow cone" of sentence embeddings) and a collapse onto one point both count as
    anisotropy; a centred covariance would call a collapsed batch with isotropic jitter isotropic.
    Scale-free. With B < D rows the floor is ``1/B - 1/D``.
    """
    z = F.normalize(x, dim=-1)
    m = z.T @ z / z.shape[0]
    eye = torch.eye(m.shape[0], device=x.device, dtype=x.dtype)
    return ((m - eye / m.shape[0]) ** 2).sum()


class Isotropy:
    """Isotropy of the scored embeddings: covariance of the normalised batch towards a multiple of I.

    ``on``: "query" (the head's query side, e.g. a predictor's output), "doc", or "both" (mean of the two).
    Seed 004's exact formula is not published; this scale-free one is documented in ``isotropy_of``.
    """

    def __init__(self, on: str = "both"):
        if on not in ("query", "doc", "both"):
            raise ValueError(f"isotropy option on= must be 'query', 'doc' or 'both', got {on!r}")
        self.on = on

    def __call__(self, out: HeadOutput) -> torch.Tensor:
        if self.on == "query":
            return isotropy_of(out.query)
        if self.on == "doc":
            return isotropy_of(out.doc)
        return (isotropy_of(out.query) + isotropy_of(out.doc)) / 2


class Predictive:
    """Predictive MSE: ``mean((query - doc)^2)`` over elements, the head's query side predicting the document
    embedding (seed 004's ``L_pred = MSE(query + alpha*delta, doc)``). ``normalize`` compares unit vectors."""

    def __init__(self, normalize: bool = False):
        self.normalize = bool(normalize)

    def __call__(self, out: HeadOutput) -> torch.Tensor:
        q, d = out.query, out.doc
        if self.normalize:
            q, d = F.normalize(q, dim=-1), F.normalize(d, dim=-1)
        return F.mse_loss(q, d)


class ResidualL2:
    """Residual L2 penalty ``mean(delta^2)`` over elements (seed 004's lambda_residual term).

    Reads ``aux["delta"]`` (``on="delta"``, the default, as the seed) or ``aux["correction"]``
    (``on="correction"``, i.e. alpha*delta). A head without that aux tensor gets 0 (connected to
    the graph, so a composed loss still backpropagates): there is no residual to penalise.
    """

    def __init__(self, on: str = "delta"):
        if on not in ("delta", "correction"):
            raise ValueError(f"residual_l2 option on= must be 'delta' or 'correction', got {on!r}")
        self.on = on

    def __call__(self, out: HeadOutput) -> torch.Tensor:
        r = out.aux.get(self.on)
        if r is None:
            return out.query.sum() * 0.0 + 0.0  # a zero still connected to the graph
        return r.pow(2).mean()


class BarlowTwins:
    """Barlow Twins (Zbontar et al. 2021): cross-correlation of the batch-standardised query and document
    projections towards the identity: ``sum((1 - C_ii)^2) + lambd * sum_{i!=j} C_ij^2``.

    Uses ``aux["projection_q"]``/``aux["projection_d"]`` when a head provides them (the barlow head's
    projector), else ``query``/``doc``. ``lambd`` is the off-diagonal weight (paper: 5e-3).
    """

    def __init__(self, lambd: float = 5e-3, eps: float = 1e-5):
        self.lambd = float(lambd)
        self.eps = float(eps)

    def cross_correlation(self, out: HeadOutput) -> torch.Tensor:
        a = out.aux.get("projection_q", out.query)
        b = out.aux.get("projection_d", out.doc)
        a = (a - a.mean(0)) / (a.std(0, unbiased=False) + self.eps)
        b = (b - b.mean(0)) / (b.std(0, unbiased=False) + self.eps)
        return a.T @ b / a.shape[0]

    def __call__(self, out: HeadOutput) -> torch.Tensor:
        c = self.cross_correlation(out)
        diag = c.diagonal()
        on = (1 - diag).pow(2).sum()
        off = c.pow(2).sum() - diag.pow(2).sum()
        return on + self.lambd * off


@hookimpl
def register_losses(register):
    register("infonce_dot", InfoNCEDot)
    register("infonce_cos", InfoNCECos)
    register("isotropy", Isotropy)
    register("predictive", Predictive)
    register("residual_l2", ResidualL2)
    register("barlow", BarlowTwins)
