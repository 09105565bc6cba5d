"""finite: every number the run reports (losses, norms, similarities, gradients, scores) is finite, at every
training step (``EpochRecord.trace``) as well as in each epoch's telemetry, and training was not stopped for
a non-finite value (``TrainRun.stopped``)."""
from __future__ import annotations

import math

from harness import hookimpl
from harness.checks import BaseCheck, fmt, need_run


def _numbers(record) -> dict[str, float]:
    out = {}
    for group in ("loss", "q_norm", "d_norm", "ndcg10", "top10_overlap"):
        for k, v in (getattr(record, group) or {}).items():
            out[f"{group}.{k}"] = v
    for k, v in (record.residual or {}).items():
        out[f"residual.{k}"] = v
    for k in ("pos_sim", "neg_sim", "grad_norm", "rankme", "alignment", "uniformity"):
        out[k] = getattr(record, k)
    return out


# Quantities that may be NaN meaning "not measured" (no gradient at epoch 0 or for a frozen head).
OPTIONAL_NAN = {"grad_norm"}


def _bad(value) -> bool:
    """Non-finite, or missing (a NaN written to JSON may come back as null)."""
    if value is None:
        return True
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def describe(key: str) -> str:
    """A trace key as people say it: loss_total -> 'the total loss', loss_isotropy -> "loss component 'isotropy'"."""
    if key == "loss_total":
        return "the total loss"
    if key.startswith("loss_"):
        return f"loss component {key[5:]!r}"
    if key == "grad_norm":
        return "the gradient norm"
    return repr(key)


def _key_order(key: str) -> int:
    # At one step, name the culprit first: a loss component, then the total it feeds, then the gradient it produces.
    if key.startswith("loss_") and key != "loss_total":
        return 0
    return {"loss_total": 1, "grad_norm": 2}.get(key, 3)


def first_nonfinite_step(trace: dict) -> tuple[int, str, object, list[str]] | None:
    """(step, key, value, other keys non-finite at that step) of the first non-finite value of a per-step trace."""
    first = None
    for key, values in (trace or {}).items():
        for step, value in enumerate(values or []):
            if _bad(value):
                if first is None or (step, _key_order(key)) < (first[0], _key_order(first[1])):
                    first = (step, key, value)
                break
    if first is None:
        return None
    step = first[0]
    others = sorted((k for k, v in trace.items() if k != first[1] and v and len(v) > step and _bad(v[step])), key=_key_order)
    return step, first[1], first[2], others


def _value(v) -> str:
    if v is None:
        return "missing (null)"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return repr(v)
    return "NaN" if f != f else fmt(f)


class Finite(BaseCheck):
    name = "finite"
    description = "every reported loss, norm, similarity, gradient norm and score is finite, at every training step"
    defaults = {}
    cause = "the optimisation diverged: a learning rate too high, magnitudes exploding (seed 002), or a division by a zero norm"
    fix = "lower lr, L2-normalise embeddings inside the loss, and check the head's forward for divisions and logs"

    def _stopped_text(self, stopped: dict) -> str:
        where = []
        if stopped.get("epoch") is not None:
            where.append(f"epoch {stopped['epoch']}")
        if stopped.get("step") is not None:
            where.append(f"step {stopped['step']}")
        comp = stopped.get("component")
        what = describe(comp if str(comp).startswith(("loss_", "grad_")) else f"loss_{comp}") if comp else "a value"
        reason = f" ({stopped['reason']})" if stopped.get("reason") else ""
        return f"training was stopped at {' '.join(where) or 'an unrecorded point'}: {what} was {_value(stopped.get('value'))}{reason}"

    def run(self, candidate):
        run = need_run(self, candidate)
        stopped = getattr(run, "stopped", None)
        also = f"; {self._stopped_text(stopped)}" if stopped else ""
        n_steps = 0
        for record in run.epochs:
            # this epoch's training steps happened before its telemetry was recorded
            trace = getattr(record, "trace", None) or {}
            n_steps += max((len(v or []) for v in trace.values()), default=0)
            found = first_nonfinite_step(trace)
            if found:
                step, key, value, others = found
                with_ = f"; also non-finite at that step: {', '.join(describe(k) for k in others)}" if others else ""
                return self.failed(
                    f"{describe(key)} is {_value(value)} at training step {step} of epoch {record.epoch} (steps counted from 0 "
                    f"within the epoch{with_}){also}",
                    value, "finite", record.epoch, quantity=key, step=step, stopped=stopped,
                )
            for key, value in _numbers(record).items():
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    if key in OPTIONAL_NAN:
                        continue
                    return self.failed(f"{key} is NaN{also}", value, "finite", record.epoch, quantity=key, stopped=stopped)
                if isinstance(value, (int, float)) and math.isinf(value):
                    return self.failed(f"{key} is {value}{also}", value, "finite", record.epoch, quantity=key, stopped=stopped)
        if stopped:
            return self.failed(self._stopped_text(stopped), stopped.get("value"), "finite", stopped.get("epoch"),
                               quantity=stopped.get("component"), step=stopped.get("step"), stopped=stopped)
        n = sum(len(_numbers(r)) for r in run.epochs)
        steps = f" and every value of {n_steps} training steps" if n_steps else " (the run records no per-step trace)"
        return self.passed(f"{n} reported values over {len(run.epochs)} epochs{steps} are finite", n, "finite",
                           run.epochs[-1].epoch, steps=n_steps)


@hookimpl
def register_checks(register):
    check = Finite()
    register("finite", check, description=check.description)
