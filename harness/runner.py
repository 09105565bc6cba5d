"""Running a suite: every candidate on every seed, verdicts combined by the seed rule (docs/gate.md).

``run_suite`` verifies the baselines the checks compare with, then gates each selected candidate with a
``SeededGate``: a ``harness.gate.CandidateGate`` per seed, each check judged per seed and combined (a strict
expected failure must be caught on every seed; any other check must pass on every seed; a seed-pooled check
such as ``beats_baseline`` is judged once on per-query scores averaged over the seeds).
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, cast

from harness.baselines import BaselineError
from harness.gate import (
    BaselineStore,
    CandidateGate,
    CandidateReport,
    GateReport,
    Outcome,
    classify,
    require_gpu,
    scope_of,
    thresholds_for,
)
from harness.registry import get
from harness.suite import CandidateSpec, Suite
from harness.types import CheckTraits, EpochRecord, TrainRun


def pooled_run(runs: dict[int, Any]):
    """One run whose selected epoch holds each query's NDCG@10 averaged over the seeds' selected epochs
    (what a seed-pooled check such as ``beats_baseline`` judges)."""

    first = next(iter(runs.values()))
    if len(runs) == 1:
        return first
    recs = [r.selected_epoch for r in runs.values()]
    per_query: dict[str, dict[str, float]] = {}
    for d in recs[0].per_query_ndcg10:
        qids = recs[0].per_query_ndcg10[d]
        per_query[d] = {q: sum(r.per_query_ndcg10[d][q] for r in recs) / len(recs) for q in qids}
    rec = EpochRecord(epoch=recs[0].epoch, per_query_ndcg10=per_query,
                      ndcg10={d: sum(v.values()) / len(v) for d, v in per_query.items()},
                      top10_overlap={d: sum(r.top10_overlap.get(d, float("nan")) for r in recs) / len(recs) for d in recs[0].top10_overlap})
    return TrainRun(config={**first.config, "seeds": sorted(runs)}, similarity=first.similarity, epochs=[rec], selected=rec.epoch,
                    baseline_ndcg10=first.baseline_ndcg10, baseline_per_query_ndcg10=first.baseline_per_query_ndcg10,
                    baseline_rankme=first.baseline_rankme,
                    protocol={"seeds": sorted(runs), "last_epochs": {s: r.last_trained_epoch for s, r in runs.items()},
                              "selected_epochs": {f"seed {s}{' ' + u if u else ''}": e for s, r in runs.items()
                                                  for u, e in (r.kept_epochs or {"": r.selected_epoch.epoch}).items()}})


def _not_seen(o: Outcome) -> Outcome:
    """A seed's outcome under a non-strict expected failure: passing there is allowed, not an XPASS."""
    if o.outcome != "xpass":
        return o
    return Outcome(o.check, "pass", o.result, seconds=o.seconds, note="non-strict expected failure not seen on this seed")


def _seed_rule(check: str, per_seed: dict[int, Outcome], expected: dict[str, str], nonstrict: set[str] | frozenset[str] = frozenset()) -> Outcome:
    """A check judged on every seed: a strict expected failure is caught only if it fails on every seed (a
    non-strict one, ``strict = false``, if it fails on any); any other check passes only if it passes on every
    seed (n/a if n/a on all)."""
    seeds = sorted(per_seed)
    if len(seeds) == 1:
        return _not_seen(per_seed[seeds[0]]) if check in nonstrict else per_seed[seeds[0]]
    errors = [s for s in seeds if per_seed[s].outcome == "error"]
    if errors:
        o = per_seed[errors[0]]
        return Outcome(check, "error", o.result, o.expected_reason, f"[seed {errors[0]}] {o.error}")
    failing = [s for s in seeds if per_seed[s].outcome in ("fail", "xfail")]
    passing = [s for s in seeds if s not in failing]
    of = f"{len(seeds)} seeds"
    if check in expected and check in nonstrict:
        o = per_seed[(failing or seeds)[0]]
        if failing:
            out = Outcome(check, "xfail", o.result, expected.get(check, ""))
            out.note = f"non-strict: caught on seed{'s' if len(failing) > 1 else ''} {', '.join(map(str, failing))} of {of}"
        else:
            out = Outcome(check, "pass", o.result)
            out.note = f"non-strict expected failure not seen on any of {of}"
        return out
    if check in expected:
        if passing:
            o = per_seed[passing[0]]
            out = Outcome(check, "xpass", o.result, expected.get(check, ""))
            out.note = f"passed on seed{'s' if len(passing) > 1 else ''} {', '.join(map(str, passing))} of {of}"
            return out
        o = per_seed[seeds[0]]
        out = Outcome(check, "xfail", o.result, expected.get(check, ""))
        out.note = f"caught on all {of}"
        return out
    if failing:
        o = per_seed[failing[0]]
        out = Outcome(check, "fail", o.result)
        out.note = f"failed on seed{'s' if len(failing) > 1 else ''} {', '.join(map(str, failing))} of {of}"
        return out
    o = per_seed[seeds[0]]
    na = all(per_seed[s].outcome == "n/a" for s in seeds)
    out = Outcome(check, "n/a" if na else "pass", o.result)
    out.note = f"passed on all {of}" if not na else ""
    return out


class SeededGate:
    """One candidate judged on several seeds: a ``CandidateGate`` per seed, verdicts combined by the seed rule
    (docs/gate.md): per-seed checks must hold on every seed (an expected failure must be caught on every
    seed); a seed-pooled check (``seeds = "pooled"`` on the check, e.g. ``beats_baseline``) is judged once on
    the per-query scores averaged over seeds, with ``candidate.seed_runs`` holding each seed's run."""

    def __init__(self, suite: Suite, spec: CandidateSpec, store: BaselineStore, seeds: list[int],
                 out_dir: str | Path | None = None, data_dir: str | None = None, device: str | None = None,
                 progress: bool = True, regenerate: bool = False):
        self.suite, self.spec, self.seeds = suite, spec, list(seeds)
        multi = len(self.seeds) > 1
        self.gates = {s: CandidateGate(suite, spec, store, s, (Path(out_dir) / f"seed-{s}") if (out_dir and multi) else out_dir,
                                       data_dir, device, progress, regenerate) for s in self.seeds}
        self.outcomes: dict[str, Outcome] = {}
        self.per_seed: dict[str, dict[int, Outcome]] = {}

    @property
    def first(self) -> CandidateGate:
        return self.gates[self.seeds[0]]

    def check(self, name: str) -> Outcome:
        if name in self.outcomes:
            return self.outcomes[name]
        component = self.first.components()[name]
        if scope_of(component) == "static":  # reads only the configuration: the same on every seed
            per_seed = {self.seeds[0]: self.first.check(name)}
        else:
            per_seed = {s: g.check(name) for s, g in self.gates.items()}
        if name in getattr(self.spec, "nonstrict", set()):
            per_seed = {s: _not_seen(o) for s, o in per_seed.items()}
        self.per_seed[name] = per_seed
        if len(self.seeds) > 1 and CheckTraits.of(component.factory).seeds == "pooled" and all(
                g.candidate.run is not None for g in self.gates.values()):
            outcome = self._pooled(name, component)
        else:
            outcome = _seed_rule(name, per_seed, self.spec.expect_fail, getattr(self.spec, "nonstrict", set()))
        outcome.seconds = sum(o.seconds for o in per_seed.values())
        self.outcomes[name] = outcome
        return outcome

    def _pooled(self, name: str, component) -> Outcome:
        first = self.first.candidate
        runs = {s: g.candidate.run for s, g in self.gates.items()}
        pooled = replace(first, run=pooled_run(runs), seed_runs=runs)
        try:
            result = component.factory.run(pooled, **thresholds_for(component, self.spec))
            outcome = classify(name, result, self.spec.expect_fail)
        except Exception as exc:

            if isinstance(exc, BaselineError):
                raise
            outcome = Outcome(name, "error", error=f"check {name!r} (plugin {component.plugin}) raised {type(exc).__name__}: {exc}")
        outcome.note = f"judged on per-query NDCG@10 averaged over seeds {', '.join(map(str, self.seeds))}"
        return outcome

    def run_all(self, on_outcome: Callable[[str, Outcome], None] | None = None) -> CandidateReport:
        static = self.first.static_checks()
        for name in static + [n for n in self.spec.checks if n not in static]:
            outcome = self.check(name)
            if on_outcome:
                on_outcome(self.spec.name, outcome)
        return self.report()

    def report(self) -> CandidateReport:
        g = self.first
        rep = CandidateReport(self.spec.name, self.spec, g.config, {n: self.outcomes[n] for n in self.spec.checks if n in self.outcomes},
                              g.candidate.run, "; ".join(dict.fromkeys(x.train_error for x in self.gates.values() if x.train_error)),
                              sum(x.train_seconds for x in self.gates.values()), str(g.run_dir) if g.run_dir else None,
                              g.candidate.result)
        rep.seeds = {s: x.candidate for s, x in self.gates.items()}
        rep.per_seed = self.per_seed
        return rep


def verify_baselines(suite: Suite, store: BaselineStore, seed: int | None = None, data_dir: str | None = None,
                     candidates: list[CandidateSpec] | None = None) -> None:
    """Load and verify every baseline the suite's checks compare with, before anything trains."""

    for spec in candidates or suite.candidates:
        config = suite.train_config(spec, seed=seed, data_dir=data_dir)
        for name in spec.checks:
            component = get("checks", name)
            wanted = CheckTraits.of(component.factory).baselines
            if wanted is None:
                continue
            for encoder, dataset, split in wanted(config, **thresholds_for(component, spec)):
                store.get(encoder, dataset, split)


def select(suite: Suite, names: list[str] | None) -> list[CandidateSpec]:
    if not names:
        return list(suite.candidates)
    return [suite.candidate(n) for n in names]


def run_suite(suite: Suite, seed: int | None = None, candidates: list[str] | None = None, out_dir: str | Path | None = None,
              require_gpu_: bool = False, data_dir: str | None = None, device: str | None = None, progress: bool = True,
              on_outcome: Callable[[str, Outcome], None] | None = None,
              on_candidate: Callable[[CandidateSpec], None] | None = None, regenerate: bool = False,
              seeds: list[int] | None = None, workers: int | str = 1, backend: str = "local",
              address: str | None = None) -> GateReport:
    """Gate every (selected) candidate of ``suite``. Raises ``GateError``/``BaselineError`` before training
    when the run cannot be meaningful; check failures are outcomes, not exceptions. ``workers > 1`` trains the
    candidates x seeds in that many processes, ``backend="ray"`` as Ray tasks (on a local instance, or on the
    cluster at ``address``); the checks run here either way, so every number equals the serial run's
    (``harness.fanout``). ``workers="auto"``: a process per core (at most 4 per GPU), at most one per job."""
    import torch

    from harness import fanout

    seeds_used = list(seeds) if seeds else ([seed] if seed is not None else list(suite.seeds or [suite.seed]))
    specs = select(suite, candidates)
    configs = [suite.train_config(spec) for spec in specs]  # each job's torch threads and device
    threads = [c.get("threads", 1) for c in configs]
    devices = {c.get("device") for c in configs}
    workers = fanout.resolve_workers(workers, backend, len(specs) * len(seeds_used),
                                     device or (devices.pop() if len(devices) == 1 else None),
                                     None if None in threads else max(threads, default=1))
    fanout.require(backend, workers, address)  # e.g. no ray installed: one line, before anything is written

    if require_gpu_:
        gpu = require_gpu()
        device = device or "cuda"
        device_desc = f"cuda ({gpu})"
    else:
        device_desc = device or suite.device or ("cuda" if torch.cuda.is_available() else "cpu")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    t0 = time.perf_counter()
    store = BaselineStore(cast(Path, suite.baselines_dir), data_dir)  # load_suite always sets it
    verify_baselines(suite, store, seed, data_dir, specs)
    reports = []
    gates = {spec.name: SeededGate(suite, spec, store, seeds_used, out_dir, data_dir, device, progress, regenerate)
             for spec in specs}
    fanned = fanout.fans_out(backend, workers)  # train every (candidate, seed) elsewhere; checks run here, on what came back
    first = (lambda: on_candidate(specs[0])) if (fanned and on_candidate and specs) else None
    with fanout.training(gates, backend, workers, device, address, before_jobs=first) as pending:  # marked incomplete first
        for i, spec in enumerate(specs):
            if on_candidate and not (fanned and i == 0):
                on_candidate(spec)
            gate = gates[spec.name]
            for s, cg in gate.gates.items():
                if (spec.name, s) in pending:
                    fanout.adopt(cg, pending[(spec.name, s)])
            reports.append(gate.run_all(on_outcome))
    report = GateReport(suite, seeds_used[0], reports, started, time.perf_counter() - t0,
                        device_desc, list(dict.fromkeys(store.warnings)), store.used())
    report.seeds = seeds_used
    return report

