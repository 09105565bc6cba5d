"""What the trainer measures on a head: retrieval on the eval and dev splits, and telemetry on a fixed probe.

``evaluate_head`` scores a head on its unit's evaluation datasets (NDCG@10 per query, top-10 overlap with
the frozen ranking, NDCG@10 reranking the frozen top 10/100/1000, RankMe, alignment, uniformity);
``dev_ndcg10`` scores it on the dev queries (what selection reads); ``probe`` measures loss components,
norms, similarities, residual statistics and the gradient norm on fixed training pairs without updating.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from harness import sources
from harness import telemetry as tm
from harness.config import TrainConfig
from harness.protocol import DevQueries, TrainingSet
from harness.retrieval import top_k
from harness.scoring import Judgements, evaluate_embeddings
from harness.types import Head, HeadOutput

RERANK_DEPTHS = (10, 100, 1000)


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
    judgements: Judgements | None = None  # the qrels as tensors (harness.scoring), built once
    reference_top: torch.Tensor | None = None  # (queries, 10) the frozen encoder's top 10, corpus indices
    reference_order: torch.Tensor | None = None  # (queries, RERANK_DEPTHS[-1]) frozen ranking, corpus indices
    _on: dict = field(default_factory=dict, repr=False)  # device -> (judgements, reference_top, reference_order)

    def on(self, device: torch.device):
        key = str(device)
        if key not in self._on:
            assert self.judgements is not None  # load_eval always builds them
            j = self.judgements.to(device)
            top = None if self.reference_top is None else self.reference_top.to(device)
            order = None if self.reference_order is None else self.reference_order.to(device)
            self._on[key] = (j, top, order)
        return self._on[key]


def load_eval(config: TrainConfig, gen: torch.Generator, datasets: list[str] | None = None) -> list[EvalSet]:
    sets = []
    for name in config.eval if datasets is None else datasets:
        queries = sources.embedded(config.encoder, name, config.data_dir, config.eval_split, "query")
        docs = sources.embedded(config.encoder, name, config.data_dir, config.eval_split, "doc")
        qrels = sources.qrels(name, config.data_dir, config.eval_split)
        dpos = {d: i for i, d in enumerate(docs.ids)}
        pos = [(i, dpos[d]) for i, q in enumerate(queries.ids) for d, r in sorted(qrels.get(q, {}).items()) if r >= 1 and d in dpos]
        sample = torch.randperm(len(docs.ids), generator=gen)[: config.eval_doc_sample].sort().values
        sets.append(EvalSet(name, queries.ids, queries.emb, docs.ids, docs.emb, qrels, sample,
                            torch.tensor([p[0] for p in pos], dtype=torch.long), torch.tensor([p[1] for p in pos], dtype=torch.long),
                            judgements=_judgements(queries.ids, docs.ids, qrels)))
    return sets


def _judgements(q_ids: list[str], d_ids: list[str], qrels: dict) -> Judgements:
    return Judgements(q_ids, d_ids, qrels)


def attach_reference(sets: list[EvalSet], encoder: str, frozen: dict) -> None:
    """Give each eval set the frozen encoder's top 10 (for overlap) and top 1000 (for reranking depths)."""

    similarity = sources.encoder_similarity(encoder)
    for s in sets:
        s.reference_top = frozen["top"][s.name]
        s.reference_order = top_k(s.q_emb, s.d_emb, RERANK_DEPTHS[-1], similarity)[1]
        s._on.clear()


class NonFiniteOutput(ValueError):
    """A head's eval-mode (retrieval) output holds NaN or infinite values; the message names the side and the rows."""


@torch.no_grad()
def encode(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device: torch.device, chunk: int = 8192,
           what: str = "") -> torch.Tensor:
    """The head's side on ``device`` (float32), in chunks. ``what`` ("scifact documents"): the output must be
    finite, else ``NonFiniteOutput`` names the side, how many rows and the first one."""
    out = torch.cat([fn(x[i : i + chunk].to(device)).float() for i in range(0, len(x), chunk)])
    if what:
        bad = ~torch.isfinite(out).all(dim=1)
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            value = "NaN" if bool(torch.isnan(out[first]).any()) else "infinite"
            raise NonFiniteOutput(
                f"the head's {getattr(fn, '__name__', 'output')} returned non-finite vectors in eval mode for "
                f"{int(bad.sum())} of {len(out)} {what} (the first, row {first}, holds {value} values): retrieval "
                f"cannot rank them; look for a division by zero, a log or sqrt of a non-positive number, or an "
                f"overflow in the head's retrieval path (encode_queries/encode_docs), which training does not run "
                f"when forward() is separate, or for weights that diverged (a lower learning rate)")
    return out


@torch.no_grad()
def reproducibility(head: Head, sets: list[EvalSet], device: torch.device) -> dict:
    """Encode each eval set's queries and document sample twice in eval mode, with the same weights and the random
    number generators running on (restored afterwards): the largest relative L2 difference of a vector between the
    two passes, and how many vectors changed. A deterministic head gives 0 and 0."""
    was_training = head.training
    head.eval()
    worst, changed, n = 0.0, {"queries": 0, "documents": 0}, {"queries": 0, "documents": 0}
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for s in sets:
            for side, fn, x in (("queries", head.encode_queries, s.q_emb), ("documents", head.encode_docs, s.d_emb[s.doc_sample])):
                a, b = encode(fn, x, device), encode(fn, x, device)
                rel = (a - b).norm(dim=1) / a.norm(dim=1).clamp_min(1e-12)
                rel = torch.nan_to_num(rel, nan=float("inf"))
                worst = max(worst, float(rel.max()) if len(rel) else 0.0)
                changed[side] += int((rel > 0).sum())
                n[side] += len(rel)
    head.train(was_training)
    return {"max_rel_diff": worst, "changed": changed, "vectors": n, "datasets": [s.name for s in sets]}


def evaluate_head(head: Head, sets: list[EvalSet], device: torch.device, similarity: str | None = None) -> dict:
    """NDCG@10 (mean and per query), top-10 overlap with the frozen ranking, NDCG@10 reranking the frozen
    top 10/100/1000, RankMe, alignment, uniformity; scored on ``device`` with trec_eval's exact tie-breaking
    (``harness.scoring``).

    RankMe and uniformity are taken on each side separately (all eval queries; a fixed sample of each
    corpus), as the head scores them (L2-normalised for cosine heads), and the worse side is reported:
    the lower RankMe, the higher (less uniform) uniformity. A head that collapses only its query side
    (a predictor regressing to the mean document) is caught as surely as one that collapses both."""
    similarity = similarity or head.similarity
    was_training = head.training
    head.eval()
    out: dict[str, Any] = {"ndcg10": {}, "per_query_ndcg10": {}, "top10_overlap": {}, "top": {}, "rerank_ndcg10": {},
                           "rankme": float("nan"), "alignment": float("nan"), "uniformity": float("nan")}
    qs, dsamp, qa, da = [], [], [], []
    for s in sets:
        q = encode(head.encode_queries, s.q_emb, device, what=f"{s.name} queries")
        d = encode(head.encode_docs, s.d_emb, device, what=f"{s.name} documents")
        j, ref_top, ref_order = s.on(q.device)
        ev = evaluate_embeddings(q, d, j, similarity, k=10, candidates=ref_order, depths=RERANK_DEPTHS, reference_top=ref_top)
        out["ndcg10"][s.name] = ev.ndcg
        out["per_query_ndcg10"][s.name] = ev.per_query
        out["top"][s.name] = ev.top
        if ref_top is not None:
            out["top10_overlap"][s.name] = ev.overlap
        if ref_order is not None:
            out["rerank_ndcg10"][s.name] = dict(ev.rerank)
        q, d = q.cpu(), d.cpu()
        qs.append(q)
        dsamp.append(d[s.doc_sample])
        qa.append(q[s.pos_q])
        da.append(d[s.pos_d])
    if sets:
        sides = [torch.cat(qs), torch.cat(dsamp)]
        out["rankme"] = min(tm.rankme(F.normalize(x, dim=-1) if similarity == "cos" else x) for x in sides)
        out["alignment"] = tm.alignment(torch.cat(qa), torch.cat(da))
        out["uniformity"] = max(tm.uniformity(x) for x in sides)
    head.train(was_training)
    return out


def dev_ndcg10(head: Head, devs: list[DevQueries], device: torch.device) -> dict[str, float]:
    """Mean NDCG@10 of the head on each dataset's dev queries (its corpus, its train judgements)."""
    was_training = head.training
    head.eval()
    out = {}
    for dv in devs:
        if dv.judgements is None:  # built once, moved to the training device once (not every epoch)
            dv.judgements = Judgements(dv.ids, dv.doc_ids, dv.qrels).to(device)
        j = dv.judgements
        # not checked for finiteness here: a trial of the lr grid whose weights diverged scores 0 and is not chosen;
        # the full evaluation (evaluate_head) of every measured epoch refuses non-finite output
        q = encode(head.encode_queries, dv.emb, device)
        d = encode(head.encode_docs, dv.docs, device)
        out[dv.dataset] = evaluate_embeddings(q, d, j, head.similarity, k=10).ndcg
    head.train(was_training)
    return out


def grad_norm(params: list[torch.nn.Parameter]) -> float:
    sq = [p.grad.detach().float().pow(2).sum() for p in params if p.grad is not None]
    return math.sqrt(sum(t.item() for t in sq)) if sq else 0.0


def scoring_loss(losses: dict[str, Any], stage: dict[str, dict]) -> str | None:
    """The loss whose pair scores telemetry reports: the stage's first contrastive loss (one with ``scores``),
    else any configured one; None when no loss scores pairs (telemetry then uses cosine)."""
    for names in (list(stage), list(losses)):
        for name in names:
            if hasattr(losses[name], "scores"):
                return name
    return None


def sim_matrix(losses: dict[str, Any], stage: dict[str, dict], out: HeadOutput) -> tuple[torch.Tensor, str]:
    """The in-batch (B, B) similarity the loss uses (``scoring_loss``) and its kind, "dot" or "cos".
    Hard-negative columns are left out so positives and negatives compare like for like."""
    name = scoring_loss(losses, stage)
    if name is None:
        return F.normalize(out.query, dim=-1) @ F.normalize(out.doc, dim=-1).T, "cos"
    b = out.query.shape[0]
    return losses[name].scores(out)[:, :b], getattr(losses[name], "similarity", "cos")


def pos_neg(sim: torch.Tensor) -> tuple[float, float]:
    n = sim.shape[0]
    diag = sim.diagonal()
    pos = diag.mean().item()
    neg = ((sim.sum() - diag.sum()) / max(n * n - n, 1)).item()
    return pos, neg


def combine(losses: dict[str, Any], stage: dict[str, dict], out: HeadOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    parts = {name: losses[name](out) for name in losses}
    total = sum((stage[name]["weight"] * parts[name] for name in stage), torch.zeros((), device=out.query.device))
    return total, parts


def probe(head: Head, pairs: TrainingSet, probe_idx: torch.Tensor, losses: dict[str, Any], stage: dict[str, dict],
          batch_size: int, device: torch.device, with_grad: bool) -> dict:
    """Loss components, norms, similarities, residual stats and gradient norm on the fixed probe pairs
    (the head in eval mode, in-batch negatives only, batches of the training batch size, no update)."""
    was_training = head.training
    head.eval()
    params = [p for p in head.parameters() if p.requires_grad]
    sums: dict[str, float] = {}
    pos = neg = grad = 0.0
    nb = 0
    sim_kind = "cos"
    aux: dict[str, list[torch.Tensor]]
    qs, ds, inq, aux = [], [], [], {}
    for start in range(0, len(probe_idx), batch_size):
        idx = probe_idx[start : start + batch_size]
        if len(idx) < 2:
            break
        q, d = (t.to(device) for t in pairs.batch(idx))
        with torch.set_grad_enabled(with_grad):
            out = head(q, d)
            total, parts = combine(losses, stage, out)
            if with_grad and total.requires_grad:
                head.zero_grad(set_to_none=True)
                total.backward()
                grad += grad_norm(params)
                head.zero_grad(set_to_none=True)
        for name, value in [("total", total), *parts.items()]:
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        with torch.no_grad():
            sim, sim_kind = sim_matrix(losses, stage, out)
            p, n = pos_neg(sim.detach())
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
        "pos_sim_by": sim_kind,
        "grad_norm": grad / nb if with_grad and params else float("nan"),
        # a head that adds its residual to a projection of the query reports it relative to that projection
        "residual": tm.residual_stats(aux_t, aux_t.get("residual_base", torch.cat(inq))),
    }


def step_sample(epoch, b, n_batches, total, parts, gnorm, out, losses, stage) -> dict[str, float]:
    """One training step's numbers, sampled into ``EpochRecord.steps``."""
    with torch.no_grad():
        pos, neg = pos_neg(sim_matrix(losses, stage, out)[0])
        s = {"epoch": epoch, "step": b, "progress": (b + 1) / n_batches, "loss_total": float(total.detach()),
             **{f"loss_{k}": float(v.detach()) for k, v in parts.items()}, "grad_norm": gnorm, "pos_sim": pos, "neg_sim": neg,
             "q_norm_mean": out.query.norm(dim=-1).mean().item(), "d_norm_mean": out.doc.norm(dim=-1).mean().item()}
        if "alpha" in out.aux:
            s["alpha"] = out.aux["alpha"].detach().float().mean().item()
        if "correction" in out.aux:
            base = out.aux.get("residual_base", out.input_query)
            s["correction_rel"] = (out.aux["correction"].norm(dim=-1).mean() / base.norm(dim=-1).mean()).item()
    return s
