"""``harness validate SUITE``: everything a run would check before training, and nothing trained.

The suite's keys, plugins and thresholds (``load_suite``), every candidate's training configuration
(``TrainConfig``), its head built at the encoder's real width and run forward, its retrieval path run twice in
eval mode (finite, and the same both times), its losses run on that output and backward, the datasets and splits it reads, and every stored baseline its checks compare with (loaded and
provenance-verified).
"""
from __future__ import annotations

from pathlib import Path
from typing import cast

from harness import sources
from harness.components import build_head, build_loss, is_trainable
from harness.config import TrainConfig
from harness.gate import BaselineStore
from harness.runner import verify_baselines
from harness.suite import Suite, SuiteError
from harness.train import training_losses


def validate(suite: Suite, data_dir: str | None = None) -> list[str]:
    """One line per candidate on success; raises the harness's own errors (one line each) otherwise."""
    dim = sources.make_encoder(suite.encoder).dim
    seeds = suite.seeds or [suite.seed]
    lines = []
    for spec in suite.candidates:
        where = f"{suite.path}: candidate {spec.name!r}"
        config = TrainConfig.from_dict(suite.train_config(spec, seed=seeds[0], data_dir=data_dir))
        head = build_head(spec.head, dim, spec.head_options)
        train_specs = training_losses(config, head)
        if is_trainable(head) and config.epochs > 0 and not train_specs:
            raise SuiteError(f"{where}: head {spec.head!r} is trainable but has no training loss (the candidate gives none, "
                             f"pretraining aside, and the head has no default_losses): add e.g. "
                             f"losses = {{ infonce_cos = {{ weight = 1.0, temperature = 0.05 }} }}")
        stages = [s for s in ((config.pretrain or {}).get("losses") or {}, train_specs) if s]
        for dataset in sorted(set(config.train) | set(config.eval)):
            splits = sources.make_dataset(dataset, data_dir).splits()
            for split in ({config.train_split} if dataset in config.train else set()) | ({config.eval_split} if dataset in config.eval else set()):
                if split not in splits:
                    raise SuiteError(f"{where}: dataset {dataset!r} has no {split!r} split (it has {', '.join(splits)})")
        _forward(head, dim, where, spec.head)
        if is_trainable(head):
            for stage in stages:
                _losses_on_forward(head, stage, dim, where, spec.head, config.hard_negatives)
        params = sum(p.numel() for p in head.parameters() if p.requires_grad)
        lines.append(f"{spec.name}: head {spec.head} at width {dim} ({params:,} trainable parameters), "
                     f"losses {', '.join(config.all_losses()) or 'the head defaults'}, {config.mode}, select {config.select}, "
                     f"checks {len(spec.checks)}, expected failures {len(spec.expect_fail)}")
    store = BaselineStore(cast(Path, suite.baselines_dir), data_dir)  # load_suite always sets it
    verify_baselines(suite, store, seeds[0], data_dir)
    for b in store.used():
        lines.append(f"baseline {b['path']}: {b['encoder']} {b['dataset']}/{b['split']} NDCG@10 {b['ndcg10']:.4f}, provenance verified")
    return lines + regression_warnings(suite, store.root, seeds)


def _forward(head, dim: int, where: str, name: str) -> None:
    """One forward pass of 8 random vectors at the encoder's width, in training and in eval mode: a head that
    raises does so here, not minutes into a run."""
    import torch

    from harness.files import raised_at

    gen = torch.Generator().manual_seed(0)
    q, d = torch.randn(8, dim, generator=gen), torch.randn(8, dim, generator=gen)
    for mode in ("training", "eval"):
        head.train(mode == "training")
        try:
            with torch.set_grad_enabled(mode == "training"):  # as training and evaluation run it
                head(q, d)
        except Exception as exc:
            raise SuiteError(f"{where}: head {name!r} raised on a forward pass ({mode} mode, 8 random {dim}-d vectors): "
                             f"{type(exc).__name__}: {exc}{raised_at(exc)}") from exc
    _retrieval_path(head, torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(d, dim=-1), where, name)


def _retrieval_path(head, q, d, where: str, name: str) -> None:
    """The head's retrieval path (encode_queries, encode_docs) in eval mode, twice, on unit-norm vectors (as the
    encoders give): its vectors must be finite and the same both times (what the ``reproducible`` check and every
    evaluation need)."""
    import torch

    from harness.files import raised_at
    from harness.measure import NonFiniteOutput, encode

    head.eval()
    for fn, x, side in ((head.encode_queries, q, "queries"), (head.encode_docs, d, "documents")):
        try:
            first = encode(fn, x, torch.device("cpu"), what=f"random {side}")
            again = encode(fn, x, torch.device("cpu"))
        except NonFiniteOutput as exc:
            raise SuiteError(f"{where}: head {name!r}: {exc}") from exc
        except Exception as exc:
            raise SuiteError(f"{where}: head {name!r} raised in {fn.__name__} (eval mode, 8 random vectors): "
                             f"{type(exc).__name__}: {exc}{raised_at(exc)}") from exc
        if not torch.equal(first, again):
            raise SuiteError(f"{where}: head {name!r}'s {fn.__name__} gave other vectors for the same 8 {side} called "
                             f"twice in eval mode: its retrieval path draws random numbers (dropout with training=True, "
                             f"noise outside `if self.training`); use nn.Dropout or F.dropout(x, p, training=self.training)")


def _losses_on_forward(head, stage: dict[str, dict], dim: int, where: str, name: str, hard_negatives: int = 0) -> None:
    """A training stage's losses on the head's training-mode output for 8 random pairs, with ``hard_negatives``
    random hard negatives per query and nothing masked, then backward through their weighted sum, as a training
    step does: a loss that cannot read this head's output (an ``aux`` key it lacks, a shape) or that returns no
    scalar says so here, not after minutes of encoding."""
    import torch

    from harness.files import raised_at

    gen = torch.Generator().manual_seed(0)
    q, d = torch.randn(8, dim, generator=gen), torch.randn(8, dim, generator=gen)
    head.train()
    head.zero_grad(set_to_none=True)
    out = head(q, d)
    if hard_negatives:
        out.negatives = head.encode_docs(torch.randn(8 * hard_negatives, dim, generator=gen))
    out.exclude = torch.zeros(8, 8 * (1 + hard_negatives), dtype=torch.bool)
    total = torch.zeros(())
    for loss_name, options in stage.items():
        try:
            value = build_loss(loss_name, options)(out)
        except Exception as exc:
            raise SuiteError(f"{where}: loss {loss_name!r} raised on head {name!r}'s output (training mode, 8 random "
                             f"{dim}-d pairs, {hard_negatives} hard negative(s) each): {type(exc).__name__}: {exc}{raised_at(exc)}") from exc
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise SuiteError(f"{where}: loss {loss_name!r} returned {shape} on head {name!r}'s output, not a scalar "
                             f"tensor: reduce it in the loss (e.g. .mean())")
        total = total + float(options.get("weight", 1.0)) * value
    try:
        if total.requires_grad:
            total.backward()
    except Exception as exc:
        raise SuiteError(f"{where}: the weighted sum of losses {', '.join(stage)} raised on backward through head {name!r}: "
                         f"{type(exc).__name__}: {exc}{raised_at(exc)}") from exc
    head.zero_grad(set_to_none=True)


def regression_warnings(suite: Suite, root: Path, seeds: list[int]) -> list[str]:
    """``warning:`` lines for candidates that `harness run` will fail on no_regression (unexpectedly): candidates
    that may be accepted without a stored regression baseline for the suite's seeds."""
    from harness.baselines import BaselineError
    from harness.regression import candidate_path, create_command, load, never_accepted

    out = []
    for spec in suite.candidates:
        if "no_regression" not in spec.checks or "no_regression" in spec.expect_fail or never_accepted(spec.expect_fail):
            continue
        path = candidate_path(root, suite.name, spec.name)
        try:
            stored = load(path).seeds() if path.is_file() else []
        except BaselineError as exc:
            out.append(f"warning: {exc}")
            continue
        missing = [s for s in seeds if s not in stored]
        if missing:
            what = f"no regression baseline ({path} is missing)" if not stored else \
                f"no regression baseline for seed{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} in {path}"
            out.append(f"warning: candidate {spec.name!r} has {what}: `harness run` fails its no_regression until "
                       f"`{create_command(suite.path, spec.name, sorted(set(stored) | set(seeds)) if stored else None)}`")
    return out
