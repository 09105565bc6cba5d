"""Accepting a candidate: gate it on its seeds and, if every check passes, store its regression baseline.

``harness baselines update --suite S --candidate C`` calls ``accept``. A candidate that fails any check
(``no_regression`` aside: it is what is being created) is refused and nothing is written, so a stored
regression baseline always belongs to a head the gate accepted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

from harness import regression, sources
from harness.gate import BaselineStore
from harness.runner import SeededGate, verify_baselines
from harness.suite import Suite


@dataclass
class Accepted:
    path: Path | None
    refused: list[str]  # the failing checks' messages, when refused
    seeds: list[int]
    ndcg10: dict[str, float]  # per dataset, averaged over seeds


def accept(suite: Suite, candidate: str, seeds: list[int] | None = None, data_dir: str | None = None,
           device: str | None = None, progress: bool = True, baselines_dir: str | Path | None = None) -> Accepted:
    spec = suite.candidate(candidate)
    seeds = list(seeds or suite.seeds or [suite.seed])
    store = BaselineStore(cast(Path, baselines_dir or suite.baselines_dir), data_dir)  # load_suite always sets it
    verify_baselines(suite, store, seeds[0], data_dir, [spec])
    gate = SeededGate(suite, spec, store, seeds, None, data_dir, device, progress)
    refused = []
    for name in spec.checks:
        if name == "no_regression":
            continue
        outcome = gate.check(name)
        if outcome.gating or outcome.outcome == "xfail":
            refused.append(f"{name}: {outcome.message}")
    runs = {s: g.candidate.run for s, g in gate.gates.items()}
    if refused or any(r is None for r in runs.values()):
        return Accepted(None, refused or ["training failed"], seeds, {})
    first = gate.first.candidate
    datasets = list(first.run.config["eval"])
    split = first.config.get("eval_split", "test")
    prov = regression.provenance(first, sources.encoder_fingerprint(first.config["encoder"]),
                                 {d: sources.file_hashes(d, data_dir, split) for d in datasets})
    scores = {s: {d: dict(r.selected_epoch.per_query_ndcg10[d]) for d in datasets} for s, r in runs.items()}
    path = regression.candidate_path(store.root, suite.name, spec.name)
    old = regression.load(path) if path.is_file() else None
    regression.store(path, suite.name, spec.name, scores, prov, keep=old)
    mean = {d: sum(r.selected_epoch.ndcg10[d] for r in runs.values()) / len(runs) for d in datasets}
    return Accepted(path, [], seeds, mean)
