"""The gate: train each candidate of a suite briefly, run its checks, apply expected failures, give a verdict.

Outcomes per candidate and check, as pytest names them:

``pass``   the check passed (``n/a``: it does not apply to this head, e.g. residual checks on a plain head)
``fail``   the check failed and was not expected to: the gate is red
``xfail``  the check failed and the suite says it should (a seed's known failure, caught): green
``xpass``  the check passed although the suite expects it to fail (strict): red, the harness stopped catching it
``error``  the check or the training raised: red, never counted as an expected failure

Static checks (``stage = "static"``) read only the configuration and run before any training. Baselines a
check compares with are loaded and their provenance verified before anything trains, so a mismatch stops
the run at once (``BaselineError``) instead of comparing unlike things.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from harness.baselines import BaselineError, load_verified
from harness.files import print_traceback, raised_at
from harness.registry import get
from harness.suite import CandidateSpec, Suite
from harness.train import Progress, TrainConfig, train
from harness.types import CheckResult, CheckTraits

GATING = ("fail", "xpass", "error")


class GateError(Exception):
    """The gate cannot run as asked (e.g. ``--require-gpu`` without CUDA); the message says what to do."""


def require_gpu() -> str:
    """Fail loudly, never skip, when CUDA is required but absent. Returns the GPU's name."""
    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise GateError(
            f"--require-gpu: no CUDA device is available (torch {torch.__version__} is {build}; "
            f"torch.cuda.is_available() is False). This suite must run on a GPU: run it on a machine with an "
            f"NVIDIA GPU and a CUDA build of torch (e.g. HARNESS_TORCH='torch --index-url "
            f"https://download.pytorch.org/whl/cu124' nox -s gpu_suite), or drop --require-gpu to run it on CPU."
        )
    return torch.cuda.get_device_name(0)


class BaselineStore:
    """Stored baselines, each loaded and provenance-verified once per process."""

    def __init__(self, root: str | Path, data_dir: str | None = None):
        self.root = Path(root)
        self.data_dir = data_dir
        self._cache: dict[tuple[str, str, str], Any] = {}
        self.warnings: list[str] = []

    def get(self, encoder: str, dataset: str, split: str):

        key = (encoder, dataset, split)
        if key not in self._cache:
            baseline, warnings = load_verified(self.root, encoder, dataset, split, self.data_dir)
            self._cache[key] = baseline
            self.warnings.extend(warnings)
        return self._cache[key]

    def used(self) -> list[dict]:
        return [{"encoder": b.encoder, "dataset": b.dataset, "split": b.split, "ndcg10": b.ndcg10, "path": str(b.path),
                 "provenance": b.provenance} for b in self._cache.values()]


@dataclass
class Candidate:
    """What a check sees: the candidate's name, its training configuration and, for trained checks, its run."""

    name: str
    spec: CandidateSpec
    config: dict
    store: BaselineStore
    run: Any = None  # harness.types.TrainRun: one unit's run, or every unit's selected numbers merged
    result: Any = None  # harness.types.TrainResult: every unit's run
    unit: str | None = None  # set when a per-run check looks at one unit of several
    suite: Any = None  # harness.suite.Suite the candidate belongs to
    regenerate: bool = False  # rewrite stored regression baselines from this run (and still report)
    seed_runs: dict | None = None  # seed -> run, for a check judged on several seeds at once

    def baseline(self, encoder: str, dataset: str, split: str):
        """The stored, provenance-verified baseline of ``encoder`` on ``dataset``/``split``."""
        return self.store.get(encoder, dataset, split)


@dataclass
class Outcome:
    check: str
    outcome: str  # pass, n/a, fail, xfail, xpass, error
    result: Any = None  # harness.types.CheckResult
    expected_reason: str = ""
    error: str = ""
    seconds: float = 0.0
    note: str = ""  # how several seeds were combined ("failed on seeds 1, 2 of 3")

    @property
    def gating(self) -> bool:
        return self.outcome in GATING

    @property
    def message(self) -> str:
        note = f" ({self.note})" if self.note else ""
        if self.outcome == "error":
            return f"{self.check} ERROR: {self.error}"
        msg = self.result.message if self.result is not None else ""
        if self.outcome == "xpass":
            why = f" ({self.expected_reason})" if self.expected_reason else ""
            return (f"{self.check} XPASS: the suite expects this check to fail{why}, but it passed{note}, so the "
                    f"harness no longer catches this known failure. Measured: {msg}")
        if self.outcome == "xfail":
            return f"expected failure caught{note}: {msg}"
        if self.outcome == "fail" and note:
            return f"{msg}{note}"
        return msg


@dataclass
class CandidateReport:
    name: str
    spec: CandidateSpec
    config: dict
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    run: Any = None
    train_error: str = ""
    train_seconds: float = 0.0
    run_dir: str | None = None
    result: Any = None  # harness.types.TrainResult (per unit); ``run`` is its merged view
    seeds: dict = field(default_factory=dict)  # seed -> Candidate (its run and result), when judged on several seeds
    per_seed: dict = field(default_factory=dict)  # check -> seed -> Outcome

    @property
    def gating(self) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.gating]

    @property
    def passed(self) -> bool:
        return not self.gating


@dataclass
class GateReport:
    suite: Suite
    seed: int
    candidates: list[CandidateReport]
    started: str
    seconds: float
    device: str
    warnings: list[str] = field(default_factory=list)
    baselines: list[dict] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.candidates)

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.candidates:
            for o in c.outcomes.values():
                out[o.outcome] = out.get(o.outcome, 0) + 1
        return out


def thresholds_for(check_component, spec: CandidateSpec) -> dict:
    defaults = dict(getattr(check_component.factory, "defaults", {}) or {})
    defaults.update(spec.checks.get(check_component.name, {}))
    return defaults


def scope_of(component) -> str:
    """"run": judged on each training unit's run (dynamics); "candidate": once, on every dataset's selected
    numbers (verdicts on scores); "static": on the configuration, before training."""
    traits = CheckTraits.of(component.factory)
    return "static" if traits.stage == "static" else traits.scope


def combine_units(check: str, results: dict[str, Any]):
    """One verdict from a per-run check judged on several units: it fails if any unit fails."""

    if len(results) == 1:
        return next(iter(results.values()))
    failed = {u: r for u, r in results.items() if not r.passed}
    shown = failed or results
    message = " ".join(f"[{u} head] {r.message}" for u, r in shown.items())
    details: dict[str, Any] = {"units": {u: r.details for u, r in results.items()}}
    if not failed and all(r.details.get("not_applicable") for r in results.values()):
        details["not_applicable"] = True
    first = next(iter(shown.values()))
    return CheckResult(check, not failed, {u: r.measured for u, r in results.items()}, first.bound, first.epoch, message,
                       first.cause, first.fix, details)


def classify(check: str, result, expected: dict[str, str]) -> Outcome:

    if not isinstance(result, CheckResult):
        return Outcome(check, "error", error=f"check {check!r} returned {type(result).__name__}, not harness.types.CheckResult")
    reason = expected.get(check, "")
    if check in expected:
        return Outcome(check, "xpass" if result.passed else "xfail", result, reason)
    if result.passed:
        return Outcome(check, "n/a" if result.details.get("not_applicable") else "pass", result)
    return Outcome(check, "fail", result)


class CandidateGate:
    """One candidate of a suite: trains at most once, runs each check at most once (pytest items share it)."""

    def __init__(self, suite: Suite, spec: CandidateSpec, store: BaselineStore, seed: int | None = None,
                 out_dir: str | Path | None = None, data_dir: str | None = None, device: str | None = None,
                 progress: Progress = True, regenerate: bool = False):
        self.suite = suite
        self.spec = spec
        self.config = suite.train_config(spec, seed=seed, data_dir=data_dir)
        if device:
            self.config["device"] = device
        self.candidate = Candidate(spec.name, spec, self.config, store, suite=suite, regenerate=regenerate)
        self.run_dir = Path(out_dir) / "runs" / spec.name if out_dir else None
        self.progress = progress
        self.outcomes: dict[str, Outcome] = {}
        self._trained = False
        self.train_error = ""
        self.train_seconds = 0.0

    def components(self) -> dict[str, Any]:

        return {name: get("checks", name) for name in self.spec.checks}

    def static_checks(self) -> list[str]:
        return [n for n, c in self.components().items() if CheckTraits.of(c.factory).stage == "static"]

    def train(self):
        if not self._trained:
            self._trained = True

            start = time.perf_counter()
            try:
                config = TrainConfig.from_dict(self.config)
                self.candidate.result = train(config, out_dir=self.run_dir, progress=self.progress,
                                              label=f"training {self.spec.name} (seed {config.seed})")
                self.candidate.run = self.candidate.result.merged()
            except Exception as exc:  # recorded against every trained check; the gate goes red
                self.train_error = f"training {self.spec.name!r} failed: {type(exc).__name__}: {exc}{self._raised_at(exc)}"
                print_traceback(exc)  # $HARNESS_TRACEBACK: the whole traceback, on stderr
            self.train_seconds = time.perf_counter() - start
        return self.candidate.run

    def _raised_at(self, exc: BaseException) -> str:
        """Where in plugin code the error came from, naming the head only when that code is its own module."""
        try:
            import inspect

            component = get("heads", self.spec.head)
            return raised_at(exc, inspect.getfile(component.factory), f"; head {self.spec.head!r} of plugin {component.plugin!r}")
        except Exception:  # a message helper must never break the error it describes
            return ""

    def check(self, name: str) -> Outcome:
        if name in self.outcomes:
            return self.outcomes[name]
        component = self.components()[name]
        static = CheckTraits.of(component.factory).stage == "static"
        start = time.perf_counter()
        if not static and self.train() is None:
            outcome = Outcome(name, "error", error=self.train_error)
        else:
            try:
                thresholds = thresholds_for(component, self.spec)
                units = self.candidate.result.units if self.candidate.result is not None else {}
                if scope_of(component) == "run" and len(units) > 1:
                    result = combine_units(name, {
                        u: component.factory.run(replace(self.candidate, run=r, unit=u), **thresholds) for u, r in units.items()})
                else:
                    result = component.factory.run(self.candidate, **thresholds)
                outcome = classify(name, result, self.spec.expect_fail)
            except Exception as exc:

                if isinstance(exc, BaselineError):
                    raise
                outcome = Outcome(name, "error", error=f"check {name!r} (plugin {component.plugin}) raised {type(exc).__name__}: {exc}")
        outcome.seconds = time.perf_counter() - start
        self.outcomes[name] = outcome
        return outcome

    def run_all(self, on_outcome: Callable[[str, Outcome], None] | None = None) -> CandidateReport:
        order = self.static_checks() + [n for n in self.spec.checks if n not in self.static_checks()]
        for name in order:
            outcome = self.check(name)
            if on_outcome:
                on_outcome(self.spec.name, outcome)
        return CandidateReport(self.spec.name, self.spec, self.config, {n: self.outcomes[n] for n in self.spec.checks},
                               self.candidate.run, self.train_error, self.train_seconds,
                               str(self.run_dir) if self.run_dir else None, self.candidate.result)
