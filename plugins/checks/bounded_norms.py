"""bounded_norms: embedding norms and positive similarity stay bounded and do not keep growing (seed 002).

Two rules: every epoch within a bound (a multiple of a reference epoch, and an absolute bound), and no steady
growth: a gated quantity that rose at every trained epoch fails when its least-squares (linear or log-linear)
trend reaches that bound within ``horizon_epochs`` more epochs, so a run too short to cross the bound yet is
still caught (e.g. a single learnable scale under raw-dot InfoNCE: norms 1.0 -> 1.69x in 4 epochs)."""
from __future__ import annotations

from harness import hookimpl
from harness.checks import BaseCheck, fmt, is_finite, need_run

from ._stats import trend as fit_trend

TRENDS = ("linear", "log-linear")


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
        # steady growth: a gated quantity that rose at every trained epoch (>= 1) fails when its least-squares trend
        # over those epochs reaches the bound (growth or absolute, whichever is lower) within horizon_epochs more epochs
        "horizon_epochs": 10,  # 0 turns the trend rule off
        "trend": "linear",  # or "log-linear" (a constant growth factor per epoch; flags exponential growth sooner)
        "trend_min_epochs": 3,  # fewer trained epochs than this: no trend is fitted
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
            gate_norms_of_cos_heads=False, horizon_epochs=10, trend="linear", trend_min_epochs=3):
        if trend not in TRENDS:
            raise ValueError(f"bounded_norms: threshold trend must be one of {', '.join(repr(t) for t in TRENDS)}, got {trend!r}")
        run = need_run(self, candidate)
        epochs = run.epochs
        nums = [e.epoch for e in epochs]
        # raw-dot positive similarity is gated; a cosine is bounded anyway (as the trainer measured it, per epoch)
        sim = epochs[nums.index(ref_epoch)].pos_sim_by if ref_epoch in nums else epochs[-1].pos_sim_by
        gate_norms = run.similarity == "dot" or gate_norms_of_cos_heads
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
        trends = self._trends(nums, series, rules, sim, horizon_epochs, trend, trend_min_epochs)
        details = {"similarity_scored": run.similarity, "similarity_of_loss": sim, "norms_gated": gate_norms, "epochs": nums,
                   **{q.replace(" ", "_"): v for q, v in series.items()},
                   "trends": {q: {k: v for k, v in t.items() if k != "window"} for q, t in trends.items()}}
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
        crossing = [(q, t) for q, t in trends.items() if t["crosses"]]
        if crossing:
            q, t = min(crossing, key=lambda qt: qt[1]["crossing_epoch"])
            kind = " (raw dot products)" if q == "positive similarity" else " (mean, scored by dot product)"
            ref_i = rules[q][0]
            trail = " -> ".join(fmt(v) for v in t["window"])
            if ref_i is not None and nums[ref_i] < t["from_epoch"]:
                trail = f"{fmt(series[q][ref_i])} at epoch {nums[ref_i]}, then {trail}"
            step = (f"x{t['slope']:.3g} per epoch" if t["trend"] == "log-linear" else f"{t['slope']:+.3g} per epoch")
            others = [o for o, _ in crossing if o != q]
            also = f"; {', '.join(others)} also heads past its bound" if others else ""
            what = (f"{q}{kind} rose at every trained epoch ({trail} over epochs {t['from_epoch']}-{nums[-1]}), and its "
                    f"least-squares {t['trend']} trend ({step}) reaches {fmt(t['projected'])} by epoch {t['at_epoch']}, past "
                    f"the bound {t['bound_text']} at about epoch {fmt(t['crossing_epoch'], 3)} (horizon {horizon_epochs} more "
                    f"epochs; no single epoch is out of bounds yet: the growth has not stopped){also}")
            return self.failed(what, t["projected"], t["bound"], nums[-1], quantity=q, rule="trend", **details)
        last = len(nums) - 1
        summary = (f"positive similarity {fmt(series['positive similarity'][last])} ({sim}), query/document norms "
                   f"{fmt(series['query norm'][last])}/{fmt(series['document norm'][last])} at epoch {nums[last]}")
        if not gate_norms:
            summary += " (scored by cosine: norms reported, not gated)"
        rising = [q for q, t in trends.items() if t["rising"]]
        if rising:
            summary += (f"; {', '.join(rising)} rose at every trained epoch but the {trend} trend stays within the bound "
                        f"for {horizon_epochs} more epochs")
        return self.passed(summary, series["positive similarity"][last], max_pos_sim, nums[last], **details)

    @staticmethod
    def _trends(nums, series, rules, sim, horizon, kind, min_epochs) -> dict:
        """Per gated quantity: did it rise at every trained epoch, and where does its fitted trend go?

        The trend is fitted on trained epochs only (epoch >= 1, and >= ref_epoch for the positive similarity):
        the jump from a freshly initialised head (epoch 0) to its first trained epoch says nothing about whether
        the growth goes on. The bound is the per-epoch rule's: growth x the reference epoch, or the absolute one."""
        out: dict = {}
        if not horizon or horizon <= 0:
            return out
        for q, (ref_i, growth, limit) in rules.items():
            if q == "positive similarity" and sim != "dot":  # a cosine is bounded by 1: only raw dot products can run away
                continue
            first = max(1, nums[ref_i]) if ref_i is not None else 1
            idx = [i for i, e in enumerate(nums) if e >= first]
            xs, ys = [nums[i] for i in idx], [series[q][i] for i in idx]
            if len(xs) < max(2, min_epochs) or not all(is_finite(v) for v in ys):
                continue
            rising = all(b > a for a, b in zip(ys, ys[1:]))
            bound, bound_text = limit, f"max {fmt(limit)}"
            ref = series[q][ref_i] if ref_i is not None else float("nan")
            if is_finite(ref) and abs(ref) > 1e-12 and growth * abs(ref) < limit:
                bound, bound_text = growth * abs(ref), f"{fmt(growth)}x epoch {nums[ref_i]} = {fmt(growth * abs(ref))}"
            entry = {"rising": rising, "from_epoch": xs[0], "bound": bound, "bound_text": bound_text, "crosses": False,
                     "window": ys}
            if rising:
                t = fit_trend(xs, ys, kind)
                target = xs[-1] + horizon
                projected = t["at"](target)
                entry.update(trend=t["kind"], slope=t["slope"], at_epoch=target, projected=projected,
                             crossing_epoch=max(t["crossing"](bound), float(xs[-1])), crosses=bool(projected > bound))
            out[q] = entry
        return out


@hookimpl
def register_checks(register):
    check = BoundedNorms()
    register("bounded_norms", check, description=check.description)
