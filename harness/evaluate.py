"""Frozen-encoder embeddings (cached) and NDCG@10 / Recall@100 scoring of a retrieval run."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from harness import __version__
from harness.cache import EmbeddingCache, cache_key, file_sha256
from harness.data import doc_text
from harness.retrieval import to_run, top_k
from harness.scoring import (
    Judgements,
    as_dict,
    evaluate_embeddings,
    mean,
    ndcg,
    recall,
    topk,
)
from harness.types import Dataset, Encoder

RETRIEVE_K = 1000  # as BEIR and MTEB: deep enough that Recall@100 never sees the cut


@dataclass
class Embedded:
    """One side (queries or corpus) of a dataset split, embedded by a frozen encoder."""

    ids: list[str]
    emb: torch.Tensor
    cache_hit: bool
    seconds: float


def embed_side(encoder: Encoder, dataset: Dataset, split: str, side: str, cache: EmbeddingCache | None = None) -> Embedded:
    """Embed a split's queries (``side="query"``) or the corpus (``side="doc"``), through the cache."""
    cache = cache or EmbeddingCache()
    data = dataset.load(split)
    if side == "query":
        ids = sorted(data.qrels)
        ids = [q for q in ids if q in data.queries]
        texts = [data.queries[q] for q in ids]
        source = "queries.jsonl"
    elif side == "doc":
        ids = list(data.corpus)
        texts = [doc_text(data.corpus[d]) for d in ids]
        source = "corpus.jsonl"
    else:
        raise ValueError(f"side must be 'query' or 'doc', not {side!r}")

    key = cache_key(
        encoder=encoder.fingerprint(),
        max_length=encoder.max_length,
        pooling=getattr(encoder, "pooling", "mean"),
        normalize=getattr(encoder, "normalize", True),
        dtype=encoder.dtype,
        file=file_sha256(dataset.path / source),
        side=side,
        ids=cache_key(ids=ids),
    )
    start = time.perf_counter()
    what = "queries" if side == "query" else "corpus"
    emb, hit = cache.get_or_compute(
        key, ids, lambda: encoder.encode(texts, description=f"{encoder.name}: {dataset.name} {what}"),
        {"encoder": encoder.name, "dataset": dataset.name, "side": side, "split": split, "n": len(ids)})
    return Embedded(ids, emb, hit, time.perf_counter() - start)


@dataclass
class Scores:
    ndcg10: float
    recall100: float
    per_query_ndcg10: dict[str, float]
    per_query_recall100: dict[str, float]
    run: dict[str, dict[str, float]] = field(repr=False, default_factory=dict)


def score(
    q_ids: list[str],
    q_emb: torch.Tensor,
    d_ids: list[str],
    d_emb: torch.Tensor,
    qrels: dict[str, dict[str, int]],
    similarity: str,
    ignore_identical_ids: bool = True,
    keep_run: bool = False,
    judgements: Judgements | None = None,
) -> Scores:
    """NDCG@10 and Recall@100 (trec_eval's, per query and mean) of a dense retrieval, on the embeddings' device.

    Computed by ``harness.scoring`` (equal to ``harness.metrics`` on the run, per query). ``keep_run`` also
    returns the TREC run of the top ``RETRIEVE_K`` as before (``top_k`` + ``to_run``: slow, Python dicts).
    Pass ``judgements`` (``Judgements(q_ids, d_ids, qrels, ignore_identical_ids)``) to reuse them."""
    j = judgements if judgements is not None else Judgements(q_ids, d_ids, qrels, ignore_identical_ids)
    if j.device != q_emb.device:
        j = j.to(q_emb.device)
    ev = evaluate_embeddings(q_emb, d_emb, j, similarity, k=10, recall_k=100)
    run = {}
    if keep_run:  # top_k's choice among documents tied at the cut, as before (trec order is scoring.topk's)
        scores, idx = top_k(q_emb, d_emb, RETRIEVE_K, similarity)
        run = to_run(q_ids, d_ids, scores, idx, ignore_identical_ids)
    return Scores(ev.ndcg, ev.recall, ev.per_query, ev.per_query_recall, run)


@dataclass
class EvalResult:
    encoder: str
    dataset: str
    split: str
    ndcg10: float
    recall100: float
    n_queries: int
    n_docs: int
    seconds: dict[str, float]
    cache: dict[str, str]
    provenance: dict
    per_query_ndcg10: dict[str, float] = field(repr=False, default_factory=dict)

    def summary(self) -> dict:
        d = dict(self.__dict__)
        d.pop("per_query_ndcg10")
        return d


def provenance(encoder: Encoder, dataset: Dataset, split: str, similarity: str) -> dict:
    """What a stored number depends on; baselines compare it before comparing scores."""
    return {
        "encoder": encoder.name,
        "encoder_sha256": encoder.fingerprint(),
        "max_length": encoder.max_length,
        "dtype": encoder.dtype,
        "similarity": similarity,
        "dataset": dataset.name,
        "split": split,
        "files_sha256": dataset.file_hashes(split),
        "harness_version": __version__,
    }


def evaluate(encoder: Encoder, dataset: Dataset, split: str = "test", cache: EmbeddingCache | None = None) -> EvalResult:
    """NDCG@10 and Recall@100 of a frozen encoder on one split, embeddings served from the cache."""
    data = dataset.load(split)
    queries = embed_side(encoder, dataset, split, "query", cache)
    docs = embed_side(encoder, dataset, split, "doc", cache)
    t0 = time.perf_counter()
    j = Judgements(queries.ids, docs.ids, data.qrels)
    _, top = topk(queries.emb, docs.emb, j, 100, encoder.similarity)
    t1 = time.perf_counter()
    nd, rc = as_dict(j, ndcg(j, top, 10)), as_dict(j, recall(j, top, 100))
    t2 = time.perf_counter()
    return EvalResult(
        encoder=encoder.name,
        dataset=dataset.name,
        split=split,
        ndcg10=mean(nd),
        recall100=mean(rc),
        n_queries=len(nd),
        n_docs=len(docs.ids),
        seconds={"encode": queries.seconds + docs.seconds, "retrieve": t1 - t0, "score": t2 - t1},
        cache={"queries": "hit" if queries.cache_hit else "miss", "corpus": "hit" if docs.cache_hit else "miss"},
        provenance=provenance(encoder, dataset, split, encoder.similarity),
        per_query_ndcg10=nd,
    )
