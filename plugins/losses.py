"""Built-in losses, composable with weights from configuration (``losses = {name: {"weight": w, **options}}``).

Every loss is ``factory(**options) -> loss`` with ``loss(out: HeadOutput) -> scalar tensor``; each works
with its defaults on any ``HeadOutput`` whose ``query``/``doc``/``input_query``/``input_doc`` are (B, D).
Contrastive losses also expose ``scores(out) -> (B, B)``, the similarity they use (positives on the
diagonal, before the temperature), which telemetry reports as positive/negative similarity.
"""
from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F

from harness import hookimpl
from harness.types import HeadOutput


class InfoNCEDot:
    """InfoNCE (in-batch and the trainer's hard negatives) on raw dot products of unnormalised embeddings (seed 002's original).

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
        """(B, C): each query against the batch's positives (row i's on the diagonal), then the hard negatives."""
        return out.query @ out.columns().T

    def __call__(self, out: HeadOutput) -> torch.Tensor:
        logits = self.scores(out) / self.temperature
        if out.exclude is not None:  # a column that is a judged document of the row's query is no negative
            logits = logits.masked_fill(out.exclude, float("-inf"))
        b = logits.shape[0]
        labels = torch.arange(b, device=logits.device)
        loss = F.cross_entropy(logits, labels)
        if self.symmetric:
            square = logits[:, :b]
            loss = (loss + F.cross_entropy(square.T, labels)) / 2
        return loss


class InfoNCECos(InfoNCEDot):
    """InfoNCE, in-batch negatives, on cosine similarity / temperature (seed 002's fix): norms cannot help."""

    similarity = "cos"

    def scores(self, out: HeadOutput) -> torch.Tensor:
        return F.normalize(out.query, dim=-1) @ F.normalize(out.columns(), dim=-1).T


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


def isotropy_cov_of(x: torch.Tensor) -> torch.Tensor:
    """``||C - v I||_F / D`` for ``C`` the (unbiased) covariance of the rows and ``v`` the variance of all
    entries: the seeds' isotropy (ragcun ``scripts/train_respred.py``, ``scripts/train_asymmetric.py``,
    ``scripts/train/isotropic.py``). Centred, not scale-free (it scales with ``x``), and blind to a
    collapse onto one point (a constant batch scores 0); the seeds' values were ~1e-4 and read "0.0000"."""
    centered = x - x.mean(0, keepdim=True)
    cov = centered.T @ centered / (x.shape[0] - 1)
    eye = torch.eye(cov.shape[0], device=x.device, dtype=x.dtype)
    return torch.linalg.matrix_norm(cov - x.var() * eye) / cov.shape[0]


ISOTROPY_FORMS = {"second_moment": isotropy_of, "cov": isotropy_cov_of}


class Isotropy:
    """Isotropy of the scored embeddings: covariance of the normalised batch towards a multiple of I.

    ``on``: "query" (the head's query side, e.g. a predictor's output), "doc", "both" (mean of the two),
    or "joint" (one batch of the query and document rows stacked, as seed 004's code does).
    ``form``: "second_moment" (default, ``isotropy_of``: scale-free, catches collapse) or "cov" (the seeds'
    ``||Cov - var I||_F / D``, ``isotropy_cov_of``).
    """

    def __init__(self, on: str = "both", form: str = "second_moment"):
        if on not in ("query", "doc", "both", "joint"):
            raise ValueError(f"isotropy option on= must be 'query', 'doc', 'both' or 'joint', got {on!r}")
        if form not in ISOTROPY_FORMS:
            raise ValueError(f"isotropy option form= must be one of {', '.join(map(repr, ISOTROPY_FORMS))}, got {form!r}")
        self.on = on
        self.form = form
        self.of = ISOTROPY_FORMS[form]

    def __call__(self, out: HeadOutput) -> torch.Tensor:
        if self.on == "query":
            return self.of(out.query)
        if self.on == "doc":
            return self.of(out.doc)
        if self.on == "joint":
            return self.of(torch.cat([out.query, out.doc]))
        return (self.of(out.query) + self.of(out.doc)) / 2


class Predictive:
    """Predictive MSE: ``mean((query - doc)^2)`` over elements, the head's query side predicting the document
    embedding (seed 004's ``L_pred = MSE(query + alpha*delta, doc)``). ``normalize`` compares unit vectors.

    ``source``: "query" (the scored query side) or "prediction" (``aux["prediction"]``, for heads whose
    retrieval does not use their predictor, e.g. ``respred``/``isopred`` with ``projection=True``).
    ``stop_grad``: no gradient through the document side (the seeds' ``pos_emb.detach()``).
    """

    def __init__(self, normalize: bool = False, source: str = "query", stop_grad: bool = False):
        if source not in ("query", "prediction"):
            raise ValueError(f"predictive option source= must be 'query' or 'prediction', got {source!r}")
        self.normalize = bool(normalize)
        self.source = source
        self.stop_grad = bool(stop_grad)

    def __call__(self, out: HeadOutput) -> torch.Tensor:
        q, d = out.query, out.doc
        if self.source == "prediction":
            if "prediction" not in out.aux:
                raise ValueError("predictive: source='prediction' needs a head that emits aux['prediction'] "
                                 "(respred or isopred with projection=True); use source='query' otherwise")
            q = out.aux["prediction"]
        if self.stop_grad:
            d = d.detach()
        if self.normalize:
            q, d = F.normalize(q, dim=-1), F.normalize(d, dim=-1)
        return F.mse_loss(q, d)


class ResidualL2:
    """Residual L2 penalty ``mean(delta^2)`` over elements (seed 004's lambda_residual term).

    Reads ``aux["delta"]`` (``on="delta"``, the default, as the seed) or ``aux["correction"]``
    (``on="correction"``, i.e. alpha*delta). A head without that aux tensor gets 0 (connected to
    the graph, so a composed loss still backpropagates): there is no residual to penalise.
    ``reduction``: "mean" (over elements) or "row_sum" (``mean_batch ||delta||^2``, D times larger: the
    seed's code, ragcun ``scripts/train_respred.py``).
    """

    def __init__(self, on: str = "delta", reduction: str = "mean"):
        if on not in ("delta", "correction"):
            raise ValueError(f"residual_l2 option on= must be 'delta' or 'correction', got {on!r}")
        if reduction not in ("mean", "row_sum"):
            raise ValueError(f"residual_l2 option reduction= must be 'mean' or 'row_sum', got {reduction!r}")
        self.on = on
        self.reduction = reduction

    def __call__(self, out: HeadOutput) -> torch.Tensor:
        r = cast("torch.Tensor | None", out.aux.get(self.on))  # `on` names an Aux key
        if r is None:
            return out.query.sum() * 0.0 + 0.0  # a zero still connected to the graph
        sq = r.pow(2)
        return sq.sum(-1).mean() if self.reduction == "row_sum" else sq.mean()


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
