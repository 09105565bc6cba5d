"""Quantities that reveal how a head fails, and the JSON form of a ``TrainRun``.

``run_to_dict``/``run_from_dict`` round-trip a ``harness.types.TrainRun``; NaN floats are written as
``null`` so the file is strict JSON. ``save_run``/``load_run`` write and read ``telemetry.json``.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from harness.files import write_atomic
from harness.metrics import rank
from harness.types import EpochRecord, TrainRun

FORMAT = 1


# -- statistics ----------------------------------------------------------------------------------
def norm_stats(x: torch.Tensor) -> dict[str, float]:
    """Mean, max and std of the row L2 norms."""
    n = x.detach().float().norm(dim=-1)
    return {"mean": n.mean().item(), "max": n.max().item(), "std": n.std(unbiased=False).item()}


def rankme(x: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023): ``exp(H(p))``, ``p`` the singular values of ``x`` normalised to sum 1
    (``+eps`` as the paper). Between 1 (all rows on a line) and ``min(N, D)``."""
    x = x.detach().double()
    gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T  # same non-zero spectrum, small and fast
    s = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    p = s / s.sum() + eps
    return math.exp(-(p * p.log()).sum().item())


def alignment(q: torch.Tensor, d: torch.Tensor, alpha: float = 2.0) -> float:
    """Wang & Isola (2020): ``E ||f(x) - f(y)||^alpha`` over positive pairs of L2-normalised vectors
    (0 = positives coincide; 4 = opposite)."""
    q, d = F.normalize(q.detach().double(), dim=-1), F.normalize(d.detach().double(), dim=-1)
    return (q - d).norm(dim=-1).pow(alpha).mean().item()


def uniformity(x: torch.Tensor, t: float = 2.0) -> float:
    """Wang & Isola (2020): ``log E exp(-t ||f(x) - f(y)||^2)`` over distinct pairs of L2-normalised vectors
    (lower = more uniform on the sphere; 0 = all vectors equal)."""
    z = F.normalize(x.detach().double(), dim=-1)
    i, j = torch.triu_indices(len(z), len(z), offset=1)
    sq = (2 - 2 * z @ z.T)[i, j].clamp_min(0)
    return torch.logsumexp(-t * sq, 0).item() - math.log(sq.numel())


def residual_stats(aux: dict[str, torch.Tensor], input_query: torch.Tensor) -> dict[str, float] | None:
    """Residual heads' ``aux``: delta mean/max (absolute, elementwise), alpha, |alpha*delta| mean and max,
    and ``correction_rel`` = mean correction norm / mean input-query norm. ``None`` without a correction."""
    if "correction" not in aux:
        return None
    corr = aux["correction"].detach().float()
    out = {
        "correction_abs_mean": corr.abs().mean().item(),
        "correction_max": corr.abs().max().item(),
        "correction_rel": (corr.norm(dim=-1).mean() / input_query.detach().float().norm(dim=-1).mean().clamp_min(1e-12)).item(),
    }
    if "delta" in aux:
        delta = aux["delta"].detach().float()
        out.update(delta_mean=delta.abs().mean().item(), delta_max=delta.abs().max().item())
    if "alpha" in aux:
        out["alpha"] = aux["alpha"].detach().float().mean().item()
    return out


def top10_overlap(run: dict[str, dict[str, float]], reference: dict[str, list[str]]) -> float:
    """Mean fraction of each query's top 10 that is also in the reference top 10."""

    shares = [len(set(rank(docs)[:10]) & set(reference[q])) / max(len(reference[q]), 1) for q, docs in run.items() if q in reference]
    return sum(shares) / len(shares) if shares else float("nan")


# -- JSON ----------------------------------------------------------------------------------------
def _clean(value: Any) -> Any:
    """JSON-safe: NaN -> None, +/-inf -> "inf"/"-inf" (a diverged run's telemetry must still be written)."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)  # float("inf") reads the "inf" strings back


def _floats(values: list) -> list[float]:
    return [_nan(v) for v in values]


def run_to_dict(run: TrainRun) -> dict:
    """A ``TrainRun`` as plain JSON-safe data (NaN -> None)."""
    d = dataclasses.asdict(run)
    d["format"] = FORMAT
    return _clean(d)


def epoch_from_dict(d: dict) -> EpochRecord:
    fields = {f.name for f in dataclasses.fields(EpochRecord)}
    unknown = set(d) - fields
    if unknown:
        raise ValueError(f"telemetry epoch has unknown keys {sorted(unknown)}; known: {sorted(fields)}")
    d = dict(d)
    for key in ("pos_sim", "neg_sim", "grad_norm", "rankme", "alignment", "uniformity"):
        if key in d:
            d[key] = _nan(d[key])
    for key in ("loss", "q_norm", "d_norm"):
        if key in d:
            d[key] = {k: _nan(v) for k, v in d[key].items()}
    if d.get("residual") is not None:
        d["residual"] = {k: _nan(v) for k, v in d["residual"].items()}
    if d.get("trace"):
        d["trace"] = {k: _floats(v) for k, v in d["trace"].items()}
    if d.get("steps"):
        d["steps"] = [{k: _nan(v) if v is None or isinstance(v, str) else v for k, v in s.items()} for s in d["steps"]]
    return EpochRecord(**d)


def run_from_dict(d: dict) -> TrainRun:
    """Inverse of ``run_to_dict``; raises ``ValueError`` naming an unknown key."""
    d = dict(d)
    d.pop("format", None)
    fields = {f.name for f in dataclasses.fields(TrainRun)}
    unknown = set(d) - fields
    if unknown:
        raise ValueError(f"telemetry has unknown keys {sorted(unknown)}; known: {sorted(fields)}")
    d["epochs"] = [epoch_from_dict(e) for e in d.get("epochs", [])]
    if "baseline_rankme" in d:
        d["baseline_rankme"] = _nan(d["baseline_rankme"])
    return TrainRun(**d)


def save_run(run: TrainRun, path: Path) -> Path:
    path = Path(path)
    write_atomic(path, json.dumps(run_to_dict(run), indent=1, allow_nan=False).encode())
    return path


def load_run(path: Path) -> TrainRun:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read telemetry {path}: {exc}") from exc
    return run_from_dict(data)
