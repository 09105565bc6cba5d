"""Train a head on cached frozen-encoder embeddings and record the telemetry that shows how it fails.

Training pairs are the (query, document) pairs of the train qrels with relevance >= 1; the frozen
encoder's embeddings come from the embedding cache (``harness.evaluate.embed_side``), so a head trains
in seconds on CPU. Every epoch ends with telemetry on a fixed probe batch of training pairs and NDCG@10
on the evaluation datasets (epoch 0 = the untrained head), so the best epoch is chosen by the end task.

Determinism: the head is built after ``torch.manual_seed(seed)``; pair sampling, the probe and each
epoch's shuffle come from one seeded ``torch.Generator``; on CPU two runs give identical telemetry.

Heads that need the encoder itself in the loop (text in, not cached vectors) would get a text-batch
source next to ``Pairs``; such a head declares ``needs_encoder = True`` and is refused here for now.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from harness import telemetry as tm
from harness.files import write_atomic
from harness.types import EpochRecord, Head, HeadOutput, TrainRun


# -- configuration -------------------------------------------------------------------------------
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
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: float | None = None  # clip the gradient norm before each step (seeds: 1.0); None = no clipping
    seed: int = 0
    device: str | None = None
    max_pairs: int | None = 10000  # per train dataset, sampled with the seed (NFCorpus train has 110k)
    pretrain: dict | None = None
    data_dir: str | None = None
    probe_pairs: int = 1024  # fixed training pairs that per-epoch telemetry is measured on
    samples_per_epoch: int = 10  # training steps sampled into EpochRecord.steps
    eval_doc_sample: int = 1000  # documents per eval dataset for RankMe and uniformity
    threads: int | None = 1  # torch CPU threads while training (small heads: 1 avoids oversubscription); None = leave as is

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build and validate; a bad key or value raises ``ValueError`` naming it and the valid choices."""
        if not isinstance(d, dict):
            raise ValueError(f"training config must be a mapping, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in d:
            if key not in fields:
                close = difflib.get_close_matches(str(key), list(fields), n=2, cutoff=0.6)
                hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                raise ValueError(f"training config: unknown key {key!r}.{hint} Valid keys: {', '.join(fields)}")
        d = copy.deepcopy(d)
        for key in ("train", "eval"):
            if isinstance(d.get(key), str):
                d[key] = [v.strip() for v in d[key].split(",") if v.strip()]
        config = cls(**d)
        config.validate()
        return config

    def validate(self) -> None:
        def bad(key: str, what: str) -> ValueError:
            return ValueError(f"training config: {key} {what} (got {getattr(self, key, None)!r})")

        for key in ("encoder", "head", "eval_split", "train_split"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise bad(key, "must be a non-empty string")
        if not isinstance(self.head_options, dict):
            raise bad("head_options", "must be a mapping of option -> value")
        for key in ("train", "eval"):
            value = getattr(self, key)
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                raise bad(key, "must be a non-empty list of dataset names")
        for key, low in (("epochs", 0), ("batch_size", 2), ("seed", 0), ("probe_pairs", 2), ("samples_per_epoch", 0), ("eval_doc_sample", 2)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise bad(key, f"must be an integer >= {low}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1):
            raise bad("threads", "must be an integer >= 1 or null (leave torch's setting)")
        if self.max_pairs is not None and (isinstance(self.max_pairs, bool) or not isinstance(self.max_pairs, int) or self.max_pairs < 2):
            raise bad("max_pairs", "must be an integer >= 2 or null (all pairs)")
        if self.max_grad_norm is not None and (isinstance(self.max_grad_norm, bool) or not isinstance(self.max_grad_norm, (int, float))
                                               or not self.max_grad_norm > 0 or not math.isfinite(self.max_grad_norm)):
            raise bad("max_grad_norm", "must be a positive number or null (no clipping)")
        for key in ("lr", "weight_decay"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (key == "lr" and value == 0):
                raise bad(key, "must be a positive number" if key == "lr" else "must be a number >= 0")
        self.losses = normalize_losses(self.losses, "losses")
        if self.pretrain is not None:
            if not isinstance(self.pretrain, dict):
                raise bad("pretrain", 'must be a mapping {"losses": {...}, "epochs": n}')
            allowed = {"losses", "epochs", "lr"}
            unknown = set(self.pretrain) - allowed
            if unknown:
                raise ValueError(f"training config: pretrain has unknown keys {sorted(unknown)}; valid: {', '.join(sorted(allowed))}")
            if not self.pretrain.get("losses"):
                raise ValueError("training config: pretrain.losses is missing or empty; e.g. {\"barlow\": {\"weight\": 1.0}}")
            epochs = self.pretrain.get("epochs", 1)
            if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
                raise ValueError(f"training config: pretrain.epochs must be an integer >= 1 (got {epochs!r})")
            self.pretrain = {**self.pretrain, "epochs": epochs, "losses": normalize_losses(self.pretrain["losses"], "pretrain.losses")}
            if "lr" in self.pretrain and (not isinstance(self.pretrain["lr"], (int, float)) or self.pretrain["lr"] <= 0):
                raise ValueError(f"training config: pretrain.lr must be a positive number (got {self.pretrain['lr']!r})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def normalize_losses(losses: Any, where: str) -> dict[str, dict]:
    """``{name: weight}`` or ``{name: {"weight": w, **options}}`` -> the latter (weight defaults to 1)."""
    if not isinstance(losses, dict):
        raise ValueError(f"training config: {where} must be a mapping of loss name -> {{weight, options}}, got {type(losses).__name__}")
    out = {}
    for name, spec in losses.items():
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            spec = {"weight": spec}
        if not isinstance(spec, dict):
            raise ValueError(f"training config: {where}.{name} must be a weight or a mapping with 'weight' and options, got {spec!r}")
        spec = dict(spec)
        weight = spec.setdefault("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"training config: {where}.{name}.weight must be a finite number, got {weight!r}")
        spec["weight"] = float(weight)
        out[str(name)] = spec
    return out


# -- building heads and losses -------------------------------------------------------------------
def _options_of(factory) -> list[str]:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return []
    return [n for n, p in params.items() if n not in ("self", "dim") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def build_head(name: str, dim: int, options: dict | None = None) -> Head:
    """A registered head with ``options``; a wrong option raises ``ValueError`` naming the valid ones."""
    from harness.plugins import get

    component = get("heads", name)
    options = dict(options or {})
    valid = _options_of(component.factory)
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ValueError(f"head {name!r} (plugin {component.plugin}) has no option {', '.join(map(repr, unknown))}; "
                         f"its options are: {', '.join(valid) or 'none'}")
    try:
        head = component.factory(dim, **options)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"head {name!r} (plugin {component.plugin}) rejected options {options}: {exc}") from exc
    if not isinstance(head, Head):
        raise ValueError(f"head {name!r} (plugin {component.plugin}) is a {type(head).__name__}, not a harness.types.Head subclass")
    if head.similarity not in ("cos", "dot"):
        raise ValueError(f"head {name!r} (plugin {component.plugin}) declares similarity {head.similarity!r}; use 'cos' or 'dot'")
    return head


def build_loss(name: str, options: dict | None = None):
    """``factory(**options)`` of a registered loss; a wrong option raises ``ValueError`` naming the valid ones."""
    from harness.plugins import get

    component = get("losses", name)
    options = {k: v for k, v in (options or {}).items() if k != "weight"}
    valid = _options_of(component.factory)
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ValueError(f"loss {name!r} (plugin {component.plugin}) has no option {', '.join(map(repr, unknown))}; "
                         f"its options are: {', '.join(valid) or 'none'} (plus 'weight')")
    try:
        return component.factory(**options)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"loss {name!r} (plugin {component.plugin}) rejected options {options}: {exc}") from exc


def is_trainable(head: Head) -> bool:
    return bool(getattr(head, "trainable", True)) and any(p.requires_grad for p in head.parameters())


# -- data ------------------------------------------------------------------------------------------
@dataclass
class Side:
    ids: list[str]
    emb: torch.Tensor


@lru_cache(maxsize=16)
def _embedded(encoder_name: str, dataset_name: str, data_dir: str | None, split: str, side: str) -> Side:
    from harness.cli import make_dataset, make_encoder
    from harness.evaluate import embed_side

    encoder = make_encoder(encoder_name)
    dataset = make_dataset(dataset_name, data_dir)
    e = embed_side(encoder, dataset, split, side)
    return Side(e.ids, e.emb.float())


def _qrels(dataset_name: str, data_dir: str | None, split: str) -> dict[str, dict[str, int]]:
    from harness.cli import make_dataset

    return make_dataset(dataset_name, data_dir).load(split).qrels


def _encoder_similarity(encoder_name: str) -> str:
    from harness.cli import make_encoder

    return make_encoder(encoder_name).similarity


@dataclass
class Pairs:
    """Training pairs as indices into stacked query and document embedding matrices."""

    queries: torch.Tensor
    docs: torch.Tensor
    qi: torch.Tensor
    di: torch.Tensor
    counts: dict[str, int]

    def __len__(self) -> int:
        return len(self.qi)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.queries[self.qi[idx]], self.docs[self.di[idx]]


def load_pairs(config: TrainConfig, gen: torch.Generator) -> Pairs:
    qs, ds, qis, dis, counts = [], [], [], [], {}
    q_off = d_off = 0
    for name in config.train:
        queries = _embedded(config.encoder, name, config.data_dir, config.train_split, "query")
        docs = _embedded(config.encoder, name, config.data_dir, config.train_split, "doc")
        qpos = {q: i for i, q in enumerate(queries.ids)}
        dpos = {d: i for i, d in enumerate(docs.ids)}
        qrels = _qrels(name, config.data_dir, config.train_split)
        pairs = [(qpos[q], dpos[d]) for q in sorted(qrels) if q in qpos for d in sorted(qrels[q]) if qrels[q][d] >= 1 and d in dpos]
        if not pairs:
            raise ValueError(f"dataset {name!r} split {config.train_split!r} has no (query, document) pairs with relevance >= 1")
        pq = torch.tensor([p[0] for p in pairs])
        pd = torch.tensor([p[1] for p in pairs])
        if config.max_pairs is not None and len(pairs) > config.max_pairs:
            keep = torch.randperm(len(pairs), generator=gen)[: config.max_pairs].sort().values
            pq, pd = pq[keep], pd[keep]
        counts[name] = len(pq)
        qs.append(queries.emb)
        ds.append(docs.emb)
        qis.append(pq + q_off)
        dis.append(pd + d_off)
        q_off += len(queries.ids)
        d_off += len(docs.ids)
    return Pairs(torch.cat(qs), torch.cat(ds), torch.cat(qis), torch.cat(dis), counts)


@dataclass
class EvalSet:
    name: str
    q_ids: list[str]
    q_emb: torch.Tensor
    d_ids: list[str]
    d_emb: torch.Tensor
    qrels: dict[str, dict[str, int]]
    doc_sample: torch.Tensor  # indices for RankMe / uniformity
    pos_q: torch.Tensor  # positive pairs (indices) for alignment
    pos_d: torch.Tensor
    reference_top10: dict[str, list[str]] = field(default_factory=dict)
    reference_order: torch.Tensor | None = None  # (queries, RERANK_DEPTHS[-1]) frozen ranking, corpus indices


def load_eval(config: TrainConfig, gen: torch.Generator) -> list[EvalSet]:
    sets = []
    for name in config.eval:
        queries = _embedded(config.encoder, name, config.data_dir, config.eval_split, "query")
        docs = _embedded(config.encoder, name, config.data_dir, config.eval_split, "doc")
        qrels = _qrels(name, config.data_dir, config.eval_split)
        dpos = {d: i for i, d in enumerate(docs.ids)}
        pos = [(i, dpos[d]) for i, q in enumerate(queries.ids) for d, r in sorted(qrels.get(q, {}).items()) if r >= 1 and d in dpos]
        sample = torch.randperm(len(docs.ids), generator=gen)[: config.eval_doc_sample].sort().values
        sets.append(EvalSet(name, queries.ids, queries.emb, docs.ids, docs.emb, qrels, sample,
                            torch.tensor([p[0] for p in pos], dtype=torch.long), torch.tensor([p[1] for p in pos], dtype=torch.long)))
    return sets


# -- measuring -----------------------------------------------------------------------------------
@torch.no_grad()
def _encode(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device: torch.device, chunk: int = 8192) -> torch.Tensor:
    return torch.cat([fn(x[i : i + chunk].to(device)).float().cpu() for i in range(0, len(x), chunk)])


RERANK_DEPTHS = (10, 100, 1000)


def rerank_ndcg10(s: EvalSet, q: torch.Tensor, d: torch.Tensor, similarity: str) -> dict[str, float]:
    """NDCG@10 of the head reranking only the frozen encoder's top k, for each k in ``RERANK_DEPTHS``."""
    from harness.metrics import mean, ndcg_at_k
    from harness.retrieval import similarity_matrix

    out = {}
    scores = torch.cat([similarity_matrix(q[i : i + 1024], d, similarity) for i in range(0, len(q), 1024)])
    order = s.reference_order
    for k in RERANK_DEPTHS:
        cand = order[:, : min(k, order.shape[1])]
        picked = scores.gather(1, cand).double().tolist()
        run = {qid: {s.d_ids[j]: v for j, v in zip(row, vals) if s.d_ids[j] != qid}
               for qid, row, vals in zip(s.q_ids, cand.tolist(), picked)}
        out[str(k)] = mean(ndcg_at_k(run, s.qrels, 10))
    return out


def evaluate_head(head: Head, sets: list[EvalSet], device: torch.device, similarity: str | None = None) -> dict:
    """NDCG@10 (mean and per query), top-10 overlap with the frozen ranking, RankMe, alignment, uniformity.

    RankMe and uniformity are taken on each side separately (all eval queries; a fixed sample of each
    corpus), as the head scores them (L2-normalised for cosine heads), and the worse side is reported:
    the lower RankMe, the higher (less uniform) uniformity. A head that collapses only its query side
    (a predictor regressing to the mean document) is caught as surely as one that collapses both."""
    from harness.evaluate import score

    similarity = similarity or head.similarity
    was_training = head.training
    head.eval()
    out: dict[str, Any] = {"ndcg10": {}, "per_query_ndcg10": {}, "top10_overlap": {}, "runs_top10": {}, "rerank_ndcg10": {}}
    qs, dsamp, qa, da = [], [], [], []
    for s in sets:
        q = _encode(head.encode_queries, s.q_emb, device)
        d = _encode(head.encode_docs, s.d_emb, device)
        scores = score(s.q_ids, q, s.d_ids, d, s.qrels, similarity=similarity, keep_run=True)
        out["ndcg10"][s.name] = scores.ndcg10
        out["per_query_ndcg10"][s.name] = scores.per_query_ndcg10
        if s.reference_top10:
            out["top10_overlap"][s.name] = tm.top10_overlap(scores.run, s.reference_top10)
        if s.reference_order is not None:
            out["rerank_ndcg10"][s.name] = rerank_ndcg10(s, q, d, similarity)
        from harness.metrics import rank

        out["runs_top10"][s.name] = {qid: rank(docs)[:10] for qid, docs in scores.run.items()}
        qs.append(q)
        dsamp.append(d[s.doc_sample])
        qa.append(q[s.pos_q])
        da.append(d[s.pos_d])
    sides = [torch.cat(qs), torch.cat(dsamp)]
    out["rankme"] = min(tm.rankme(F.normalize(x, dim=-1) if similarity == "cos" else x) for x in sides)
    out["alignment"] = tm.alignment(torch.cat(qa), torch.cat(da))
    out["uniformity"] = max(tm.uniformity(x) for x in sides)
    head.train(was_training)
    return out


def _grad_norm(params: list[torch.nn.Parameter]) -> float:
    sq = [p.grad.detach().float().pow(2).sum() for p in params if p.grad is not None]
    return math.sqrt(sum(t.item() for t in sq)) if sq else 0.0


def _sim_matrix(losses: dict[str, Any], stage: dict[str, dict], out: HeadOutput) -> torch.Tensor:
    """The similarity the loss uses: the stage's first contrastive loss, else any configured one, else cosine."""
    for names in (list(stage), list(losses)):
        for name in names:
            if hasattr(losses[name], "scores"):
                return losses[name].scores(out)
    return F.normalize(out.query, dim=-1) @ F.normalize(out.doc, dim=-1).T


def _pos_neg(sim: torch.Tensor) -> tuple[float, float]:
    n = sim.shape[0]
    diag = sim.diagonal()
    pos = diag.mean().item()
    neg = ((sim.sum() - diag.sum()) / max(n * n - n, 1)).item()
    return pos, neg


def _combine(losses: dict[str, Any], stage: dict[str, dict], out: HeadOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    parts = {name: losses[name](out) for name in losses}
    total = sum((stage[name]["weight"] * parts[name] for name in stage), torch.zeros((), device=out.query.device))
    return total, parts


def probe(head: Head, pairs: Pairs, probe_idx: torch.Tensor, losses: dict[str, Any], stage: dict[str, dict],
          batch_size: int, device: torch.device, with_grad: bool) -> dict:
    """Loss components, norms, similarities, residual stats and gradient norm on the fixed probe pairs
    (the head in eval mode, batches of the training batch size, no parameter update)."""
    was_training = head.training
    head.eval()
    params = [p for p in head.parameters() if p.requires_grad]
    sums: dict[str, float] = {}
    pos = neg = grad = 0.0
    nb = 0
    qs, ds, inq, aux = [], [], [], {}
    for start in range(0, len(probe_idx), batch_size):
        idx = probe_idx[start : start + batch_size]
        if len(idx) < 2:
            break
        q, d = (t.to(device) for t in pairs.batch(idx))
        with torch.set_grad_enabled(with_grad):
            out = head(q, d)
            total, parts = _combine(losses, stage, out)
            if with_grad and total.requires_grad:
                head.zero_grad(set_to_none=True)
                total.backward()
                grad += _grad_norm(params)
                head.zero_grad(set_to_none=True)
        for name, value in [("total", total), *parts.items()]:
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        with torch.no_grad():
            p, n = _pos_neg(_sim_matrix(losses, stage, out).detach())
        pos, neg, nb = pos + p, neg + n, nb + 1
        qs.append(out.query.detach().cpu())
        ds.append(out.doc.detach().cpu())
        inq.append(out.input_query.detach().cpu())
        for k in ("delta", "correction", "residual_base"):
            if k in out.aux:
                aux.setdefault(k, []).append(out.aux[k].detach().cpu())
        if "alpha" in out.aux:
            aux["alpha"] = [out.aux["alpha"].detach().cpu()]
    head.train(was_training)
    aux_t = {k: (vs[0] if k == "alpha" else torch.cat(vs)) for k, vs in aux.items()}
    return {
        "loss": {k: v / nb for k, v in sums.items()} if losses else {},
        "q_norm": tm.norm_stats(torch.cat(qs)),
        "d_norm": tm.norm_stats(torch.cat(ds)),
        "pos_sim": pos / nb,
        "neg_sim": neg / nb,
        "grad_norm": grad / nb if with_grad and params else float("nan"),
        # a head that adds its residual to a projection of the query reports it relative to that projection
        "residual": tm.residual_stats(aux_t, aux_t.get("residual_base", torch.cat(inq))),
    }


# -- the loop ------------------------------------------------------------------------------------
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


def _save_head(head: Head, state: dict, path: Path, meta: dict) -> None:
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


def train(config: TrainConfig, out_dir: Path | None = None, progress: bool = True,
          on_epoch: Callable[[EpochRecord], None] | None = None) -> TrainRun:
    """Train ``config.head`` and return its telemetry; with ``out_dir``, write ``telemetry.json`` and
    ``head.safetensors`` (the best epoch by mean eval NDCG@10; ``head_last.safetensors``: the last)."""
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    config = copy.deepcopy(config)
    config.validate()
    threads = torch.get_num_threads()
    try:
        return _train(config, out_dir, progress, on_epoch)
    finally:
        torch.set_num_threads(threads)


def _train(config: TrainConfig, out_dir: Path | None, progress: bool, on_epoch) -> TrainRun:
    device = _device(config)
    gen = torch.Generator().manual_seed(config.seed)

    pairs = load_pairs(config, gen)  # may encode (a cold cache): with every thread torch has
    sets = load_eval(config, gen)
    if config.threads is not None:  # small heads train fastest on one thread; train() restores the setting
        torch.set_num_threads(config.threads)
    dim = pairs.queries.shape[1]
    for s in sets:
        if s.q_emb.shape[1] != dim:
            raise ValueError(f"eval dataset {s.name!r} embeddings are {s.q_emb.shape[1]}-d, training ones {dim}-d")

    torch.manual_seed(config.seed)
    head = build_head(config.head, dim, config.head_options).to(device)
    if getattr(head, "needs_encoder", False):
        raise ValueError(f"head {config.head!r} needs the encoder in the loop; the trainer only feeds cached embeddings so far")
    trainable = is_trainable(head)
    if not config.losses:
        config.losses = normalize_losses(copy.deepcopy(getattr(type(head), "default_losses", {}) or {}), "losses")
    if trainable and not config.losses and config.epochs > 0:
        raise ValueError(f"head {config.head!r} is trainable but no loss is configured (and it has no default_losses); "
                         f"give losses, e.g. --loss infonce_cos")
    stages: list[tuple[str, dict[str, dict], int, float]] = []
    if trainable and config.pretrain:
        stages.append(("pretrain", config.pretrain["losses"], config.pretrain["epochs"], float(config.pretrain.get("lr", config.lr))))
    if trainable:
        stages.append(("train", config.losses, config.epochs, float(config.lr)))
    all_specs = {**(config.pretrain["losses"] if config.pretrain else {}), **config.losses}
    losses = {name: build_loss(name, spec) for name, spec in all_specs.items()}
    for name, loss in losses.items():
        sim = getattr(loss, "similarity", None)
        if sim and sim != head.similarity:
            warnings.warn(f"loss {name!r} scores by {sim!r} but head {config.head!r} retrieves by {head.similarity!r}: "
                          f"training and evaluation disagree (seed 002, lesson 3)", stacklevel=2)

    # the frozen encoder, i.e. the identity head, on the eval datasets
    frozen = build_head("identity", dim)
    base = evaluate_head(frozen, sets, torch.device("cpu"), similarity=_encoder_similarity(config.encoder))
    from harness.retrieval import top_k

    for s in sets:
        s.reference_top10 = base["runs_top10"][s.name]
        s.reference_order = top_k(s.q_emb, s.d_emb, RERANK_DEPTHS[-1], _encoder_similarity(config.encoder))[1]

    probe_idx = torch.randperm(len(pairs), generator=gen)[: config.probe_pairs]
    params = [p for p in head.parameters() if p.requires_grad]

    def record(epoch: int, stage: dict[str, dict], seconds: float, steps: list[dict]) -> EpochRecord:
        p = probe(head, pairs, probe_idx, losses, stage, config.batch_size, device, with_grad=trainable)
        ev = evaluate_head(head, sets, device)
        rec = EpochRecord(
            epoch=epoch, loss=p["loss"], q_norm=p["q_norm"], d_norm=p["d_norm"], pos_sim=p["pos_sim"], neg_sim=p["neg_sim"],
            grad_norm=p["grad_norm"], residual=p["residual"], rankme=ev["rankme"], alignment=ev["alignment"],
            uniformity=ev["uniformity"], ndcg10=ev["ndcg10"], per_query_ndcg10=ev["per_query_ndcg10"],
            top10_overlap=ev["top10_overlap"], rerank_ndcg10=ev["rerank_ndcg10"], steps=steps, seconds=seconds,
        )
        if on_epoch:
            on_epoch(rec)
        return rec

    first_stage = stages[0][1] if stages else config.losses
    epochs = [record(0, first_stage, 0.0, [])]
    best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
    best_score = _mean(epochs[0].ndcg10)
    best_epoch = 0
    epoch = 0
    diverged = False
    for stage_name, stage, n_epochs, lr in stages:
        if diverged:
            break
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
        n_batches = len(pairs) // config.batch_size  # drop the last partial batch: in-batch negatives need a full one
        if n_batches == 0:
            raise ValueError(f"only {len(pairs)} training pairs, fewer than batch_size {config.batch_size}")
        every = max(1, n_batches // config.samples_per_epoch) if config.samples_per_epoch else 0
        for _ in range(n_epochs):
            epoch += 1
            start = time.perf_counter()
            order = torch.randperm(len(pairs), generator=gen)
            steps: list[dict] = []
            head.train()
            bar = _bar(progress, f"{stage_name} epoch {epoch}", n_batches)
            with bar as advance:
                for b in range(n_batches):
                    q, d = (t.to(device) for t in pairs.batch(order[b * config.batch_size : (b + 1) * config.batch_size]))
                    out = head(q, d)
                    total, parts = _combine(losses, stage, out)
                    optimizer.zero_grad(set_to_none=True)
                    total.backward()
                    gnorm = _grad_norm(params)
                    if every and (b % every == 0 or b == n_batches - 1):
                        steps.append(_step_sample(epoch, b, n_batches, total, parts, gnorm, out, losses, stage))
                    if not math.isfinite(float(total.detach())):
                        diverged = True
                        break
                    if config.max_grad_norm is not None:  # telemetry keeps the norm before clipping
                        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                    optimizer.step()
                    advance(1)
            rec = record(epoch, stage, 0.0, steps)
            rec.seconds = time.perf_counter() - start
            epochs.append(rec)
            score = _mean(rec.ndcg10)
            if score > best_score:
                best_score, best_epoch = score, epoch
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
            if diverged:
                break

    run = TrainRun(
        config=config.to_dict(), similarity=head.similarity, epochs=epochs,
        baseline_ndcg10=base["ndcg10"], baseline_per_query_ndcg10=base["per_query_ndcg10"], baseline_rankme=base["rankme"],
    )
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        meta = {"head": config.head, "head_options": config.head_options, "dim": dim, "similarity": head.similarity,
                "encoder": config.encoder, "epoch": best_epoch}
        _save_head(head, best_state, out_dir / "head.safetensors", meta)
        _save_head(head, head.state_dict(), out_dir / "head_last.safetensors", {**meta, "epoch": epoch})
        run.checkpoint = str(out_dir / "head.safetensors")
        run.telemetry_path = str(out_dir / "telemetry.json")
        tm.save_run(run, out_dir / "telemetry.json")
    return run


def _mean(d: dict[str, float]) -> float:
    return sum(d.values()) / len(d) if d else float("-inf")


def _step_sample(epoch, b, n_batches, total, parts, gnorm, out, losses, stage) -> dict[str, float]:
    with torch.no_grad():
        pos, neg = _pos_neg(_sim_matrix(losses, stage, out))
        s = {"epoch": epoch, "step": b, "progress": (b + 1) / n_batches, "loss_total": float(total.detach()),
             **{f"loss_{k}": float(v.detach()) for k, v in parts.items()}, "grad_norm": gnorm, "pos_sim": pos, "neg_sim": neg,
             "q_norm_mean": out.query.norm(dim=-1).mean().item(), "d_norm_mean": out.doc.norm(dim=-1).mean().item()}
        if "alpha" in out.aux:
            s["alpha"] = out.aux["alpha"].detach().float().mean().item()
        if "correction" in out.aux:
            base = out.aux.get("residual_base", out.input_query)
            s["correction_rel"] = (out.aux["correction"].norm(dim=-1).mean() / base.norm(dim=-1).mean()).item()
    return s


class _NoBar:
    def __enter__(self):
        return lambda n=1: None

    def __exit__(self, *exc):
        return False


def _bar(show: bool, description: str, total: int):
    if not show:
        return _NoBar()
    from harness.progress import progress_bar

    return progress_bar(description, total)
