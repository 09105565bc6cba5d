"""pytest collects gate suites: ``pytest suites/smoke.toml --junitxml=gate.xml``.

Each ``suites/*.toml`` becomes a file node, each candidate a collector, each of its checks an item
(``suites/smoke.toml::asym-dot::bounded_norms``), as in pytest's ``doc/en/example/nonpython``. A
candidate trains once, on its first trained item, and its items share the run. Outcomes map onto pytest's:
an expected failure that is caught is ``xfailed``, a check that passes although the suite expects it to
fail fails the test (strict XPASS), an unexpected failure fails with the check's message.

Items of a suite with ``requires_gpu = true`` carry the ``gpu`` marker and are skipped, with the reason,
when no CUDA device is there; ``--require-gpu`` makes them fail instead (what ``nox -s gpu_suite`` wants).

This module is loaded in every pytest run of the repository (``pytest11`` entry point), so it imports
nothing heavy until a suite file is actually collected.
"""
from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("retrieval-harness", "retrieval-harness gate suites")
    group.addoption("--require-gpu", action="store_true", default=False,
                    help="fail (never skip) items of GPU suites when no CUDA device is available")
    group.addoption("--gate-suites", action="store_true", default=False,
                    help="collect suites/*.toml under the given paths as gate items (a suite named on the command line always is)")
    group.addoption("--gate-seed", type=int, default=None, help="one training seed for every gated candidate (overrides the suite's seeds)")
    parser.addini("harness_suites", "collect suites/*.toml as gate items without --gate-suites", type="bool", default=False)
    group.addoption("--gate-out", default=None,
                    help="write each gated suite's report.json, summary.md and plots under this folder at the end of the session")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (the MPNet gpu_suite)")
    config._harness_gates = {}  # suite path -> (suite, {candidate: CandidateGate})
    config._harness_stores = {}  # baselines folder -> BaselineStore


def _asked_for(config, file_path) -> bool:
    """Suites are collected only when asked: ``--gate-suites``, the ini setting ``harness_suites = true``, or the
    suite file itself named on the command line. A project that installs the harness is not gated by surprise
    because it happens to have a ``suites/`` folder."""
    if config.getoption("gate_suites") or config.getini("harness_suites"):
        return True
    root = Path(config.invocation_params.dir)
    for arg in config.invocation_params.args:
        text = str(arg).split("::")[0]
        if text.endswith(".toml") and (root / text).resolve() == file_path.resolve():
            return True
    return False


def pytest_collect_file(parent, file_path):
    if file_path.suffix == ".toml" and file_path.parent.name == "suites" and _asked_for(parent.config, file_path):
        return SuiteFile.from_parent(parent, path=file_path)
    return None


class GateFailure(Exception):
    """A check failed, XPASSed or errored; ``str`` is the check's own sentence."""


class SuiteFile(pytest.File):
    def collect(self):
        from harness.suite import SuiteError, load_suite

        try:
            suite = load_suite(self.path)
        except SuiteError as exc:
            raise self.CollectError(str(exc)) from None
        gates = self.config._harness_gates.setdefault(str(self.path), (suite, {}))[1]
        for spec in suite.candidates:
            yield CandidateNode.from_parent(self, name=spec.name, suite=suite, spec=spec, gates=gates)


class CandidateNode(pytest.Collector):
    def __init__(self, *, suite, spec, gates, **kwargs):
        super().__init__(**kwargs)
        self.suite = suite
        self.spec = spec
        self.gates = gates

    def gate(self):
        """The candidate's shared gate, created (and its baselines verified) on first use."""
        if self.spec.name not in self.gates:
            from harness.gate import BaselineStore
            from harness.runner import SeededGate, verify_baselines

            opts = self.config.option
            stores = self.config._harness_stores
            store = stores.setdefault(str(self.suite.baselines_dir), BaselineStore(self.suite.baselines_dir))
            device = "cuda" if self.suite.requires_gpu and opts.require_gpu else None
            out = opts.gate_out and f"{opts.gate_out}/{self.suite.name}"
            verify_baselines(self.suite, store, opts.gate_seed, None, [self.spec])
            seeds = [opts.gate_seed] if opts.gate_seed is not None else list(self.suite.seeds or [self.suite.seed])
            self.gates[self.spec.name] = SeededGate(self.suite, self.spec, store, seeds, out, None, device, progress=False)
        return self.gates[self.spec.name]

    def collect(self):
        for check in self.spec.checks:
            item = CheckItem.from_parent(self, name=check, check=check)
            if self.suite.requires_gpu:
                item.add_marker(pytest.mark.gpu)
            yield item


class CheckItem(pytest.Item):
    def __init__(self, *, check, **kwargs):
        super().__init__(**kwargs)
        self.check = check

    def setup(self):
        candidate = self.parent
        if candidate.suite.requires_gpu:
            import torch

            if not torch.cuda.is_available():
                if self.config.option.require_gpu:
                    from harness.gate import GateError, require_gpu

                    try:
                        require_gpu()
                    except GateError as exc:
                        pytest.fail(str(exc), pytrace=False)
                pytest.skip(f"suite {candidate.suite.name!r} needs a CUDA GPU and none is available "
                            f"(pass --require-gpu to fail instead of skipping)")

    def runtest(self):
        from harness.baselines import BaselineError

        try:
            outcome = self.parent.gate().check(self.check)
        except BaselineError as exc:
            raise GateFailure(f"baseline error, nothing compared: {exc}") from None
        self.user_properties.append(("outcome", outcome.outcome))
        if outcome.result is not None and outcome.result.epoch is not None:
            self.user_properties.append(("epoch", outcome.result.epoch))
        if outcome.outcome == "xfail":
            pytest.xfail(outcome.message)
        if outcome.gating:
            raise GateFailure(outcome.message)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, GateFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, f"{self.parent.name}::{self.check}"


def pytest_sessionfinish(session, exitstatus):
    out = session.config.option.gate_out if hasattr(session.config.option, "gate_out") else None
    gates = getattr(session.config, "_harness_gates", {})
    if not out or not gates:
        return
    import time

    from harness import report as rp
    from harness.gate import GateReport

    for _, (suite, by_name) in gates.items():
        if not by_name:
            continue
        reports = []
        for spec in suite.candidates:
            g = by_name.get(spec.name)
            if g is None:
                continue
            reports.append(g.report())
        seed = session.config.option.gate_seed
        store = next(iter(by_name.values())).first.candidate.store
        report = GateReport(suite, suite.seed if seed is None else seed, reports,
                            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), 0.0, "pytest",
                            list(dict.fromkeys(store.warnings)), store.used())
        rp.write(report, f"{out}/{suite.name}")
