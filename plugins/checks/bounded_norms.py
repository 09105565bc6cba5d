"""bounded_norms: embedding norms and positive similarity stay bounded and do not keep growing (seed 002)."""
from __future__ import annotations

from harness import hookimpl
from plugins.checks import BaseCheck, fmt, is_finite, need_run


def loss_similarity(config: dict) -> str:
    """The similarity telemetry's pos/neg similarity is measured with: the first contrastive loss's
    (as ``harness.train`` does), cosine when no configured loss scores pairs."""
    from harness.plugins import get

    stages = [((config.get("pretrain") or {}).get("losses") or {}), config.get("losses") or {}]
    for stage in stages:
        for name in stage:
            factory = get("losses", name).factory
            if hasattr(factory, "scores"):
                return getattr(factory, "similarity", "cos")
    return "cos"


class BoundedNorms(BaseCheck):
    name = "bounded_norms"
    description = "embedding norms and positive similarity stay bounded and do not keep growing"
    defaults = {
        "max_norm_growth": 2.0,  # mean norm of the scored vectors, at most this many times the untrained head's (epoch 0)
        "max_pos_sim_growth": 2.0,  # raw-dot positive similarity, at most this many times its value at ref_epoch
        "ref_epoch": 1,  # the first trained epoch (an untrained head's positive similarity is ~0)
        "max_norm": 10.0,  # absolute bound on the mean norm (the built-in encoders emit unit vectors)
        "max_pos_sim": 10.0,  # absolute bound on the mean positive similarity (a cosine is <= 1 anyway)
        "gate_norms_of_cos_heads": False,  # a head scored by cosine cannot rank by magnitude: its norms are only reported
    }
    cause = (
        "InfoNCE on raw dot products of unnormalised embeddings lets the head lower the loss by growing magnitudes "
        "instead of learning angles (seed 002: positive similarity 32 -> 228 in 3 epochs, NDCG@10 -59%)"
    )
    fix = (
        "L2-normalise both sides and train with cosine similarity and a temperature (loss infonce_cos, head "
        "similarity cos), and retrieve with the same similarity"
    )

    def run(self, candidate, max_norm_growth=2.0, max_pos_sim_growth=2.0, ref_epoch=1, max_norm=10.0, max_pos_sim=10.0,
            gate_norms_of_cos_heads=False):
        run = need_run(self, candidate)
        epochs = run.epochs
        sim = loss_similarity(run.config)
        gate_norms = run.similarity == "dot" or gate_norms_of_cos_heads
        nums = [e.epoch for e in epochs]
        series = {
            "query norm": [e.q_norm.get("mean", float("nan")) for e in epochs],
            "document norm": [e.d_norm.get("mean", float("nan")) for e in epochs],
            "positive similarity": [e.pos_sim for e in epochs],
        }
        # quantity -> (reference index for growth or None, growth bound, absolute bound)
        rules = {"positive similarity": (nums.index(ref_epoch) if sim == "dot" and ref_epoch in nums else None,
                                         max_pos_sim_growth, max_pos_sim)}
        if gate_norms:
            for q in ("query norm", "document norm"):
                rules[q] = (0 if nums and nums[0] == 0 else None, max_norm_growth, max_norm)
        violations = []  # (epoch, quantity, value, bound text)
        for q, (ref_i, growth, limit) in rules.items():
            for i, epoch in enumerate(nums):
                value = series[q][i]
                if not is_finite(value):
                    continue
                if abs(value) > limit:
                    violations.append((epoch, q, value, f"max {fmt(limit)}"))
                elif ref_i is not None and i > ref_i:
                    ref = series[q][ref_i]
                    if is_finite(ref) and abs(ref) > 1e-12 and abs(value) > growth * abs(ref):
                        violations.append((epoch, q, value, f"{fmt(growth)}x epoch {nums[ref_i]} = {fmt(growth * abs(ref))}"))
        details = {"similarity_scored": run.similarity, "similarity_of_loss": sim, "norms_gated": gate_norms, "epochs": nums,
                   **{q.replace(" ", "_"): v for q, v in series.items()}}
        if violations:
            epoch, q, value, bound = min(violations, key=lambda v: v[0])
            ref_i = rules[q][0] if rules[q][0] is not None else 0
            trail = " -> ".join(fmt(v) for v in series[q][ref_i:])
            kind = " (raw dot products)" if q == "positive similarity" else " (mean, scored by dot product)"
            others = sorted({v[1] for v in violations} - {q})
            also = f"; also out of bounds: {', '.join(others)}" if others else ""
            what = (f"{q}{kind} went {trail} over epochs {nums[ref_i]}-{nums[-1]}, {fmt(value)} at epoch {epoch} "
                    f"(bound {bound}){also}")
            return self.failed(what, value, bound, epoch, quantity=q, violations=len(violations), **details)
        last = len(nums) - 1
        summary = (f"positive similarity {fmt(series['positive similarity'][last])} ({sim}), query/document norms "
                   f"{fmt(series['query norm'][last])}/{fmt(series['document norm'][last])} at epoch {nums[last]}")
        if not gate_norms:
            summary += " (scored by cosine: norms reported, not gated)"
        return self.passed(summary, series["positive similarity"][last], max_pos_sim, nums[last], **details)


@hookimpl
def register_checks(register):
    check = BoundedNorms()
    register("bounded_norms", check, description=check.description)
