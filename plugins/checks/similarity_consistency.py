"""similarity_consistency: every loss that scores pairs ranks them exactly as retrieval will (seed 002, lesson 3)."""
from __future__ import annotations

import torch

from harness import hookimpl
from harness.checks import BaseCheck
from harness.components import build_head, build_loss
from harness.retrieval import similarity_matrix
from harness.types import HeadOutput


def candidate_losses(config: dict) -> dict[str, dict]:
    """Every loss of the candidate's training stages (pretraining first), name -> options with weight."""
    out = {}
    for stage in ((config.get("pretrain") or {}).get("losses") or {}, config.get("losses") or {}):
        for name, spec in stage.items():
            out[name] = spec if isinstance(spec, dict) else {"weight": spec}
    return out


def head_similarity(config: dict, dim: int = 32) -> str:
    """The similarity the candidate's head retrieves with, from the head itself (built, never trained)."""

    return build_head(config["head"], dim, config.get("head_options") or {}).similarity


class SimilarityConsistency(BaseCheck):
    name = "similarity_consistency"
    description = "losses that score pairs rank them as retrieval does (train/eval similarity consistency)"
    stage = "static"
    defaults = {"min_agreement": 0.99, "probe_rows": 256, "probe_dim": 32, "seed": 0}
    cause = (
        "the loss scores pairs with one similarity while retrieval ranks with another, so what training improves is "
        "not what evaluation measures (seed 002, lesson 3: train with cosine, evaluate with dot, or the reverse)"
    )
    fix = "train with the similarity you retrieve with: head similarity cos with infonce_cos, or dot with infonce_dot (and see bounded_norms)"

    def run(self, candidate, min_agreement=0.99, probe_rows=256, probe_dim=32, seed=0):

        config = candidate.config
        losses = {n: build_loss(n, spec) for n, spec in candidate_losses(config).items()}
        scoring = {n: loss for n, loss in losses.items() if hasattr(loss, "scores")}
        if not scoring:
            return self.not_applicable("no configured loss scores (query, document) pairs")
        sim = head_similarity(config, probe_dim)
        # Probe vectors whose norms vary, as a trained head's will: a cosine and a dot ranking then differ.
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(probe_rows, probe_dim, generator=g) * torch.empty(probe_rows, 1).uniform_(0.25, 4.0, generator=g)
        d = torch.randn(probe_rows, probe_dim, generator=g) * torch.empty(probe_rows, 1).uniform_(0.25, 4.0, generator=g)
        out = HeadOutput(q, d, q, d)
        reference = similarity_matrix(q, d, sim).argsort(dim=1, descending=True)
        agreement = {}
        for name, loss in scoring.items():
            with torch.no_grad():
                order = loss.scores(out).argsort(dim=1, descending=True)
            agreement[name] = (order == reference).all(dim=1).float().mean().item()
        details = {"head_similarity": sim, "agreement": agreement,
                   "loss_similarity": {n: getattr(loss, "similarity", "?") for n, loss in scoring.items()}}
        worst = min(agreement, key=agreement.get)
        if agreement[worst] < min_agreement:
            return self.failed(
                f"loss {worst!r} ({details['loss_similarity'][worst]}) ranks documents like retrieval "
                f"({sim}, head {config['head']!r}) for only {agreement[worst]:.0%} of {probe_rows} probe queries "
                f"with varied norms (bound >= {min_agreement:.0%})",
                agreement[worst], min_agreement, None, **details,
            )
        return self.passed(", ".join(f"{n} ranks like retrieval ({sim}) for {a:.0%} of probe queries" for n, a in agreement.items()),
                           agreement[worst], min_agreement, None, **details)


@hookimpl
def register_checks(register):
    check = SimilarityConsistency()
    register("similarity_consistency", check, description=check.description)
