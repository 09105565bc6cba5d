"""The interfaces a plugin's components satisfy.

Encoders turn text into vectors; datasets hold BEIR-format corpora; heads are ``torch.nn.Module``
subclasses trained on top of frozen encoder embeddings; losses score a head's output; checks read a
trained candidate's telemetry and scores and return a verdict.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence, TypedDict, runtime_checkable

import torch
from torch import nn

Similarity = Literal["cos", "dot"]
SIMILARITIES: tuple[str, ...] = ("cos", "dot")


@runtime_checkable
class Encoder(Protocol):
    """A text encoder. ``fingerprint`` identifies its weights; it keys the embedding cache."""

    name: str
    dim: int
    max_length: int
    similarity: Similarity
    dtype: str

    def fingerprint(self) -> str: ...

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, description: str = "") -> torch.Tensor: ...


@dataclass
class Split:
    """One split of a BEIR dataset: only query *text* is kept (no metadata, no labels)."""

    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


@runtime_checkable
class Dataset(Protocol):
    name: str
    path: Path

    def splits(self) -> list[str]: ...

    def load(self, split: str) -> Split: ...

    def file_hashes(self, split: str) -> dict[str, str]: ...


class Aux(TypedDict, total=False):
    """The tensors a head may hand to losses and telemetry beside its vectors (``HeadOutput.aux``); every key is
    optional, and these are the ones the harness reads."""

    correction: torch.Tensor  # (B, D) what a residual head adds to its input: nonzero_residuals and telemetry read it
    delta: torch.Tensor  # (B, D) the raw residual before its scale
    alpha: torch.Tensor  # the residual's scale (a scalar or per row)
    residual_base: torch.Tensor  # (B, D) what the correction is added to, when not the input query (a projection)
    prediction: torch.Tensor  # (B, D) a predictor's output, for the `predictive` loss (source = "prediction")
    projection_q: torch.Tensor  # (B, P) pretraining projections the `barlow` loss pulls together
    projection_d: torch.Tensor


@dataclass
class HeadOutput:
    """What a head returns for a batch of (query, positive document) embedding pairs.

    ``query`` and ``doc`` are the vectors that are scored against each other at retrieval time.
    ``aux`` carries head-specific tensors that losses and telemetry read (``Aux`` lists the keys).
    """

    query: torch.Tensor
    doc: torch.Tensor
    input_query: torch.Tensor
    input_doc: torch.Tensor
    aux: Aux = field(default_factory=lambda: Aux())
    negatives: torch.Tensor | None = None  # (B*n, D) the head's encoding of mined hard negatives (set by the trainer)
    exclude: torch.Tensor | None = None  # (B, B + B*n) True: that column is a judged document of the row's query

    def columns(self) -> torch.Tensor:
        """The documents a contrastive loss scores each query against: the batch's positives (column i is
        row i's), then the hard negatives."""
        return self.doc if self.negatives is None else torch.cat([self.doc, self.negatives])


class Head(nn.Module):
    """Base class of trainable heads. Subclasses set ``similarity`` and implement the two encoders.

    ``similarity`` is how the head is trained and scored: ``"cos"`` (vectors are L2-normalised before
    scoring) or ``"dot"`` (raw inner products). Retrieval uses exactly this, so train and eval agree.
    """

    similarity: Similarity = "cos"
    trainable: bool = True  # False: nothing to train (the frozen encoder itself)
    default_losses: dict = {}  # losses used when a suite gives none, e.g. {"infonce_cos": {"temperature": 0.05}}

    def __init__(self, dim: int, **options: Any):
        super().__init__()
        self.dim = dim

    def encode_queries(self, q: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_docs(self, d: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, q: torch.Tensor, d: torch.Tensor) -> HeadOutput:
        return HeadOutput(self.encode_queries(q), self.encode_docs(d), q, d)


class Loss(Protocol):
    """``loss(out) -> scalar``. Optional: ``scores(out) -> (B, B + negatives)`` its similarity matrix, the
    positives on its diagonal, which telemetry reports as "positive/negative similarity"; ``similarity``
    "dot" | "cos", what those scores are (the trainer warns when it differs from the head's)."""

    def __call__(self, out: HeadOutput) -> torch.Tensor: ...


@dataclass
class CheckResult:
    """A check's verdict: the measured value against its bound, and if failing, why and what to do."""

    check: str
    passed: bool
    measured: Any = None
    bound: Any = None
    epoch: int | None = None
    message: str = ""
    cause: str = ""
    fix: str = ""
    details: dict = field(default_factory=dict)
    headline: str = ""  # a few words for a report's table, the check's own (e.g. "yes (diff +0.0779, p=0.0001)")


class Check(Protocol):
    """A gate check. ``run(candidate, **thresholds) -> CheckResult``; ``defaults`` are its thresholds.

    Optional traits (``CheckTraits`` reads them, with these defaults; ``harness.checks.BaseCheck`` declares them):
    ``stage`` "trained" | "static" (reads only the configuration, runs before training); ``scope`` "run" (judged
    on each training unit's run) | "candidate" (once, on every dataset's kept numbers); ``seeds`` "each" (judged
    per seed, then the seed rule) | "pooled" (on per-query scores averaged over seeds); ``baselines(config,
    **thresholds)`` the stored (encoder, dataset, split) baselines it compares with, loaded and verified first.
    """

    name: str
    description: str
    defaults: dict

    def run(self, candidate: Any, **thresholds: Any) -> CheckResult: ...


@dataclass(frozen=True)
class CheckTraits:
    """A check's optional traits with their defaults, read in this one place (see ``Check``)."""

    stage: Literal["trained", "static"] = "trained"
    scope: Literal["run", "candidate"] = "run"
    seeds: Literal["each", "pooled"] = "each"
    baselines: Callable[..., Any] | None = None

    @classmethod
    def of(cls, check: Any) -> "CheckTraits":
        return cls(stage=getattr(check, "stage", "trained"), scope=getattr(check, "scope", "run"),
                   seeds=getattr(check, "seeds", "each"), baselines=getattr(check, "baselines", None))


# -- training telemetry: written by harness.train, read by checks, reports and plots ------------------
@dataclass
class EpochRecord:
    """Telemetry of one epoch (epoch 0 is the untrained head, before any step).

    Norms are of the vectors the head scores (``HeadOutput.query``/``.doc``) on a fixed probe batch of
    training pairs; ``pos_sim``/``neg_sim`` are the mean diagonal / off-diagonal of the similarity the
    loss uses (raw dot for ``infonce_dot``, cosine otherwise). ``residual`` is present for heads that
    emit ``aux["correction"]``: delta_mean, delta_max, alpha, correction_abs_mean, correction_rel
    (= mean |correction| norm / mean input-query norm). ``ndcg10``/``per_query_ndcg10``/``top10_overlap``
    are keyed by evaluation dataset name; ``top10_overlap`` is the mean fraction of each query's top 10
    shared with the frozen encoder's top 10. ``rerank_ndcg10[dataset][k]`` is NDCG@10 when the head only
    reranks the frozen encoder's top ``k`` documents (``k`` as a string: "10", "100", "1000"); with
    ``ndcg10`` (the whole corpus) it shows whether the head gets worse as it scores more candidates.
    """

    epoch: int
    loss: dict[str, float] = field(default_factory=dict)  # "total" and each component, unweighted
    q_norm: dict[str, float] = field(default_factory=dict)  # mean, max, std
    d_norm: dict[str, float] = field(default_factory=dict)
    pos_sim: float = float("nan")
    neg_sim: float = float("nan")
    pos_sim_by: str = "cos"  # what pos_sim/neg_sim measure: "dot" (raw inner products) or "cos", as the loss scores
    grad_norm: float = float("nan")
    residual: dict[str, float] | None = None
    rankme: float = float("nan")
    alignment: float = float("nan")
    uniformity: float = float("nan")
    ndcg10: dict[str, float] = field(default_factory=dict)
    per_query_ndcg10: dict[str, dict[str, float]] = field(default_factory=dict)
    top10_overlap: dict[str, float] = field(default_factory=dict)
    rerank_ndcg10: dict[str, dict[str, float]] = field(default_factory=dict)
    dev_ndcg10: dict[str, float] = field(default_factory=dict)  # on the dev split carved from the train queries
    steps: list[dict[str, float]] = field(default_factory=list)  # samples within the epoch
    trace: dict[str, list[float]] = field(default_factory=dict)  # every training step: "loss_total", "loss_<name>", "grad_norm"
    seconds: float = 0.0


@dataclass
class TrainRun:
    """A trained candidate: its configuration, per-epoch telemetry, and the frozen baseline it started from."""

    config: dict
    similarity: str
    epochs: list[EpochRecord]
    baseline_ndcg10: dict[str, float] = field(default_factory=dict)
    baseline_per_query_ndcg10: dict[str, dict[str, float]] = field(default_factory=dict)
    baseline_rankme: float = float("nan")
    checkpoint: str | None = None
    telemetry_path: str | None = None
    selected: int | None = None  # the epoch the protocol chose on the dev split (None: the last epoch)
    protocol: dict = field(default_factory=dict)  # how it was trained: mode, dev split sizes, negatives, lr chosen
    stopped: dict | None = None  # set when a non-finite loss or gradient stopped training: epoch, step, component, value
    # the kept head encoding the same eval vectors twice in eval mode (harness.measure.reproducibility):
    # max_rel_diff, changed and vectors per side, datasets; None in telemetry written before it was measured
    reproducibility: dict | None = None

    @property
    def selected_epoch(self) -> EpochRecord:
        """The epoch whose head is the verdict's: chosen on the dev split by the protocol, never on test."""
        if self.selected is not None:
            for e in self.epochs:
                if e.epoch == self.selected:
                    return e
        return self.epochs[-1]

    @property
    def last_trained_epoch(self) -> int:
        """The last epoch training completed and scored (0: none). A run merged from several units or seeds
        (``TrainResult.merged``, ``runner.pooled_run``) holds only its selected epoch, which is epoch 0 when no
        trained epoch beat the untrained head on the dev split; it remembers its parts' last epochs in
        ``protocol["last_epochs"]``."""
        scored = [e.epoch for e in self.epochs if e.epoch == 0 or e.ndcg10 or e.dev_ndcg10]  # not a stopped partial epoch
        return max([*scored, *self.protocol.get("last_epochs", {}).values()] or [0])

    @property
    def trained(self) -> bool:
        return self.last_trained_epoch >= 1

    @property
    def kept_epochs(self) -> dict[str, int]:
        """The epoch each part kept, for a run merged from units (``TrainResult.merged``: by unit) or seeds
        (``runner.pooled_run``: "seed N", or "seed N unit"); {} for the run of one unit on one seed."""
        return dict(self.protocol.get("selected_epochs") or {})

    def verdict_epoch(self) -> int | None:
        """The epoch a verdict on the kept head names: None when the merged parts kept different epochs (a
        verdict then names them, ``kept_epochs``), not the largest of them."""
        return None if len(set(self.kept_epochs.values())) > 1 else self.selected_epoch.epoch

    @property
    def best_epoch(self) -> EpochRecord:
        """The epoch with the highest mean eval NDCG@10: chosen by the end task, never by the loss."""
        scored = [e for e in self.epochs if e.ndcg10]
        return max(scored, key=lambda e: sum(e.ndcg10.values()) / len(e.ndcg10)) if scored else self.epochs[-1]

    @property
    def last_epoch(self) -> EpochRecord:
        return self.epochs[-1]


@dataclass
class TrainResult:
    """A candidate's training: one ``TrainRun`` per unit (a training dataset, or ``"pooled"``)."""

    mode: str
    units: dict[str, TrainRun]

    def unit_for(self, dataset: str) -> TrainRun:
        """The run whose head is scored on ``dataset``."""
        for run in self.units.values():
            if dataset in run.config.get("eval", []):
                return run
        raise KeyError(f"no unit of this training is scored on {dataset!r} (units: {', '.join(self.units)})")

    def merged(self) -> TrainRun:
        """One run for checks that judge the candidate as a whole: each dataset's numbers from the unit
        scored on it, at that unit's selected epoch (a single unit is returned as it is)."""
        if len(self.units) == 1:
            return next(iter(self.units.values()))
        runs = list(self.units.values())
        rec = EpochRecord(epoch=max(r.selected_epoch.epoch for r in runs))
        config = dict(runs[0].config)
        config["train"] = [d for r in runs for d in r.config.get("train", [])]
        config["eval"] = [d for r in runs for d in r.config.get("eval", [])]
        merged = TrainRun(config=config, similarity=runs[0].similarity, epochs=[rec], selected=rec.epoch,
                          protocol={"mode": self.mode, "units": {n: r.protocol for n, r in self.units.items()},
                                    "selected_epochs": {n: r.selected_epoch.epoch for n, r in self.units.items()},
                                    "last_epochs": {n: r.last_trained_epoch for n, r in self.units.items()}},
                          baseline_rankme=min(r.baseline_rankme for r in runs))
        for r in runs:
            sel = r.selected_epoch
            for field_name in ("ndcg10", "per_query_ndcg10", "top10_overlap", "rerank_ndcg10", "dev_ndcg10"):
                getattr(rec, field_name).update(getattr(sel, field_name))
            merged.baseline_ndcg10.update(r.baseline_ndcg10)
            merged.baseline_per_query_ndcg10.update(r.baseline_per_query_ndcg10)
        return merged
