"""The training configuration: one typed object from a suite (or ``harness train``) to the trainer.

A suite's ``[train]`` table, a candidate's ``train`` overrides and ``harness train``'s flags all become a
``TrainConfig`` through ``TrainConfig.from_dict``, which is the only validation: every error is a
``ValueError`` naming the key, the value and what is allowed, and a suite reports it with its file and key.

The protocol keys decide how a head gets its chance (docs/gate.md, "What it takes to pass"):

``mode``            "per_dataset" (a head per training dataset, scored on that dataset) or "pooled"
``hard_negatives``  negatives per query from the frozen encoder's top ``negative_depth`` (judged docs excluded)
``dev_fraction``    share of each dataset's train queries held out as the dev split (seeded, recorded)
``select``          "dev" (the epoch, and lr of ``lr_grid``, with the best dev NDCG@10) or "last"
``patience``        stop after this many epochs without a better dev NDCG@10 (0: run every epoch)
``positives``       "one_per_query" (each query once per epoch, one judged document drawn) or "all" pairs
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any

MODES = ("per_dataset", "pooled")
SELECT = ("dev", "last")
POSITIVES = ("one_per_query", "all")
MAX_EPOCHS = 1000
MAX_BATCH = 1 << 16


class ConfigError(ValueError):
    """A training setting is wrong; ``key`` names it (a suite reports it with its file and table)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@dataclass
class TrainConfig:
    """One training run. ``losses``: loss name -> ``{"weight": w, **options}`` (empty: the head's
    ``default_losses``). ``pretrain``: an optional first stage ``{"losses": {...}, "epochs": n, "lr": x}``
    (e.g. Barlow Twins) whose epochs come first in the telemetry (epochs 1..n), then ``epochs`` of ``losses``."""

    encoder: str = "minilm"
    head: str = "identity"
    head_options: dict = field(default_factory=dict)
    losses: dict[str, dict] = field(default_factory=dict)
    train: list[str] = field(default_factory=lambda: ["scifact", "nfcorpus"])
    eval: list[str] = field(default_factory=lambda: ["scifact", "nfcorpus"])
    eval_split: str = "test"
    train_split: str = "train"
    epochs: int = 20  # at most; early stopping on dev usually ends sooner
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    max_grad_norm: float | None = None  # clip the gradient norm before each step (seeds: 1.0); None = no clipping
    seed: int = 0
    device: str | None = None
    max_pairs: int | None = 10000  # per train dataset with positives="all" (NFCorpus train has 110k)
    pretrain: dict | None = None
    data_dir: str | None = None
    probe_pairs: int = 1024  # fixed training pairs that per-epoch telemetry is measured on
    samples_per_epoch: int = 10  # training steps sampled into EpochRecord.steps
    eval_doc_sample: int = 1000  # documents per eval dataset for RankMe and uniformity
    threads: int | None = 1  # torch CPU threads while training; None = leave as is
    # -- the protocol ------------------------------------------------------------------------------
    mode: str = "per_dataset"
    hard_negatives: int = 1
    negative_depth: int = 50
    dev_fraction: float = 0.2
    select: str = "dev"
    patience: int = 8
    lr_grid: list[float] = field(default_factory=list)  # empty: only ``lr``
    positives: str = "one_per_query"

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build and validate; a bad key or value raises ``ValueError`` naming it and the valid choices."""
        if not isinstance(d, dict):
            raise ValueError(f"training config must be a mapping, got {type(d).__name__}")
        fields = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in fields:
                close = difflib.get_close_matches(str(key), list(fields), n=2, cutoff=0.6)
                hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                raise ConfigError(str(key), f"training config: unknown key {key!r}.{hint} Valid keys: {', '.join(fields)}")
        d = copy.deepcopy(d)
        for key in ("train", "eval"):
            if isinstance(d.get(key), str):
                d[key] = [v.strip() for v in d[key].split(",") if v.strip()]
        config = cls(**d)
        config.validate()
        return config

    def validate(self) -> None:
        def bad(key: str, what: str) -> ConfigError:
            return ConfigError(key, f"training config: {key} {what} (got {getattr(self, key, None)!r})")

        def integer(key: str, low: int, high: int | None = None) -> None:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
                raise bad(key, f"must be an integer >= {low}" + (f" and <= {high}" if high is not None else ""))

        def number(key: str, low: float, *, strict: bool = False, high: float | None = None, value: Any = None) -> float:
            value = getattr(self, key) if value is None else value
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(key, "must be a finite number")
            if value < low or (strict and value == low) or (high is not None and value > high):
                rng = f"> {low}" if strict else f">= {low}"
                raise bad(key, f"must be {rng}" + (f" and <= {high}" if high is not None else ""))
            return float(value)

        for key in ("encoder", "head", "eval_split", "train_split"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise bad(key, "must be a non-empty string")
        if not isinstance(self.head_options, dict):
            raise bad("head_options", "must be a mapping of option -> value")
        for key in ("train", "eval"):
            value = getattr(self, key)
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                raise bad(key, "must be a non-empty list of dataset names")
        integer("epochs", 0, MAX_EPOCHS)
        integer("batch_size", 2, MAX_BATCH)
        integer("seed", 0, 2**32 - 1)
        integer("probe_pairs", 2)
        integer("samples_per_epoch", 0)
        integer("eval_doc_sample", 2)
        integer("hard_negatives", 0, 64)
        integer("negative_depth", 1, 10000)
        integer("patience", 0, MAX_EPOCHS)
        if self.threads is not None:
            integer("threads", 1)
        if self.max_pairs is not None:
            integer("max_pairs", 2)
        if self.max_grad_norm is not None:
            self.max_grad_norm = number("max_grad_norm", 0.0, strict=True)
        self.lr = number("lr", 0.0, strict=True, high=10.0)
        self.weight_decay = number("weight_decay", 0.0, high=10.0)
        self.dev_fraction = number("dev_fraction", 0.0, high=0.9)
        if not isinstance(self.lr_grid, list):
            raise bad("lr_grid", "must be a list of learning rates, e.g. [1e-4, 3e-4, 1e-3] (empty: only lr)")
        self.lr_grid = [number("lr_grid", 0.0, strict=True, high=10.0, value=v) for v in self.lr_grid]
        for key, choices in (("mode", MODES), ("select", SELECT), ("positives", POSITIVES)):
            if getattr(self, key) not in choices:
                raise bad(key, f"must be one of {', '.join(map(repr, choices))}")
        if self.select == "dev" and self.dev_fraction == 0:
            raise bad("dev_fraction", "must be > 0 when select = 'dev' (the epoch is chosen on the dev split; "
                                      "set select = 'last' to train without one)")
        if len(self.lr_grid) > 1 and self.dev_fraction == 0:
            raise bad("lr_grid", "needs a dev split to choose on (dev_fraction > 0)")
        if self.mode == "per_dataset":
            missing = [d for d in self.eval if d not in self.train]
            if missing:
                raise bad("eval", f"has {', '.join(missing)} without a training dataset: mode 'per_dataset' trains a head "
                                  f"per training dataset and scores it on that dataset; add them to train datasets or "
                                  f"set mode = 'pooled'")
        self.losses = normalize_losses(self.losses, "losses")
        if self.pretrain is not None:
            self._validate_pretrain()

    def _validate_pretrain(self) -> None:
        if not isinstance(self.pretrain, dict):
            raise ConfigError("pretrain", f'training config: pretrain must be a mapping {{"losses": {{...}}, "epochs": n}} (got {self.pretrain!r})')
        allowed = {"losses", "epochs", "lr"}
        unknown = set(self.pretrain) - allowed
        if unknown:
            raise ConfigError("pretrain", f"training config: pretrain has unknown keys {sorted(unknown)}; valid: {', '.join(sorted(allowed))}")
        if not self.pretrain.get("losses"):
            raise ConfigError("pretrain", "training config: pretrain.losses is missing or empty; e.g. {\"barlow\": {\"weight\": 1.0}}")
        epochs = self.pretrain.get("epochs", 1)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= MAX_EPOCHS:
            raise ConfigError("pretrain", f"training config: pretrain.epochs must be an integer in [1, {MAX_EPOCHS}] (got {epochs!r})")
        self.pretrain = {**self.pretrain, "epochs": epochs, "losses": normalize_losses(self.pretrain["losses"], "pretrain.losses")}
        lr = self.pretrain.get("lr")
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0):
            raise ConfigError("pretrain", f"training config: pretrain.lr must be a positive finite number (got {lr!r})")

    @property
    def lrs(self) -> list[float]:
        """The learning rates to try (``lr_grid``, else ``lr``)."""
        return list(self.lr_grid) or [float(self.lr)]

    def all_losses(self) -> dict[str, dict]:
        """Pretraining losses and training losses: every loss the run builds."""
        return {**((self.pretrain or {}).get("losses") or {}), **self.losses}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def normalize_losses(losses: Any, where: str) -> dict[str, dict]:
    """``{name: weight}`` or ``{name: {"weight": w, **options}}`` -> the latter (weight defaults to 1)."""
    if not isinstance(losses, dict):
        raise ConfigError(where, f"training config: {where} must be a mapping of loss name -> {{weight, options}}, got {type(losses).__name__}")
    out = {}
    for name, spec in losses.items():
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            spec = {"weight": spec}
        if not isinstance(spec, dict):
            raise ConfigError(where, f"training config: {where}.{name} must be a weight or a mapping with 'weight' and options, got {spec!r}")
        spec = dict(spec)
        weight = spec.setdefault("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ConfigError(where, f"training config: {where}.{name}.weight must be a finite number >= 0, got {weight!r}")
        spec["weight"] = float(weight)
        out[str(name)] = spec
    return out
