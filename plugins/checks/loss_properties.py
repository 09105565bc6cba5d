"""loss_properties: no configured loss can be lowered just by scaling embeddings up (checked with
hypothesis before any training; raw-dot InfoNCE fails it, cosine InfoNCE passes)."""
from __future__ import annotations

from harness import hookimpl
from harness.checks import BaseCheck, fmt
from harness.components import build_loss
from harness.types import HeadOutput

from .similarity_consistency import candidate_losses


def batches():
    """(queries, noise, noise level, scale, which side): small batches on a 1/8 grid, so a counterexample
    is readable and batch statistics never hinge on a 1e-5 epsilon. Each matrix is one draw of bytes, byte v
    giving the grid value 0, +1/8, -1/8, +2/8, -2/8, ..., +1, -1 for v mod 17 = 0, 1, 2, ..., 16, so shrinking
    (toward smaller bytes) moves every value toward 0. A draw per element made the search cost ~7 ms per example,
    almost all of it in hypothesis's bookkeeping."""
    from functools import lru_cache

    from hypothesis import strategies as st

    @lru_cache(maxsize=None)  # one strategy per shape, not one per example
    def of_shape(shape):
        b, d = shape
        rows = st.binary(min_size=b * d, max_size=b * d).map(lambda raw: _grid(raw, d))
        return st.tuples(rows, rows, st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.sampled_from([1.5, 2.0, 4.0, 8.0]),
                         st.sampled_from(["both", "query", "doc"]))

    return st.tuples(st.integers(2, 6), st.integers(2, 8)).flatmap(of_shape)


def _grid(raw: bytes, d: int) -> list[list[float]]:
    values = [(1 if k % 2 else -1) * ((k + 1) // 2) / 8 for k in (v % 17 for v in raw)]
    return [values[i : i + d] for i in range(0, len(values), d)]


def outputs(example):
    """Unit-norm head outputs whose documents are their queries plus noise (a head at initialisation on a
    normalising encoder), and the same outputs with one or both sides scaled. ``None``: degenerate rows."""
    import torch
    import torch.nn.functional as F


    rows, noise, level, scale, side = example
    x = torch.tensor(rows, dtype=torch.float64)
    y = x + level * torch.tensor(noise, dtype=torch.float64)
    if (x.norm(dim=1) < 1e-6).any() or (y.norm(dim=1) < 1e-6).any():
        return None
    q, d = F.normalize(x, dim=1), F.normalize(y, dim=1)
    sq = q * scale if side in ("both", "query") else q
    sd = d * scale if side in ("both", "doc") else d
    # Predictor heads score a prediction of the document from the query side: it scales with the queries.
    return HeadOutput(q, d, q, d, {"prediction": q}), HeadOutput(sq, sd, q, d, {"prediction": sq})


class LossProperties(BaseCheck):
    name = "loss_properties"
    description = "no configured loss can be lowered just by scaling embeddings up (hypothesis, before training)"
    stage = "static"
    defaults = {"max_examples": 300, "min_rel_decrease": 0.01, "min_abs_decrease": 1e-4}
    cause = (
        "the loss falls when embeddings are merely scaled up, which changes no ranking, so the optimiser can lower "
        "it by growing magnitudes instead of learning (seed 002: InfoNCE on raw dot products, positive similarity "
        "32 -> 228, NDCG@10 -59%)"
    )
    fix = "score pairs by cosine inside the loss (infonce_cos with a temperature) or add a norm penalty, and retrieve with the same similarity"

    def run(self, candidate, max_examples=300, min_rel_decrease=0.01, min_abs_decrease=1e-4):
        from hypothesis import HealthCheck, Phase, find, settings
        from hypothesis.errors import NoSuchExample


        specs = {n: s for n, s in candidate_losses(candidate.config).items() if float(s.get("weight", 1.0)) != 0}
        if not specs:
            return self.not_applicable("the candidate trains no loss")
        found, checked = {}, []
        for name, spec in specs.items():
            loss = build_loss(name, spec)

            def lowered(example, loss=loss):
                pair = outputs(example)
                if pair is None:
                    return False
                before, after = (float(loss(o)) for o in pair)
                return before - after > max(min_rel_decrease * abs(before), min_abs_decrease)

            config = settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
                              suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink])
            try:
                example = find(batches(), lowered, settings=config)
            except NoSuchExample:
                checked.append(name)
                continue
            before, after = (float(loss(o)) for o in outputs(example))
            rows, _, level, scale, side = example
            found[name] = {"before": before, "after": after, "rel_decrease": (before - after) / abs(before) if before else float("inf"),
                           "scale": scale, "side": side, "batch": len(rows), "dim": len(rows[0]), "noise": level, "example": rows}
        details = {"scale_exploitable": found, "scale_invariant_or_increasing": checked, "max_examples": max_examples}
        if found:
            name, f = next(iter(found.items()))
            sides = {"both": "queries and documents are", "query": "queries are", "doc": "documents are"}[f["side"]]
            others = f" (also: {', '.join(n for n in found if n != name)})" if len(found) > 1 else ""
            return self.failed(
                f"loss {name!r} falls from {fmt(f['before'])} to {fmt(f['after'])} ({f['rel_decrease']:.0%} lower) when "
                f"the {sides} only scaled by {fmt(f['scale'])}, which changes no ranking (hypothesis example: "
                f"{f['batch']}x{f['dim']} batch){others}; bound: no decrease beyond {fmt(min_rel_decrease)} relative / {fmt(min_abs_decrease)} absolute",
                f["rel_decrease"], min_rel_decrease, None, **details,
            )
        return self.passed(f"{', '.join(checked)}: no scaling of queries or documents lowers the loss in {max_examples} "
                           f"hypothesis examples", 0.0, min_rel_decrease, None, **details)


@hookimpl
def register_checks(register):
    check = LossProperties()
    register("loss_properties", check, description=check.description)
