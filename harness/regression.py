"""Regression baselines of accepted candidates: their per-query NDCG@10, stored with what produced them.

A frozen-encoder baseline (``harness.baselines``) says what a head must beat; a candidate baseline says
what an *accepted* head scored, so a later change to the harness, the protocol or the head that makes it
worse is caught (``no_regression``). One JSON file per suite and candidate:
``<baselines>/candidates/<suite>/<candidate>.json`` with, per seed and dataset, every query's NDCG@10 and
the provenance: a hash of the candidate's spec and training config, the head and loss options, the seeds,
the harness version, the encoder's weight fingerprint and the data files' sha256.

``harness baselines update --suite S --candidate C`` creates it (as pytest-regressions does, a missing
baseline fails the check with that command); ``harness run --regenerate`` rewrites it and still reports.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import __version__
from harness.baselines import BaselineError, safe_name
from harness.files import write_atomic

FORMAT = 1


def never_accepted(expect_fail) -> bool:
    """A candidate declared to fail beats_baseline is never accepted, so it has no regression baseline to meet."""
    return "beats_baseline" in expect_fail


def candidate_path(root: str | Path, suite: str, candidate: str) -> Path:
    return Path(root) / "candidates" / safe_name(suite) / f"{safe_name(candidate)}.json"


def create_command(suite_path: str | Path, candidate: str, seeds: list[int] | None = None) -> str:
    seed = f" --seeds {','.join(map(str, seeds))}" if seeds else ""
    return f"harness baselines update --suite {suite_path} --candidate {candidate}{seed}"


RUN_LOCAL = frozenset({"seed", "device", "data_dir", "threads"})  # settings of one run, not of the candidate


def config_hash(spec_dict: dict, train_config: dict) -> str:
    """What the candidate is and how it trains, without run-local settings (seed, device, data folder)."""
    body = {"spec": spec_dict, "train": {k: v for k, v in sorted(train_config.items()) if k not in RUN_LOCAL}}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class CandidateBaseline:
    suite: str
    candidate: str
    per_query_ndcg10: dict[str, dict[str, dict[str, float]]]  # seed (str) -> dataset -> query -> NDCG@10
    provenance: dict
    created: str = ""
    format: int = FORMAT
    path: Path | None = field(default=None, compare=False)

    def seeds(self) -> list[int]:
        return sorted(int(s) for s in self.per_query_ndcg10)

    def scores(self, dataset: str, seed: int | None = None) -> dict[str, float]:
        """The stored scores of ``seed``; without a seed (or one not stored), their mean over the stored seeds
        (``no_regression`` only compares a seed with its own stored scores)."""
        by_seed = self.per_query_ndcg10
        if seed is not None and str(seed) in by_seed and dataset in by_seed[str(seed)]:
            return dict(by_seed[str(seed)][dataset])
        runs = [s[dataset] for s in by_seed.values() if dataset in s]
        if not runs:
            raise BaselineError(f"{self.path}: no stored scores for dataset {dataset!r} (it has "
                                f"{', '.join(sorted({d for s in by_seed.values() for d in s})) or 'none'})")
        qids = sorted(set.intersection(*(set(r) for r in runs)))
        return {q: sum(r[q] for r in runs) / len(runs) for q in qids}


def provenance(candidate, encoder_sha256: str, files_sha256: dict) -> dict:
    spec = candidate.spec
    spec_dict = {"head": spec.head, "head_options": spec.head_options, "losses": spec.losses, "pretrain": spec.pretrain,
                 "train": spec.train}
    return {
        "config_sha256": config_hash(spec_dict, candidate.config),
        "head": spec.head, "head_options": spec.head_options, "losses": spec.losses,
        "train": {k: v for k, v in candidate.config.items() if k not in ("data_dir", "head", "head_options", "losses")},
        "harness_version": __version__, "encoder": candidate.config.get("encoder"), "encoder_sha256": encoder_sha256,
        "files_sha256": files_sha256,
    }


def load(path: Path) -> CandidateBaseline:
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaselineError(f"{path}: unreadable candidate baseline ({exc}); regenerate it with harness baselines update --suite ... --candidate ...") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BaselineError(f"{path}: not a candidate baseline of format {FORMAT}; regenerate it")
    keys = {"suite", "candidate", "per_query_ndcg10", "provenance", "created", "format"}
    unknown = set(raw) - keys
    if unknown or not keys - {"created"} <= set(raw):
        raise BaselineError(f"{path}: unexpected keys {sorted(unknown)} or missing {sorted(keys - set(raw))}; regenerate it")
    return CandidateBaseline(**raw, path=path)


def store(path: Path, suite: str, candidate: str, scores: dict[int, dict[str, dict[str, float]]], prov: dict,
          keep: CandidateBaseline | None = None) -> CandidateBaseline:
    """Write the scores of these seeds (other stored seeds of an unchanged config are kept), atomically."""
    by_seed = {}
    if keep is not None and keep.provenance.get("config_sha256") == prov.get("config_sha256"):
        by_seed.update(keep.per_query_ndcg10)
    by_seed.update({str(s): v for s, v in scores.items()})
    prov = {**prov, "seeds": sorted(int(s) for s in by_seed)}
    baseline = CandidateBaseline(suite, candidate, by_seed, prov, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    d = {k: v for k, v in baseline.__dict__.items() if k != "path"}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(d, indent=1, sort_keys=True) + "\n").encode())
    baseline.path = path
    return baseline


def changed_fields(stored: dict, current: dict) -> list[str]:
    """Provenance fields that differ (``config_sha256`` changes with any head, loss or training setting). The
    training settings are compared without the run-local ones: a baseline stored for seeds 0-2 records seed 0's
    settings, and seed 1 is not a change."""
    def comparable(prov: dict, key: str):
        value = prov.get(key)
        return {k: v for k, v in value.items() if k not in RUN_LOCAL} if key == "train" and isinstance(value, dict) else value

    return [k for k in sorted(set(stored) | set(current)) if k != "seeds" and comparable(stored, k) != comparable(current, k)]
