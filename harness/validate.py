"""``harness validate SUITE``: everything a run would check before training, and nothing trained.

The suite's keys, plugins and thresholds (``load_suite``), every candidate's training configuration
(``TrainConfig``), its head built at the encoder's real width and its losses, the datasets and splits it
reads, and every stored baseline its checks compare with (loaded and provenance-verified).
"""
from __future__ import annotations

from pathlib import Path
from typing import cast

from harness import sources
from harness.components import build_head, build_loss
from harness.config import TrainConfig
from harness.gate import BaselineStore
from harness.runner import verify_baselines
from harness.suite import Suite, SuiteError


def validate(suite: Suite, data_dir: str | None = None) -> list[str]:
    """One line per candidate on success; raises the harness's own errors (one line each) otherwise."""
    dim = sources.make_encoder(suite.encoder).dim
    seeds = suite.seeds or [suite.seed]
    lines = []
    for spec in suite.candidates:
        where = f"{suite.path}: candidate {spec.name!r}"
        config = TrainConfig.from_dict(suite.train_config(spec, seed=seeds[0], data_dir=data_dir))
        head = build_head(spec.head, dim, spec.head_options)
        for name, options in config.all_losses().items():
            build_loss(name, options)
        for dataset in sorted(set(config.train) | set(config.eval)):
            splits = sources.make_dataset(dataset, data_dir).splits()
            for split in ({config.train_split} if dataset in config.train else set()) | ({config.eval_split} if dataset in config.eval else set()):
                if split not in splits:
                    raise SuiteError(f"{where}: dataset {dataset!r} has no {split!r} split (it has {', '.join(splits)})")
        params = sum(p.numel() for p in head.parameters() if p.requires_grad)
        lines.append(f"{spec.name}: head {spec.head} at width {dim} ({params:,} trainable parameters), "
                     f"losses {', '.join(config.all_losses()) or 'the head defaults'}, {config.mode}, select {config.select}, "
                     f"checks {len(spec.checks)}, expected failures {len(spec.expect_fail)}")
    store = BaselineStore(cast(Path, suite.baselines_dir), data_dir)  # load_suite always sets it
    verify_baselines(suite, store, seeds[0], data_dir)
    for b in store.used():
        lines.append(f"baseline {b['path']}: {b['encoder']} {b['dataset']}/{b['split']} NDCG@10 {b['ndcg10']:.4f}, provenance verified")
    return lines
