"""Train a head on cached frozen-encoder embeddings under the training protocol, recording its telemetry.

``train(config)`` trains one head per unit (``harness.protocol``: per training dataset, or pooled), each
for every learning rate of ``lr_grid``, with early stopping on the dev split, and keeps the epoch and lr
with the best dev NDCG@10 (``select = "dev"``) or the last epoch (``select = "last"``). Every epoch ends with
telemetry on a fixed probe of training pairs, NDCG@10 on the dev queries and on the unit's evaluation
datasets (epoch 0 = the untrained head). Test scores are recorded, never used to choose anything.

Every step's loss, loss components and gradient norm are traced; a non-finite one stops the trial at
once and is recorded (``TrainRun.stopped``), so the ``finite`` check can name the step.

Determinism: each trial builds its head after ``torch.manual_seed(seed)`` and draws its epochs, negatives
and probe from one ``torch.Generator`` seeded with ``seed``; on CPU two runs give identical telemetry.
"""
from __future__ import annotations

import copy
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Union

import torch

from harness import sources
from harness import telemetry as tm
from harness.components import build_head, build_loss, check_components, is_trainable
from harness.config import TrainConfig, normalize_losses
from harness.files import warn, write_atomic
from harness.measure import (  # noqa: F401
    attach_reference,
    combine,
    dev_ndcg10,
    evaluate_head,
    grad_norm,
    load_eval,
    probe,
    reproducibility,
    step_sample,
)
from harness.progress import PlainProgress, default_interval, on_terminal, progress_bar
from harness.protocol import Unit, build_unit, load_pairs, units  # noqa: F401  (load_pairs: re-exported)
from harness.types import EpochRecord, Head, TrainResult, TrainRun

__all__ = ["TrainConfig", "train", "train_unit", "load_head", "build_head", "build_loss", "is_trainable", "normalize_losses"]


def _device(config: TrainConfig) -> torch.device:
    if config.device:
        try:
            device = torch.device(config.device)
        except RuntimeError as exc:
            raise ValueError(f"training config: device {config.device!r} is not a torch device: {exc}") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"training config: device {config.device!r} asked for, but CUDA is not available here")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _save_head(state: dict, path: Path, meta: dict) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    write_atomic(path, save(tensors, metadata={k: json.dumps(v) for k, v in meta.items()}))


def load_head(path: str | Path, device: str = "cpu") -> Head:
    """Rebuild a head from ``head.safetensors`` (its metadata names the head, options and input dim)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    with safe_open(str(path), "pt") as fh:
        meta = {k: json.loads(v) for k, v in (fh.metadata() or {}).items()}
    if "head" not in meta:
        raise ValueError(f"{path} has no 'head' metadata: it was not written by harness.train")
    head = build_head(meta["head"], meta["dim"], meta.get("head_options", {}))
    head.load_state_dict(load_file(str(path), device=device))
    return head.to(device).eval()


Progress = Union[bool, Literal["auto", "lines", "off"]]


def train(config: TrainConfig | dict, out_dir: Path | None = None, progress: Progress = True,
          on_epoch: Callable[[str, EpochRecord], None] | None = None, label: str | None = None) -> TrainResult:
    """Train every unit of ``config``; with ``out_dir``, each unit writes ``<out_dir>/<unit>/telemetry.json``,
    ``head.safetensors`` (the selected epoch) and ``head_last.safetensors``.

    ``progress``: ``"auto"`` (or ``True``) shows a bar per epoch on a terminal and, elsewhere (a CI log), a line
    every ``$HARNESS_PROGRESS_INTERVAL`` seconds (15) over the whole run's epochs, starting with ``label``;
    ``"lines"`` those lines even on a terminal (training in a worker process); ``"off"`` (or ``False``) nothing."""
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    config = copy.deepcopy(config)
    config.validate()
    check_components(config.head, config.head_options, {**((config.pretrain or {}).get("losses") or {}), **(config.losses or {})})
    threads = torch.get_num_threads()
    mode = progress_mode(progress)
    bars = mode == "auto" and on_terminal()
    todo = units(config)
    try:
        with _Lines(label or f"training {config.head} (seed {config.seed})", _epoch_budget(config, todo),
                    on=mode == "lines" or (mode == "auto" and not on_terminal())) as lines:
            runs = {}
            for unit in todo:
                unit_dir = Path(out_dir) / unit.name if out_dir is not None else None
                runs[unit.name] = train_unit(config, unit, unit_dir, bars, on_epoch, lines)
        return TrainResult(config.mode, runs)
    finally:
        torch.set_num_threads(threads)


def progress_mode(progress: Progress) -> str:
    """``"auto"``, ``"lines"`` or ``"off"`` (``True`` is auto, ``False`` off)."""
    mode = {True: "auto", False: "off"}.get(progress, progress) if isinstance(progress, bool) else progress
    if mode not in ("auto", "lines", "off"):
        raise ValueError(f"train: progress {progress!r} is not one of auto, lines, off (or True/False)")
    return mode


def _epochs_per_trial(config: TrainConfig) -> int:
    return (int(config.pretrain["epochs"]) if config.pretrain else 0) + config.epochs


def _epoch_budget(config: TrainConfig, todo: list[Unit]) -> int:
    """Every epoch the run may train: units x learning rates x (pretraining + training) epochs."""
    return len(todo) * len(config.lrs) * _epochs_per_trial(config)


class _Lines:
    """A training run's plain progress lines (off a terminal): epochs done of the run's budget, where it is now.
    A trial that stops early (patience, a non-finite step, an untrainable head) counts its skipped epochs at once,
    so the time left assumes the rest trains every epoch: early stopping ends sooner."""

    def __init__(self, label: str, total: int, on: bool):
        self.label = label
        self.lines = PlainProgress(label, total, default_interval(), unit="epochs") if on and total else None

    def __enter__(self) -> "_Lines":
        if self.lines is not None:
            self.lines.__enter__()
        return self

    def __exit__(self, *exc) -> Literal[False]:
        if self.lines is not None:
            self.lines.description = self.label
            self.lines.__exit__(*exc)
        return False

    def at(self, where: str, epochs: int = 0) -> None:
        """Now at ``where``; ``epochs`` more of the budget are done (trained or skipped)."""
        if self.lines is not None:
            self.lines.description = f"{self.label}, {where}"
            if epochs:
                self.lines.advance(epochs)


_NO_LINES = _Lines("", 0, on=False)  # a trial or unit trained outside train(): no lines


@dataclass
class _Trial:
    lr: float
    epochs: list[EpochRecord]
    best_epoch: int
    best_dev: float
    best_state: dict
    last_state: dict
    similarity: str
    stopped: dict | None = None
    early_stopped: bool = False
    losses: dict = field(default_factory=dict)
    states: dict[int, tuple[dict, dict]] = field(default_factory=dict)  # lean trials: epoch -> (loss stage, weights)


def _mean(d: dict[str, float]) -> float:
    return sum(d.values()) / len(d) if d else float("-inf")


def train_unit(config: TrainConfig, unit: Unit, out_dir: Path | None = None, progress: bool = True,
               on_epoch: Callable[[str, EpochRecord], None] | None = None, lines: _Lines = _NO_LINES) -> TrainRun:
    """Train one unit's head for each learning rate and keep the trial and epoch the protocol selects
    (``progress``: a bar per epoch; ``lines``: the run's plain progress lines)."""
    lines.at(f"{unit.name}: loading")
    device = _device(config)
    gen = torch.Generator().manual_seed(config.seed)
    clock = {"load": 0.0, "train_steps": 0.0, "evaluate": 0.0}  # wall seconds by phase, in protocol["seconds"]
    t0 = time.perf_counter()
    tset, devs = build_unit(config, unit, gen)  # may encode or mine (a cold cache): with every thread torch has
    sets = load_eval(config, gen, unit.eval)
    clock["load"] = time.perf_counter() - t0
    if config.threads is not None:  # small heads train fastest on one thread; train() restores the setting
        torch.set_num_threads(config.threads)
    dim = tset.queries.shape[1]
    for s in sets:
        if s.q_emb.shape[1] != dim:
            raise ValueError(f"eval dataset {s.name!r} embeddings are {s.q_emb.shape[1]}-d, training ones {dim}-d")

    t0 = time.perf_counter()
    frozen = build_head("identity", dim)
    base = evaluate_head(frozen, sets, torch.device("cpu"), similarity=sources.encoder_similarity(config.encoder))
    attach_reference(sets, config.encoder, base)
    clock["evaluate"] += time.perf_counter() - t0

    # With an lr grid, each trial records only dev NDCG@10 (what selection reads) and keeps its weights per
    # epoch; the chosen trial's full telemetry is then measured from those weights, with the same numbers an
    # in-line measurement gives (evaluation draws no random numbers), at a third of the cost of measuring all.
    lean = len(config.lrs) > 1
    key = (lambda t: t.best_dev) if config.select == "dev" else (lambda t: _mean(t.epochs[-1].dev_ndcg10))
    trials: list[_Trial] = []
    chosen: _Trial | None = None
    for lr in config.lrs:
        trial = _trial(config, unit, lr, tset, devs, sets, dim, device, progress, on_epoch, clock, full=not lean, lines=lines)
        trials.append(trial)
        if chosen is None or ((config.select == "dev" or devs) and key(trial) > key(chosen)):  # ties: the grid's order
            if chosen is not None:
                chosen.states = {}
            chosen = trial
        else:
            trial.states = {}
    assert chosen is not None
    if lean:
        lines.at(f"{unit.name}: measuring the chosen trial (lr {chosen.lr:g})")
        _complete(config, unit, chosen, tset, devs, sets, dim, device, on_epoch, clock)
    selected = chosen.best_epoch if config.select == "dev" else chosen.epochs[-1].epoch
    kept = chosen.best_state if config.select == "dev" else chosen.last_state
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # later units draw as before
        torch.manual_seed(config.seed)
        head = build_head(config.head, dim, config.head_options).to(device)
        head.load_state_dict(kept)
        reproducible = reproducibility(head, sets, device)
    clock["evaluate"] += time.perf_counter() - t0
    unit_config = {**config.to_dict(), "train": list(unit.train), "eval": list(unit.eval), "lr": chosen.lr,
                   "losses": chosen.losses}  # the head's default_losses when none were configured
    info = tset.info
    protocol = {
        "mode": config.mode, "unit": unit.name, "train_datasets": list(unit.train), "eval_datasets": list(unit.eval),
        "select": config.select, "selected_epoch": selected, "lr": chosen.lr, "lr_grid": config.lrs,
        "patience": config.patience, "max_epochs": config.epochs, "positives": config.positives,
        "hard_negatives": config.hard_negatives, "negative_depth": config.negative_depth,
        "dev_fraction": config.dev_fraction, "split": info["datasets"], "dev_ids": info.get("dev_ids", {}),
        "device": str(device), "seconds": {k: round(v, 3) for k, v in clock.items()},
        "trials": [{"lr": t.lr, "best_epoch": t.best_epoch, "best_dev_ndcg10": t.best_dev, "epochs_run": t.epochs[-1].epoch,
                    "early_stopped": t.early_stopped, "stopped": t.stopped,
                    "dev_ndcg10": [_mean(e.dev_ndcg10) for e in t.epochs]} for t in trials],
    }
    run = TrainRun(
        config=unit_config, similarity=chosen.similarity, epochs=chosen.epochs,
        baseline_ndcg10=base["ndcg10"], baseline_per_query_ndcg10=base["per_query_ndcg10"], baseline_rankme=base["rankme"],
        selected=selected, protocol=protocol, stopped=chosen.stopped, reproducibility=reproducible,
    )
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        meta = {"head": config.head, "head_options": config.head_options, "dim": dim, "similarity": chosen.similarity,
                "encoder": config.encoder, "unit": unit.name, "lr": chosen.lr}
        _save_head(kept, out_dir / "head.safetensors", {**meta, "epoch": selected})
        _save_head(chosen.last_state, out_dir / "head_last.safetensors", {**meta, "epoch": chosen.epochs[-1].epoch})
        run.checkpoint = str(out_dir / "head.safetensors")
        run.telemetry_path = str(out_dir / "telemetry.json")
        tm.save_run(run, out_dir / "telemetry.json")
    return run


def _nonfinite(values: dict[str, float]) -> tuple[str, float] | None:
    for name, value in values.items():
        if not math.isfinite(value):
            return name, value
    return None


def training_losses(config: TrainConfig, head) -> dict[str, dict]:
    """The training stage's losses: the configured ones, else the head's ``default_losses`` (pretraining's aside)."""
    return config.losses or normalize_losses(copy.deepcopy(getattr(type(head), "default_losses", None) or {}), "losses")


def _setup(config: TrainConfig, lr: float, dim: int, device: torch.device, tset):
    """A trial's head, losses, loss stages, generator and probe pairs: the same on every call with one seed."""
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    head = build_head(config.head, dim, config.head_options).to(device)
    trainable = is_trainable(head)
    loss_specs = training_losses(config, head)
    if trainable and not loss_specs and config.epochs > 0:
        raise ValueError(f"head {config.head!r} is trainable but no loss is configured (and it has no default_losses); "
                         f"give losses, e.g. --loss infonce_cos")
    stages: list[tuple[str, dict[str, dict], int, float]] = []
    if trainable and config.pretrain:
        stages.append(("pretrain", config.pretrain["losses"], config.pretrain["epochs"], float(config.pretrain.get("lr", lr))))
    if trainable:
        stages.append(("train", loss_specs, config.epochs, float(lr)))
    all_specs = {**(config.pretrain["losses"] if config.pretrain else {}), **loss_specs}
    losses = {name: build_loss(name, spec) for name, spec in all_specs.items()}
    for name, loss in losses.items():
        sim = getattr(loss, "similarity", None)
        if sim and sim != head.similarity:
            warnings.warn(f"loss {name!r} scores by {sim!r} but head {config.head!r} retrieves by {head.similarity!r}: "
                          f"training and evaluation disagree (seed 002, lesson 3)", stacklevel=2)

    probe_idx = torch.randperm(len(tset), generator=gen)[: config.probe_pairs]
    return head, trainable, loss_specs, stages, losses, gen, probe_idx


def _measure(head, trainable: bool, losses, stage: dict[str, dict], probe_idx, config: TrainConfig, tset, sets, devs,
             device: torch.device, epoch: int, steps: list[dict], trace: dict[str, list[float]]) -> EpochRecord:
    """An epoch's full telemetry: the probe, the evaluation datasets and the dev split."""
    p = probe(head, tset, probe_idx, losses, stage, config.batch_size, device, with_grad=trainable)
    ev = evaluate_head(head, sets, device)
    return EpochRecord(
        epoch=epoch, loss=p["loss"], q_norm=p["q_norm"], d_norm=p["d_norm"], pos_sim=p["pos_sim"], neg_sim=p["neg_sim"],
        pos_sim_by=p["pos_sim_by"],
        grad_norm=p["grad_norm"], residual=p["residual"], rankme=ev["rankme"], alignment=ev["alignment"],
        uniformity=ev["uniformity"], ndcg10=ev["ndcg10"], per_query_ndcg10=ev["per_query_ndcg10"],
        top10_overlap=ev["top10_overlap"], rerank_ndcg10=ev["rerank_ndcg10"], dev_ndcg10=dev_ndcg10(head, devs, device),
        steps=steps, trace=trace,
    )


def _complete(config: TrainConfig, unit: Unit, trial: _Trial, tset, devs, sets, dim: int, device: torch.device,
              on_epoch, clock: dict[str, float]) -> None:
    """Replace a lean trial's dev-only records with full telemetry measured from its kept weights."""
    t0 = time.perf_counter()
    head, trainable, _, _, losses, _, probe_idx = _setup(config, trial.lr, dim, device, tset)
    for i, lean in enumerate(trial.epochs):
        if lean.epoch not in trial.states:  # the partial epoch a non-finite step stopped: its trace is all there is
            continue
        stage, state = trial.states[lean.epoch]
        head.load_state_dict(state)
        rec = _measure(head, trainable, losses, stage, probe_idx, config, tset, sets, devs, device, lean.epoch, lean.steps, lean.trace)
        if rec.dev_ndcg10 != lean.dev_ndcg10:  # selection read the trial's own numbers; say that these differ
            warn(f"unit {unit.name!r}: dev NDCG@10 of epoch {lean.epoch} measured again from its weights differs "
                 f"({rec.dev_ndcg10} vs {lean.dev_ndcg10}): the head's evaluation is not reproducible on {device} "
                 f"(the reproducible check measures it)")
        rec.seconds = lean.seconds
        trial.epochs[i] = rec
        if on_epoch:
            on_epoch(unit.name, rec)
    trial.states = {}
    if device.type == "cuda":
        torch.cuda.synchronize()
    clock["evaluate"] += time.perf_counter() - t0


def _trial(config: TrainConfig, unit: Unit, lr: float, tset, devs, sets, dim: int, device: torch.device, progress: bool,
           on_epoch, clock: dict[str, float], full: bool = True, lines: _Lines = _NO_LINES) -> _Trial:
    """One learning rate's training. ``full``: every epoch's full telemetry; else dev NDCG@10 and the weights
    per epoch (``_complete`` measures the rest if the trial is chosen)."""
    head, trainable, loss_specs, stages, losses, gen, probe_idx = _setup(config, lr, dim, device, tset)
    params = [p for p in head.parameters() if p.requires_grad]
    states: dict[int, tuple[dict, dict]] = {}
    budget = sum(n for _, _, n, _ in stages)

    def record(epoch: int, stage: dict[str, dict], steps: list[dict], trace: dict[str, list[float]]) -> EpochRecord:
        t0 = time.perf_counter()
        if full:
            rec = _measure(head, trainable, losses, stage, probe_idx, config, tset, sets, devs, device, epoch, steps, trace)
        else:
            rec = EpochRecord(epoch=epoch, dev_ndcg10=dev_ndcg10(head, devs, device), steps=steps, trace=trace)
            states[epoch] = (stage, snapshot())
        if device.type == "cuda":
            torch.cuda.synchronize()
        clock["evaluate"] += time.perf_counter() - t0
        if on_epoch and full:
            on_epoch(unit.name, rec)
        return rec

    def kept(epoch: int) -> dict:
        """The weights just recorded for ``epoch``: a lean trial's own copy, else a fresh one."""
        return states[epoch][1] if epoch in states else snapshot()

    def snapshot() -> dict:
        return {k: v.detach().clone() for k, v in head.state_dict().items()}

    first_stage = stages[0][1] if stages else loss_specs
    epochs = [record(0, first_stage, [], {})]
    best_dev, best_epoch, best_state = _mean(epochs[0].dev_ndcg10), 0, kept(0)
    last_good = best_state
    epoch, stopped, early = 0, None, False
    for stage_name, stage, n_epochs, stage_lr in stages:
        if stopped or early:
            break
        optimizer = torch.optim.AdamW(params, lr=stage_lr, weight_decay=config.weight_decay)
        for _ in range(n_epochs):
            epoch += 1
            start = time.perf_counter()
            qi, di = tset.epoch(config.positives, gen)
            n_batches = len(qi) // config.batch_size  # drop the last partial batch: in-batch negatives need a full one
            if n_batches == 0:
                raise ValueError(f"unit {unit.name!r}: only {len(qi)} training examples per epoch, fewer than batch_size "
                                 f"{config.batch_size}; lower batch_size")
            every = max(1, n_batches // config.samples_per_epoch) if config.samples_per_epoch else 0
            steps: list[dict] = []
            trace: dict[str, list[float]] = {}
            head.train()
            t_steps = time.perf_counter()
            with _bar(progress, f"{unit.name} lr {stage_lr:g} {stage_name} epoch {epoch}", n_batches) as advance:
                for b in range(n_batches):
                    bq, bd = qi[b * config.batch_size : (b + 1) * config.batch_size], di[b * config.batch_size : (b + 1) * config.batch_size]
                    out = head(tset.queries[bq].to(device), tset.docs[bd].to(device))
                    cols = bd
                    if config.hard_negatives and tset.negatives is not None:
                        neg = tset.sample_negatives(bq, config.hard_negatives, gen).flatten()
                        out.negatives = head.encode_docs(tset.docs[neg].to(device))
                        cols = torch.cat([bd, neg])
                    out.exclude = tset.exclude(bq, cols).to(device)
                    total, parts = combine(losses, stage, out)
                    optimizer.zero_grad(set_to_none=True)
                    total.backward()
                    gnorm = grad_norm(params)
                    values = {"loss_total": float(total.detach()), **{f"loss_{k}": float(v.detach()) for k, v in parts.items()},
                              "grad_norm": gnorm}
                    for k, v in values.items():
                        trace.setdefault(k, []).append(v)
                    if every and (b % every == 0 or b == n_batches - 1):
                        steps.append(step_sample(epoch, b, n_batches, total, parts, gnorm, out, losses, stage))
                    bad = _nonfinite(values)
                    if bad:
                        stopped = {"epoch": epoch, "step": b, "component": bad[0], "value": str(bad[1]), "lr": stage_lr,
                                   "reason": f"{bad[0]} became {bad[1]} at step {b} of epoch {epoch}; training stopped, "
                                             f"the last finite epoch's weights are kept"}
                        break
                    if config.max_grad_norm is not None:  # the trace keeps the norm before clipping
                        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                    optimizer.step()
                    advance(1)
            if device.type == "cuda":
                torch.cuda.synchronize()
            clock["train_steps"] += time.perf_counter() - t_steps
            if stopped:  # record the partial epoch's trace only; keep the last finite epoch's weights
                epochs.append(EpochRecord(epoch=epoch, steps=steps, trace=trace, seconds=time.perf_counter() - start))
                head.load_state_dict(last_good)
                break
            rec = record(epoch, stage, steps, trace)
            rec.seconds = time.perf_counter() - start
            epochs.append(rec)
            lines.at(f"{unit.name} lr {lr:g}: epoch {epoch}/{budget}", 1)
            last_good = kept(epoch)
            dev = _mean(rec.dev_ndcg10)
            if dev > best_dev:
                best_dev, best_epoch, best_state = dev, epoch, last_good
            if (config.select == "dev" and stage_name == "train"
                    and patience_ran_out(epoch, best_epoch, config.patience, _stage_start(stages, stage_name))):
                early = True
                break
    # the epochs this trial did not train (early stopping, a non-finite step, an untrainable head) are done too
    trained = len(epochs) - 1 - (1 if stopped else 0)  # each already counted; a stopped epoch's partial record is not
    ended = "stopped" if (stopped or epoch < budget) else "done"  # a non-finite step in the last epoch stops it too
    lines.at(f"{unit.name} lr {lr:g}: {ended} at epoch {epoch}/{budget}", _epochs_per_trial(config) - trained)
    return _Trial(lr, epochs, best_epoch, best_dev, best_state, snapshot(), head.similarity, stopped, early, loss_specs, states)


def patience_ran_out(epoch: int, best_epoch: int, patience: int, start: int = 0) -> bool:
    """Early stopping's rule: ``patience`` epochs (0: never stop) have passed since the best dev epoch, or since
    ``start`` (the epoch before the training stage: pretraining cannot use the patience up)."""
    return bool(patience) and epoch - max(best_epoch, start) >= patience


def _stage_start(stages, name: str) -> int:
    """The epoch before ``name``'s first: patience counts from there, so pretraining cannot use it up."""
    start = 0
    for stage_name, _, n, _ in stages:
        if stage_name == name:
            return start
        start += n
    return start


class _NoBar:
    def __enter__(self):
        return lambda n=1: None

    def __exit__(self, *exc):
        return False


def _bar(show: bool, description: str, total: int):
    if not show:
        return _NoBar()

    return progress_bar(description, total)
