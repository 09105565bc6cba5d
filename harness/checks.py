"""What a gate check builds on: the base class, its result helpers and the number formatting every message uses.

A check is an object with ``name``, ``description``, ``defaults`` (its thresholds; a suite overrides
them) and ``run(candidate, **thresholds) -> CheckResult``. ``stage = "static"`` checks read only the
candidate's configuration and run before any training; the others read ``candidate.run`` (a
``harness.types.TrainRun``). Failure messages are one sentence: the measured value, the bound, the
epoch, the likely cause and the known fix (from the seed failure reports).

The built-in checks (the repository's ``plugins/checks/``, installed as ``harness.plugins.checks``) subclass
``BaseCheck`` from here, and so do external ones: ``from harness.checks import BaseCheck``.
"""
from __future__ import annotations

import math
from typing import Any

from harness.types import CheckResult


class BaseCheck:
    """Convenience base: subclasses set ``name``, ``description``, ``defaults``, ``cause`` and ``fix``."""

    name: str = ""
    description: str = ""
    defaults: dict = {}
    stage: str = "trained"  # or "static": needs only the configuration (harness.types.CheckTraits)
    scope: str = "run"  # or "candidate": judged once on every dataset's kept numbers
    seeds: str = "each"  # or "pooled": judged on per-query scores averaged over seeds
    cause: str = ""
    fix: str = ""

    def run(self, candidate: Any, **thresholds: Any) -> CheckResult:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- results -----------------------------------------------------------------------------------
    def passed(self, summary: str, measured: Any = None, bound: Any = None, epoch: int | None = None, headline: str = "",
               **details) -> CheckResult:
        return CheckResult(self.name, True, measured, bound, epoch, f"{self.name} passed: {summary}.", details=details,
                           headline=headline)

    def failed(self, what: str, measured: Any, bound: Any, epoch: int | None = None, cause: str | None = None,
               fix: str | None = None, headline: str = "", **details) -> CheckResult:
        cause = cause or self.cause
        fix = fix or self.fix
        at = f" at epoch {epoch}" if epoch is not None else ""
        message = f"{self.name} FAILED{at}: {what}. Likely cause: {cause}. Fix: {fix}."
        return CheckResult(self.name, False, measured, bound, epoch, message, cause, fix, details, headline)

    def not_applicable(self, why: str, **details) -> CheckResult:
        return CheckResult(self.name, True, None, None, None, f"{self.name} not applicable: {why}.",
                           details={"not_applicable": True, **details})


def is_finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def fmt(x: Any, digits: int = 4) -> str:
    """Numbers as people read them: 228.5, 0.6451, 2.1e-04."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if x != x:
        return "nan"
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 1e4 or a < 1e-3:
        return f"{x:.2e}"
    if a >= 100:
        return f"{x:.1f}"
    return f"{x:.{digits}g}" if a < 1 else f"{x:.{max(digits - 1, 2)}g}"


def mean(d: dict[str, float]) -> float:
    return sum(d.values()) / len(d) if d else float("nan")


def named_epoch(run: Any, rec: Any) -> int | None:
    """The epoch a verdict on ``rec`` names: None when ``run`` was merged from units or seeds that kept different
    epochs (``TrainRun.kept_epochs`` says which), rather than the largest of them."""
    verdict = getattr(run, "verdict_epoch", None)
    if verdict is not None and rec is getattr(run, "selected_epoch", None) and verdict() is None:
        return None
    return rec.epoch


def kept_epochs_text(run: Any) -> str:
    """"the epochs the protocol kept (scifact 19, nfcorpus 3)" for a run whose merged parts kept different
    epochs, else ""."""
    if named_epoch(run, run.selected_epoch) is not None:
        return ""
    groups: dict[str, list[str]] = {}  # "seed 0 scifact": 17 -> under "seed 0", "scifact 17"
    for key, epoch in run.kept_epochs.items():
        if key.startswith("seed "):
            seed, _, unit = key[len("seed "):].partition(" ")
            groups.setdefault(f"seed {seed}", []).append(f"{unit} {epoch}" if unit else str(epoch))
        else:
            groups.setdefault("", []).append(f"{key} {epoch}")
    text = "; ".join(f"{g}: {', '.join(v)}" if g else ", ".join(v) for g, v in groups.items())
    return f"the epochs the protocol kept ({text})"


def need_run(check: BaseCheck, candidate: Any):
    run = getattr(candidate, "run", None)
    if run is None:
        raise ValueError(f"check {check.name!r} needs a trained run, but candidate {getattr(candidate, 'name', '?')!r} has none")
    return run
