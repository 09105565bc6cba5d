"""Retrieval evaluation as tensor operations on the training device, equal to trec_eval (``harness.metrics``).

``harness.metrics`` is the reference: Python dicts, one query at a time. This module computes the same
numbers from embeddings without building runs:

* ranking is trec_eval's: score descending, ties by document id descending (string order). Each score is
  turned into one int64 key, ``(order-preserving int32 bits of the float32 score) << 32 | rank of the doc id``,
  so a plain ``topk`` over keys is the exact trec_eval order, ties included (equal float32 scores are equal
  doubles, which is what the reference compares). ``-0.0`` counts as ``0.0``; NaN ranks as ``-inf``.
* a document whose id equals the query id is removed from the ranking entirely (BEIR/MTEB
  ``ignore_identical_ids``, as ``harness.retrieval.to_run``).
* NDCG gains are the qrels' levels (levels <= 0 gain nothing); the ideal DCG uses every judged document with
  relevance > 0, also those missing from the corpus; Recall counts relevance >= 1. DCG is summed in float64,
  rank by rank, as Python's ``sum()`` adds (compensated on Python 3.12+), so per-query values are bitwise
  the reference's, and means are Python sums in query order, as ``harness.metrics.mean``.
* only queries in the qrels are scored (``Judgements.judged``); per-query tensors hold NaN elsewhere.
* scores are float32 chunked matrix products, chunked as ``harness.retrieval.top_k`` chunks them (1024
  queries x 16384 documents), so memory is bounded (one chunk of scores at a time, never Q x N) and the
  float32 scores are the reference path's, bit for bit, on the same device. Embeddings are float32 (or
  lower precision); scores of float64 embeddings would be ranked as float32.

Typical use (once per dataset layout, then every epoch)::

    j = Judgements(q_ids, d_ids, qrels).to(device)
    ev = evaluate_embeddings(q, d, j, "cos", candidates=frozen_top1000, reference_top=frozen_top10)
    ev.ndcg, ev.per_query, ev.top, ev.rerank, ev.overlap
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

QUERY_CHUNK = 1024  # as harness.retrieval.top_k, so the float32 scores are bitwise the reference path's
DOC_CHUNK = 16384
RERANK_DEPTHS = (10, 100, 1000)
_LOW = -(2**63)  # key below every real score's key
# Python 3.12+ sums floats with Neumaier's compensation (harness.metrics uses sum()); older Pythons add plainly.
COMPENSATED_SUM = sum([1.0, 1e100, 1.0, -1e100]) == 2.0


def _discounts(k: int, device: torch.device) -> torch.Tensor:
    """``log2(rank + 1)`` for ranks 1..k as a float64 tensor of ``math.log2`` values. Dividing by a tensor (not a
    Python scalar) keeps the division correctly rounded on CUDA, where a scalar divisor becomes a reciprocal."""
    return torch.tensor([math.log2(i + 2) for i in range(k)], dtype=torch.float64, device=device)


def python_sum(terms: Sequence[torch.Tensor]) -> torch.Tensor:
    """Elementwise ``sum([t0, t1, ...])`` of float64 tensors exactly as Python's ``sum()`` adds floats (left to
    right; with Neumaier's compensation where this Python's ``sum`` has it), so results are bitwise Python's."""
    if not terms:
        raise ValueError("nothing to sum")
    f = terms[0] + 0.0  # sum() starts from int 0: 0 + x (so -0.0 becomes 0.0)
    if not COMPENSATED_SUM:
        for x in terms[1:]:
            f = f + x
        return f
    c = torch.zeros_like(f)
    for x in terms[1:]:
        t = f + x
        c = c + torch.where(f.abs() >= x.abs(), (f - t) + x, (x - t) + f)
        f = t
    return torch.where((c != 0) & c.isfinite(), f + c, f)


class Judgements:
    """The qrels of one (query ids, doc ids) layout as tensors; build once, ``.to(device)``, reuse every epoch.

    Attributes: ``judged`` (Q,) bool, query is in the qrels (only those are scored); ``n_relevant`` (Q,)
    float64, judged documents with relevance >= 1 (corpus or not); ``ideal`` (Q, M) float64, each query's
    positive relevance levels sorted descending, zero-padded; ``self_index`` (Q,) long, corpus index of the
    document whose id is the query id (-1: none, or ``ignore_identical_ids=False``); ``id_rank`` (N,) long,
    each document's rank in ascending id order (the tie-break); ``pair_key``/``pair_gain``/``pair_relevant``,
    the judged (query row, corpus index) pairs, sorted by ``row * N + index``.
    """

    def __init__(self, query_ids: Sequence[str], doc_ids: Sequence[str], qrels: Mapping[str, Mapping[str, float]],
                 ignore_identical_ids: bool = True):
        self.query_ids, self.doc_ids = list(query_ids), list(doc_ids)
        n_q, n_d = len(self.query_ids), len(self.doc_ids)
        if len(set(self.doc_ids)) != n_d:
            raise ValueError("doc_ids has duplicates: a run cannot hold one document twice")
        if len(set(self.query_ids)) != n_q:
            raise ValueError("query_ids has duplicates: a run cannot hold one query twice")
        self.ignore_identical_ids = ignore_identical_ids
        dpos = {d: i for i, d in enumerate(self.doc_ids)}
        rank = torch.empty(n_d, dtype=torch.long)
        rank[torch.tensor(sorted(range(n_d), key=self.doc_ids.__getitem__), dtype=torch.long)] = torch.arange(n_d)
        self.id_rank = rank
        self.self_index = torch.tensor([dpos.get(q, -1) if ignore_identical_ids else -1 for q in self.query_ids], dtype=torch.long)
        self.judged = torch.tensor([q in qrels for q in self.query_ids], dtype=torch.bool)
        keys, gains, relevant, ideal, n_rel = [], [], [], [], []
        for row, q in enumerate(self.query_ids):
            rels = qrels.get(q, {})
            ideal.append(sorted((r for r in rels.values() if r > 0), reverse=True))
            n_rel.append(sum(1 for r in rels.values() if r >= 1))
            for d, r in rels.items():
                j = dpos.get(d)
                if j is not None and r > 0:  # levels <= 0 gain nothing and are not relevant
                    keys.append(row * n_d + j)
                    gains.append(max(float(r), 0.0))
                    relevant.append(r >= 1)
        width = max((len(x) for x in ideal), default=0)
        self.ideal = torch.zeros(n_q, width, dtype=torch.float64)
        for row, levels in enumerate(ideal):
            if levels:
                self.ideal[row, : len(levels)] = torch.tensor([float(r) for r in levels], dtype=torch.float64)
        self.n_relevant = torch.tensor(n_rel, dtype=torch.float64)
        order = sorted(range(len(keys)), key=keys.__getitem__)
        self.pair_key = torch.tensor([keys[i] for i in order], dtype=torch.long)
        self.pair_gain = torch.tensor([gains[i] for i in order], dtype=torch.float64)
        self.pair_relevant = torch.tensor([relevant[i] for i in order], dtype=torch.bool)
        self._idcg: dict[int, torch.Tensor] = {}

    _TENSORS = ("id_rank", "self_index", "judged", "ideal", "n_relevant", "pair_key", "pair_gain", "pair_relevant")

    @property
    def device(self) -> torch.device:
        return self.id_rank.device

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.query_ids), len(self.doc_ids)

    def to(self, device: torch.device | str) -> "Judgements":
        """A copy whose tensors live on ``device`` (ids and qrels are shared)."""
        new = object.__new__(Judgements)
        new.__dict__.update(self.__dict__)
        for name in self._TENSORS:
            setattr(new, name, getattr(self, name).to(device))
        new._idcg = {}
        return new

    def lookup(self, rows: torch.Tensor, idx: torch.Tensor, relevant: bool = False) -> torch.Tensor:
        """Gains (float64; or relevance >= 1 as bool with ``relevant=True``) of corpus indices ``idx`` (R, K)
        for query rows ``rows`` (R,); index -1 (padding) gains nothing."""
        n_d = len(self.doc_ids)
        if self.pair_key.numel() == 0:
            return torch.zeros(idx.shape, dtype=torch.bool if relevant else torch.float64, device=idx.device)
        keys = rows[:, None].to(idx.device) * n_d + idx
        pos = torch.searchsorted(self.pair_key, keys).clamp(max=self.pair_key.numel() - 1)
        hit = (self.pair_key[pos] == keys) & (idx >= 0)
        if relevant:
            return hit & self.pair_relevant[pos]
        return torch.where(hit, self.pair_gain[pos], torch.zeros((), dtype=torch.float64, device=idx.device))

    def idcg(self, k: int) -> torch.Tensor:
        """Ideal DCG@k per query (Q,) float64, from every positively judged document."""
        if k not in self._idcg:
            width = min(k, self.ideal.shape[1])
            terms = list((self.ideal[:, :width] / _discounts(width, self.device)).unbind(1))
            zero = torch.zeros(self.ideal.shape[0], dtype=torch.float64, device=self.device)
            self._idcg[k] = python_sum(terms) if terms else zero
        return self._idcg[k]

    def dense_gain(self, rows: slice | None = None) -> torch.Tensor:
        """The (Q, N) float64 gain matrix (or the rows ``rows``); memory Q x N, for small layouts and tests."""
        n_q, n_d = self.shape
        gain = torch.zeros(n_q * n_d, dtype=torch.float64, device=self.device)
        gain[self.pair_key] = self.pair_gain
        gain = gain.view(n_q, n_d)
        return gain if rows is None else gain[rows]


# -- scores and keys ------------------------------------------------------------------------------------
def prepare(q: torch.Tensor, d: torch.Tensor, similarity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalise both sides for ``"cos"`` (as ``harness.retrieval``), as they are for ``"dot"``."""
    if similarity == "cos":
        return F.normalize(q, dim=-1), F.normalize(d, dim=-1)
    if similarity != "dot":
        raise ValueError(f"similarity must be 'cos' or 'dot', not {similarity!r}")
    return q, d


def score_chunks(q: torch.Tensor, d: torch.Tensor, similarity: str, query_chunk: int = QUERY_CHUNK,
                 doc_chunk: int = DOC_CHUNK) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(query_start, doc_start, scores)`` blocks of the (Q, N) score matrix, at most query_chunk x doc_chunk each."""
    q, d = prepare(q, d, similarity)
    for qs in range(0, q.shape[0], query_chunk):
        qb = q[qs : qs + query_chunk]
        for ds in range(0, d.shape[0], doc_chunk):
            yield qs, ds, qb @ d[ds : ds + doc_chunk].T


@torch.inference_mode()
def score_matrix(q: torch.Tensor, d: torch.Tensor, similarity: str, query_chunk: int = QUERY_CHUNK,
                 doc_chunk: int = DOC_CHUNK) -> torch.Tensor:
    """The whole (Q, N) float32 score matrix (memory Q x N; for small layouts and tests)."""
    out = torch.empty(q.shape[0], d.shape[0], dtype=torch.result_type(q, d), device=q.device)
    for qs, ds, block in score_chunks(q, d, similarity, query_chunk, doc_chunk):
        out[qs : qs + block.shape[0], ds : ds + block.shape[1]] = block
    return out


def keys(scores: torch.Tensor, id_rank: torch.Tensor) -> torch.Tensor:
    """int64 sort keys whose descending order is trec_eval's (score desc, doc id desc); ``id_rank`` broadcasts."""
    s = scores.float().nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf")) + 0.0  # -0.0 -> 0.0
    b = s.view(torch.int32)
    ordered = b ^ ((b >> 31) & 0x7FFFFFFF)
    return (ordered.to(torch.long) << 32) | id_rank


def key_scores(k: torch.Tensor) -> torch.Tensor:
    """The float32 scores back from keys (exact)."""
    ordered = (k >> 32).to(torch.int32)
    return (ordered ^ ((ordered >> 31) & 0x7FFFFFFF)).view(torch.float32)


def _drop(idx: torch.Tensor, self_index: torch.Tensor, k: int, key: torch.Tensor | None = None):
    """Remove padding (-1) and each row's identical-id document from ranked indices, keep the first k, pad -1.
    With ``key`` (the indices' keys), returns ``(idx, key)``, the keys moved alike (``_LOW`` where padded)."""
    bad = (idx < 0) | (idx == self_index[:, None])
    if bool(bad.any()):
        order = torch.sort(bad.to(torch.uint8), dim=1, stable=True).indices
        idx, bad = idx.gather(1, order), bad.gather(1, order)
        idx = idx.masked_fill(bad, -1)
        if key is not None:
            key = key.gather(1, order).masked_fill(bad, _LOW)
    idx = idx[:, :k]
    if idx.shape[1] < k:
        idx = torch.cat([idx, idx.new_full((idx.shape[0], k - idx.shape[1]), -1)], 1)
    if key is None:
        return idx
    key = key[:, :k]
    if key.shape[1] < k:
        key = torch.cat([key, key.new_full((key.shape[0], k - key.shape[1]), _LOW)], 1)
    return idx, key


def _block_top(block: torch.Tensor, id_rank: torch.Tensor, k: int,
               exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (descending) and column indices of each row's k best columns of a score block, in trec_eval order.

    ``id_rank`` is (C,) or (R, C); ``exclude`` (R, C) marks entries that take no part (their keys are
    ``_LOW`` where a row has fewer than k others). A float32 ``topk`` of k + 1 finds the best k: a row's set is
    certain when its (k+1)-th score is below its k-th (no tie across the cut), and its order is then the sort
    of those k keys. Rows with a tie across the cut, NaN or an excluded entry take the exact path: ``topk``
    over the whole row's keys."""
    s = block.float()
    n = s.shape[1]
    k = min(k, n)

    def exact(rows: torch.Tensor | None):
        sr = s if rows is None else s[rows]
        rk = id_rank if id_rank.dim() == 1 or rows is None else id_rank[rows]
        kr = keys(sr, rk)
        if exclude is not None:
            kr = kr.masked_fill(exclude if rows is None else exclude[rows], _LOW)
        return kr.topk(k, dim=1)

    if k == n:
        return tuple(exact(None))
    vals, idx = s.topk(k + 1, dim=1)
    unsure = (vals[:, k - 1] == vals[:, k]) | vals.isnan().any(1) if k > 0 else vals.isnan().any(1)
    if exclude is not None:
        unsure = unsure | exclude.any(1)
    vals, idx = vals[:, :k], idx[:, :k]
    rank = id_rank[idx] if id_rank.dim() == 1 else id_rank.gather(1, idx)
    top = keys(vals, rank).sort(dim=1, descending=True)
    best_k, best_i = top.values, idx.gather(1, top.indices)
    if bool(unsure.any()):
        rows = unsure.nonzero().squeeze(1)
        e = exact(rows)
        best_k, best_i = best_k.index_copy(0, rows, e.values), best_i.index_copy(0, rows, e.indices)
    return best_k, best_i


@dataclass
class _Scan:
    keys: torch.Tensor  # (Q, K) best keys, trec order, identical-id documents included
    idx: torch.Tensor  # (Q, K) their corpus indices
    candidate_scores: torch.Tensor | None  # (Q, C) float32 scores of the given candidates


@torch.inference_mode()
def _scan(q: torch.Tensor, d: torch.Tensor, j: Judgements, similarity: str, k: int, candidates: torch.Tensor | None = None,
          query_chunk: int = QUERY_CHUNK, doc_chunk: int = DOC_CHUNK) -> _Scan:
    n_q, n_d = q.shape[0], d.shape[0]
    if (n_q, n_d) != j.shape:
        raise ValueError(f"embeddings are {n_q} queries x {n_d} documents, the judgements {j.shape[0]} x {j.shape[1]}")
    k = min(k, n_d)
    id_rank = j.id_rank.to(q.device)
    q, d = prepare(q, d, similarity)  # once (score_chunks would normalise d again for every query chunk)
    all_keys, all_idx, all_cand = [], [], []
    for qs in range(0, n_q, query_chunk):
        best_k = torch.empty((min(query_chunk, n_q - qs), 0), dtype=torch.long, device=q.device)
        best_i = torch.empty_like(best_k)
        cand = None if candidates is None else candidates[qs : qs + query_chunk].to(q.device)
        cand_s = None if cand is None else torch.zeros(cand.shape, dtype=torch.float32, device=q.device)
        for _, ds, block in score_chunks(q[qs : qs + query_chunk], d, "dot", query_chunk, doc_chunk):
            if k > 0:
                top_k_, top_i = _block_top(block, id_rank[ds : ds + block.shape[1]], k)
                if best_k.shape[1] == 0:
                    best_k, best_i = top_k_, top_i + ds
                else:  # keys are unique per row, so merging tops is exact
                    merged = torch.cat([best_k, top_k_], 1)
                    m = merged.topk(min(k, merged.shape[1]), dim=1)
                    best_k, best_i = m.values, torch.cat([best_i, top_i + ds], 1).gather(1, m.indices)
            if cand is not None and block.shape[1] == n_d:  # one block holds every document
                cand_s = block.float().gather(1, cand.clamp(min=0))
            elif cand is not None:
                assert cand_s is not None  # set whenever cand is
                inside = (cand >= ds) & (cand < ds + block.shape[1])
                got = block.float().gather(1, (cand - ds).clamp(0, block.shape[1] - 1))
                cand_s = torch.where(inside, got, cand_s)
        all_keys.append(best_k)
        all_idx.append(best_i)
        if cand_s is not None:
            all_cand.append(cand_s)
    if n_q == 0:
        empty = torch.empty((0, k), dtype=torch.long, device=q.device)
        return _Scan(empty, empty, None if candidates is None else torch.empty(candidates.shape, device=q.device))
    return _Scan(torch.cat(all_keys), torch.cat(all_idx), torch.cat(all_cand) if all_cand else None)


# -- public functions ----------------------------------------------------------------------------------
def topk(q: torch.Tensor, d: torch.Tensor, j: Judgements, k: int, similarity: str = "cos", keep_identical: bool = False,
         query_chunk: int = QUERY_CHUNK, doc_chunk: int = DOC_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores, idx)`` (Q, k): float32 scores and corpus indices of each query's k best documents in trec_eval
    order, identical-id documents removed (unless ``keep_identical``); rows with fewer documents pad with
    index -1 and score -inf."""
    self_index = j.self_index.to(q.device)
    if keep_identical:
        self_index = torch.full_like(self_index, -1)
    extra = int(bool((self_index >= 0).any()))
    sc = _scan(q, d, j, similarity, k + extra, None, query_chunk, doc_chunk)
    idx, key = _drop(sc.idx, self_index, k, sc.keys)
    return key_scores(key).masked_fill(idx < 0, float("-inf")), idx


def ndcg(j: Judgements, top: torch.Tensor, k: int = 10, rows: torch.Tensor | None = None) -> torch.Tensor:
    """NDCG@k per query (R,) float64 from ranked corpus indices ``top`` (R, >=k; -1 padded) of query rows
    ``rows`` (default all); NaN for queries not in the qrels."""
    rows = torch.arange(top.shape[0], device=j.device) if rows is None else rows.to(j.device)
    top = top.to(j.device)
    gain = j.lookup(rows, top[:, :k])
    terms = list((gain / _discounts(gain.shape[1], j.device)).unbind(1))  # rank by rank, as the reference sums
    dcg = python_sum(terms) if terms else torch.zeros(top.shape[0], dtype=torch.float64, device=j.device)
    idcg = j.idcg(k)[rows]
    out = torch.where(idcg > 0, dcg / torch.where(idcg > 0, idcg, 1.0), 0.0)
    return out.masked_fill(~j.judged[rows], float("nan"))


def recall(j: Judgements, top: torch.Tensor, k: int = 100, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Recall@k per query (R,) float64 (relevance >= 1; judged documents outside the corpus count as missed);
    NaN for queries not in the qrels."""
    rows = torch.arange(top.shape[0], device=j.device) if rows is None else rows.to(j.device)
    hit = j.lookup(rows, top[:, :k].to(j.device), relevant=True).sum(1).to(torch.float64)
    n = j.n_relevant[rows]
    out = torch.where(n > 0, hit / torch.where(n > 0, n, 1.0), 0.0)
    return out.masked_fill(~j.judged[rows], float("nan"))


def rerank_ndcg(j: Judgements, candidates: torch.Tensor, candidate_scores: torch.Tensor,
                depths: Sequence[int] = RERANK_DEPTHS, k: int = 10) -> dict[int, torch.Tensor]:
    """NDCG@k per query (Q,) for each depth: the head reranks only the first ``depth`` of each query's
    ``candidates`` (Q, C corpus indices, e.g. the frozen top 1000; -1 padded), scored ``candidate_scores``
    (Q, C float32, gathered from one score matrix). Identical-id candidates are dropped, as the reference."""
    candidates, candidate_scores = candidates.to(j.device), candidate_scores.to(j.device)
    rank = j.id_rank[candidates.clamp(min=0)]
    pad: torch.Tensor | None
    pad = candidates < 0
    pad = pad if bool(pad.any()) else None
    extra = int(bool((j.self_index >= 0).any()))
    out = {}
    for depth in depths:
        c = min(depth, candidates.shape[1])
        key, pick = _block_top(candidate_scores[:, :c], rank[:, :c], k + extra, None if pad is None else pad[:, :c])
        idx = candidates.gather(1, pick).masked_fill(key == _LOW, -1)
        out[depth] = ndcg(j, _drop(idx, j.self_index, k), k)
    return out


def overlap(top: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per query (Q,) float64: the share of ``reference``'s documents (Q, k; -1 padded) found in ``top``
    (Q, k'), i.e. ``|top ∩ reference| / max(|reference|, 1)`` as ``harness.telemetry.top10_overlap``."""
    reference = reference.to(top.device)
    valid = reference >= 0
    found = ((reference[:, :, None] == top[:, None, :]) & valid[:, :, None]).any(2).sum(1)
    return found.to(torch.float64) / valid.sum(1).clamp(min=1).to(torch.float64)


def as_dict(j: Judgements, values: torch.Tensor) -> dict[str, float]:
    """``{qid: value}`` over the judged queries, in query order (as ``harness.metrics`` returns them)."""
    keep = j.judged.tolist()
    return {q: v for q, v, ok in zip(j.query_ids, values.tolist(), keep) if ok}


def mean(values: dict[str, float]) -> float:
    """As ``harness.metrics.mean`` (same summation order, so bitwise the same)."""
    return sum(values.values()) / len(values) if values else 0.0


def top_ids(j: Judgements, top: torch.Tensor) -> dict[str, list[str]]:
    """``{qid: [doc ids]}`` of ranked corpus indices (padding dropped), for every query."""
    return {q: [j.doc_ids[i] for i in row if i >= 0] for q, row in zip(j.query_ids, top.tolist())}


@dataclass
class DatasetEval:
    """What the trainer reads per dataset and epoch (means over judged queries, as ``harness.metrics.mean``)."""

    ndcg: float  # mean NDCG@k
    per_query: dict[str, float]  # NDCG@k per judged query
    per_query_tensor: torch.Tensor  # (Q,) float64, NaN for queries not in the qrels
    top: torch.Tensor  # (Q, k) corpus indices, trec_eval order, identical-id removed, -1 padded
    rerank: dict[str, float] = field(default_factory=dict)  # {str(depth): mean NDCG@k reranking candidates[:, :depth]}
    rerank_per_query: dict[str, torch.Tensor] = field(default_factory=dict)
    overlap: float = float("nan")  # mean share of reference_top found in top (NaN without reference_top)
    recall: float = float("nan")  # mean Recall@recall_k (NaN without recall_k)
    per_query_recall: dict[str, float] = field(default_factory=dict)


def evaluate_embeddings(q: torch.Tensor, d: torch.Tensor, j: Judgements, similarity: str, *, k: int = 10,
                        candidates: torch.Tensor | None = None, depths: Sequence[int] = RERANK_DEPTHS,
                        reference_top: torch.Tensor | None = None, recall_k: int | None = None,
                        query_chunk: int = QUERY_CHUNK, doc_chunk: int = DOC_CHUNK) -> DatasetEval:
    """One dataset, one pass over the score matrix: NDCG@k (mean, per query as dict and tensor), the top-k
    indices, NDCG@k reranking ``candidates`` at each of ``depths``, overlap of the top k with
    ``reference_top`` and Recall@``recall_k``. ``j`` should be on ``q``'s device."""
    if j.device != q.device:
        j = j.to(q.device)
    has_self = int(bool((j.self_index >= 0).any()))
    depth = max(k, recall_k or 0) + has_self
    sc = _scan(q, d, j, similarity, depth, candidates, query_chunk, doc_chunk)
    width = max(k, recall_k or 0)
    ranked = _drop(sc.idx, j.self_index, width)
    nd = ndcg(j, ranked, k)
    per_query = as_dict(j, nd)
    out = DatasetEval(mean(per_query), per_query, nd, ranked[:, :k])
    if recall_k:
        out.per_query_recall = as_dict(j, recall(j, ranked, recall_k))
        out.recall = mean(out.per_query_recall)
    if candidates is not None:
        assert sc.candidate_scores is not None  # _scan scores the candidates whenever they are given
        for dep, values in rerank_ndcg(j, candidates, sc.candidate_scores, depths, k).items():
            out.rerank_per_query[str(dep)] = values
            out.rerank[str(dep)] = mean(as_dict(j, values))
    if reference_top is not None:
        shares = overlap(out.top, reference_top).tolist()
        out.overlap = sum(shares) / len(shares) if shares else float("nan")
    return out
