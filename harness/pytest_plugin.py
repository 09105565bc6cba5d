"""pytest collects gate suites: ``pytest suites/smoke.toml --junitxml=gate.xml``.

Each ``suites/*.toml`` becomes a file node, each candidate a collector, each of its checks an item
(``suites/smoke.toml::asym-dot::bounded_norms``), as in pytest's ``doc/en/example/nonpython``. A
candidate trains once, on its first trained item, and its items share the run. Outcomes map onto pytest's:
an expected failure that is caught is ``xfailed``, a check that passes although the suite expects it to
fail fails the test (strict XPASS), an unexpected failure fails with the check's message.

Items of a suite with ``requires_gpu = true`` carry the ``gpu`` marker and are skipped, with the reason,
when no CUDA device is there; ``--require-gpu`` makes them fail instead (what ``nox -s gpu_suite`` wants).

Under pytest-xdist (``pytest -n 2 --dist loadgroup suites/smoke.toml``) every item of a candidate carries
``xdist_group("<suite>.<candidate>")``, so one worker trains the candidate once on all its seeds (a seed-pooled
check such as ``beats_baseline`` needs every seed's run in one process). Each worker hands its candidates'
reports to the controller (``workeroutput``), which writes the one ``--gate-out`` report; a worker writes none.

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
    group.addoption("--gate-seeds", type=_seeds, default=None, metavar="0,1",
                    help="training seeds, comma-separated, for every gated candidate (overrides the suite's seeds, as harness run --seeds)")
    parser.addini("harness_suites", "collect suites/*.toml as gate items without --gate-suites", type="bool", default=False)
    group.addoption("--gate-out", default=None,
                    help="write each gated suite's report.json, summary.md and plots under this folder at the end of the session")


def _seeds(text: str) -> list[int]:
    from harness.gate_cli import _seeds as parse

    return parse(text)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (the MPNet gpu_suite)")
    if not config.pluginmanager.hasplugin("xdist"):  # xdist registers it itself; without xdist the mark is inert
        config.addinivalue_line("markers", "xdist_group(name): run these items on one pytest-xdist worker (--dist loadgroup)")
    config._harness_gates = {}  # suite path -> (suite, {candidate: SeededGate})
    config._harness_stores = {}  # baselines folder -> BaselineStore
    config._harness_remote = []  # on the xdist controller: each worker's reports, from its workeroutput
    config._harness_trained = []  # on the xdist controller: "suite::candidate" for each worker that trained it
    config._harness_begun = {}  # --gate-out folder -> suite: marked INCOMPLETE before anything trained into it


def _begin(config, suite) -> None:
    """With ``--gate-out``, mark the suite's report folder INCOMPLETE (and clear its previous report and runs) once,
    before the first candidate trains into it, as ``harness run`` does: an interrupted or crashed session leaves
    a marked folder, never an older report.json beside newer runs. Never on an xdist worker (the controller
    marks it before it hands out the items)."""
    if not config.option.gate_out or hasattr(config, "workerinput"):
        return
    folder = _folder(config, suite)
    if folder not in config._harness_begun:
        from harness import report as rp

        rp.begin(folder, suite, by=f"pytest --gate-out {config.option.gate_out}")
        config._harness_begun[folder] = suite


def _folder(config, suite) -> str:
    """The suite's report folder under ``--gate-out``."""
    return f"{config.option.gate_out}/{suite.name}"


def _unfinished(config, folders: dict, reason: str) -> None:
    """Say in each begun folder's INCOMPLETE marker why it holds no report."""
    from harness import report as rp

    for folder, suite in folders.items():
        rp.abort(folder, reason, suite, by=f"pytest --gate-out {config.option.gate_out}")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """xdist controller: a worker's collection names the suites it will gate; mark their --gate-out folders now,
    before any item is scheduled (the controller collects nothing itself)."""
    config = node.config
    if not config.option.gate_out:
        return
    from harness.suite import SuiteError, load_suite

    for path in sorted({i.split("::")[0] for i in ids if i.split("::")[0].endswith(".toml")}):
        try:
            suite = load_suite(Path(config.rootpath) / path)
        except SuiteError:  # the worker's collection reports it
            continue
        if suite.requires_gpu and not config.option.require_gpu and not _has_cuda():
            continue  # its items will be skipped: nothing trains, and the folder keeps what it holds
        _begin(config, suite)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


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
            out = opts.gate_out and _folder(self.config, self.suite)
            verify_baselines(self.suite, store, opts.gate_seed, None, [self.spec])
            _begin(self.config, self.suite)
            seeds = opts.gate_seeds or ([opts.gate_seed] if opts.gate_seed is not None else list(self.suite.seeds or [self.suite.seed]))
            self.gates[self.spec.name] = SeededGate(self.suite, self.spec, store, seeds, out, None, device, progress=False)
        return self.gates[self.spec.name]

    def collect(self):
        group = f"{self.suite.name}.{self.spec.name}".replace("@", "_")  # xdist splits node ids at '@'
        for check in self.spec.checks:
            item = CheckItem.from_parent(self, name=check, check=check)
            item.add_marker(pytest.mark.xdist_group(group))  # --dist loadgroup: the candidate trains once, on one worker
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


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """An xdist worker under ``--dist loadgroup``: pytest-xdist 3.8 groups an item by writing ``item._nodeid``
    (``<id>@<group>``), which pytest 9.2's structured node ids no longer read, so its groups silently vanish
    (pytest-dev/pytest-xdist#1386). Carry the suffix into our check items' ids, so a candidate still trains once."""
    if not (hasattr(config, "workerinput") and config.getvalue("loadgroup")):
        return
    for item in items:
        wanted = item.__dict__.get("_nodeid") if isinstance(item, CheckItem) else None
        if wanted and item.nodeid != wanted and hasattr(item, "_id"):
            item._id = type(item._id).parse(wanted)  # pytest >= 9.2: NodeId; the fix xdist#1388 proposes


def _local_reports(config) -> dict[str, tuple]:
    """This process's gated candidates: suite path -> (suite, {candidate: CandidateReport}, warnings, baselines, seeds)."""
    out: dict[str, tuple] = {}
    for path, (suite, by_name) in getattr(config, "_harness_gates", {}).items():
        if not by_name:
            continue
        first = next(iter(by_name.values()))
        store = first.first.candidate.store
        out[path] = (suite, {name: g.report() for name, g in by_name.items()}, list(store.warnings), store.used(), first.seeds)
    return out


def _merge(parts: list[dict[str, tuple]]) -> dict[str, tuple]:
    """Every process's reports, one entry per suite. A candidate reported by several workers (``-n`` without
    ``--dist loadgroup`` may train it on each) keeps the outcomes of every one: they judged the same runs."""
    merged: dict[str, tuple] = {}
    for part in parts:
        for path, (suite, reports, warnings, used, seeds) in part.items():
            _, have, all_warnings, all_used, _ = merged.setdefault(path, (suite, {}, [], [], seeds))
            for name, rep in reports.items():
                if name in have:
                    have[name].outcomes.update(rep.outcomes)
                    have[name].per_seed.update(rep.per_seed)
                else:
                    have[name] = rep
            all_warnings.extend(w for w in warnings if w not in all_warnings)
            all_used.extend(u for u in used if u["path"] not in {x["path"] for x in all_used})
    return merged


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist controller: keep what a finished worker gated (its ``pytest_sessionfinish`` put it in ``workeroutput``)."""
    output = getattr(node, "workeroutput", {})
    node.config._harness_trained.extend(output.get("harness_trained", []))
    if output.get("harness_reports"):
        import pickle

        node.config._harness_remote.append(pickle.loads(output["harness_reports"]))


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if not hasattr(config, "_harness_gates"):
        return
    out = getattr(config.option, "gate_out", None)
    if hasattr(config, "workerinput"):  # an xdist worker: the controller writes the report from every worker's part
        config.workeroutput["harness_trained"] = [f"{suite.name}::{name}" for suite, by_name in config._harness_gates.values()
                                                  for name in by_name]
        local = _local_reports(config) if out else {}
        if local:
            import pickle

            config.workeroutput["harness_reports"] = pickle.dumps(local)
        return
    stopped = session.shouldfail or session.shouldstop  # -x / --maxfail
    if exitstatus == pytest.ExitCode.INTERRUPTED or stopped:  # what ran is not the run that was asked for
        _unfinished(config, config._harness_begun,
                    "interrupted" if exitstatus == pytest.ExitCode.INTERRUPTED else f"stopped early ({stopped})")
        return
    merged = _merge([_local_reports(config), *config._harness_remote]) if out else {}
    written = {_folder(config, suite) for suite, *_ in merged.values()}
    # marked (and cleared), then every candidate errored or was skipped before it trained
    _unfinished(config, {f: s for f, s in config._harness_begun.items() if f not in written},
                "no candidate was gated (each errored or was skipped before training)")
    if not merged:
        return
    import time

    from harness import report as rp
    from harness.gate import GateReport

    for _, (suite, by_name, warnings, used, seeds) in merged.items():
        reports = []
        for spec in suite.candidates:
            rep = by_name.get(spec.name)
            if rep is None:
                continue
            rep.outcomes = {n: rep.outcomes[n] for n in spec.checks if n in rep.outcomes}  # the suite's order
            reports.append(rep)
        report = GateReport(suite, seeds[0], reports,
                            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), 0.0, "pytest", warnings, used)
        report.seeds = list(seeds)
        rp.write(report, _folder(config, suite))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """xdist controller: say so when a candidate trained on several workers (``-n`` without ``--dist loadgroup``)."""
    trained = getattr(config, "_harness_trained", [])
    twice = sorted({name for name in trained if trained.count(name) > 1})
    if twice:
        terminalreporter.write_line(f"note: {', '.join(twice)} trained on more than one xdist worker; pass --dist loadgroup "
                                    f"so each candidate trains once", yellow=True)
