"""Test statistics the built-in checks share; plain functions, importable by any check.

``sign_flip_test``  one-sided paired randomization (sign-flip) test, seeded and vectorised
``holm``            Holm-Bonferroni step-down adjustment of a family of p-values
``mde``             minimum detectable mean difference of paired per-query differences (normal approximation)
``paired``          per-query values of a run and a baseline, aligned by query id
``trend``           least-squares linear or log-linear trend of a per-epoch series, and where it is headed
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Mapping, Sequence

import numpy as np

# Sign matrices are drawn in blocks of at most this many entries, so memory stays bounded (~32 MB of float64)
# whatever the number of queries and permutations; the blocks are drawn in a fixed order, so results are seeded.
_BLOCK = 1 << 22


def sign_flip_test(diffs: Sequence[np.ndarray], margin: float = 0.0, permutations: int = 10000, seed: int = 0) -> tuple[float, float]:
    """One-sided paired randomization test of ``H1: mean(diff) > margin``.

    ``diffs`` holds per-query differences (candidate - baseline), one array per dataset; the statistic
    is the macro average over datasets of the mean of ``diff - margin``. Under H0 each shifted difference
    is symmetric about 0, so its sign is flipped at random (independently per query). Returns
    (statistic + margin, p-value), the p-value counting the observed assignment:
    ``(1 + #{T* >= T}) / (1 + permutations)``. A non-inferiority test of ``mean(diff) > -m`` is
    ``sign_flip_test(diffs, margin=-m)``.
    """
    if permutations < 1:
        raise ValueError(f"sign_flip_test: permutations must be >= 1, got {permutations}")
    rng = np.random.default_rng(seed)
    shifted = [np.asarray(d, dtype=np.float64).ravel() - margin for d in diffs]
    if not shifted or any(d.size == 0 for d in shifted):
        raise ValueError("sign_flip_test: every dataset needs at least one per-query difference")
    observed = float(np.mean([d.mean() for d in shifted]))
    null = np.zeros(permutations)
    for d in shifted:
        rows = max(1, _BLOCK // d.size)
        for start in range(0, permutations, rows):
            stop = min(permutations, start + rows)
            signs = rng.integers(0, 2, size=(stop - start, d.size), dtype=np.int8).astype(np.float64) * 2.0 - 1.0
            null[start:stop] += signs @ d / d.size
    null /= len(shifted)
    p = (1 + int(np.sum(null >= observed - 1e-12))) / (1 + permutations)
    return observed + margin, p


def holm(pvalues: Mapping[str, float] | Sequence[float], alpha: float = 0.05):
    """Holm-Bonferroni step-down adjustment. Returns (adjusted p-values, rejected), each shaped like the input
    (a dict keyed like ``pvalues`` or a list). Adjusted: the i-th smallest of m p-values times (m - i + 1),
    made non-decreasing and capped at 1; a hypothesis is rejected when its adjusted p-value is < ``alpha``
    (the same strict rule the checks apply to unadjusted p-values). Controls the family-wise error rate."""
    keys: list = list(pvalues) if isinstance(pvalues, Mapping) else list(range(len(pvalues)))
    values = [float(pvalues[k]) for k in keys]
    m = len(values)
    order = sorted(range(m), key=lambda i: values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * values[i]))
        adjusted[i] = running
    rejected = [a < alpha for a in adjusted]
    if isinstance(pvalues, Mapping):
        return dict(zip(keys, adjusted)), dict(zip(keys, rejected))
    return adjusted, rejected


def z(q: float) -> float:
    """The standard normal quantile."""
    return NormalDist().inv_cdf(q)


def mde(diffs: np.ndarray | Sequence[np.ndarray], alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable effect of a one-sided test at level ``alpha`` with ``power``, normal approximation:
    ``(z_{1-alpha} + z_{power}) * se``, where ``se = sd / sqrt(n)`` of the per-query differences (sample sd,
    ddof 1). Given several arrays (datasets), ``se`` is that of their macro average:
    ``sqrt(sum(sd_i^2 / n_i)) / k``. NaN when a dataset has fewer than two queries."""
    single = isinstance(diffs, np.ndarray) or not len(diffs) or np.ndim(diffs[0]) == 0
    arrays = [np.asarray(diffs, dtype=np.float64).ravel()] if single else [np.asarray(d, dtype=np.float64).ravel() for d in diffs]
    if any(a.size < 2 for a in arrays):
        return float("nan")
    se = math.sqrt(sum(float(a.var(ddof=1)) / a.size for a in arrays)) / len(arrays)
    return (z(1 - alpha) + z(power)) * se


def paired(candidate: Mapping[str, float], baseline: Mapping[str, float], what: str = "") -> tuple[list[str], np.ndarray, np.ndarray]:
    """(query ids, candidate values, baseline values), aligned by query id. Raises ``ValueError`` naming what
    differs when the two do not hold the same queries (pairing unlike sets would compare unlike things)."""
    missing = sorted(set(baseline) - set(candidate))
    extra = sorted(set(candidate) - set(baseline))
    if missing or extra:
        raise ValueError(
            f"{what + ': ' if what else ''}query ids differ: {len(missing)} only in the baseline (e.g. {missing[:3]}), "
            f"{len(extra)} only in the run (e.g. {extra[:3]})"
        )
    qids = sorted(baseline)
    return qids, np.array([candidate[q] for q in qids], dtype=np.float64), np.array([baseline[q] for q in qids], dtype=np.float64)


def trend(epochs: Sequence[float], values: Sequence[float], kind: str = "linear") -> dict:
    """Least-squares trend of ``values`` over ``epochs``: ``kind`` "linear" (value = a + b * epoch) or "log-linear"
    (log value = a + b * epoch, i.e. a constant growth factor per epoch; needs positive values, else the linear fit
    is used). Returns {"kind" (the fit used), "slope" (per epoch: an increment for linear, the factor exp(b) for
    log-linear), "at" (epoch -> fitted value) and "crossing" (bound -> the epoch where the fit reaches it; inf
    when it never does)}."""
    x = np.asarray(epochs, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if kind not in ("linear", "log-linear"):
        raise ValueError(f"trend: kind must be 'linear' or 'log-linear', got {kind!r}")
    if kind == "log-linear" and np.all(y > 0):
        b, a = (float(v) for v in np.polyfit(x, np.log(y), 1))

        def crossing(bound: float) -> float:  # the epoch where the fitted curve reaches bound (inf: never)
            return (math.log(bound) - a) / b if b > 1e-12 and bound > 0 else math.inf

        return {"kind": kind, "slope": math.exp(b), "at": lambda e: math.exp(a + b * e), "crossing": crossing}
    b, a = (float(v) for v in np.polyfit(x, y, 1))
    return {"kind": "linear", "slope": b, "at": lambda e: a + b * e,
            "crossing": lambda bound: (bound - a) / b if b > 1e-12 else math.inf}
