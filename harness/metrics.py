"""NDCG@k and Recall@k exactly as trec_eval (and so pytrec_eval and BEIR) computes them.

trec_eval ranks a query's documents by score, descending, and breaks ties by document id,
*descending* (reverse ``strcmp``). NDCG gains are the qrels' relevance levels (levels <= 0 gain
nothing), discounted by ``log2(rank + 1)``; the ideal ranking uses every judged document. Recall counts
documents with relevance >= 1. Like pytrec_eval, only queries present in both run and qrels are scored.
"""
from __future__ import annotations

import math


def rank(docs: dict[str, float]) -> list[str]:
    """Document ids in trec_eval order: score descending, then id descending."""
    return [d for d, _ in sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def ndcg_at_k(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], k: int = 10) -> dict[str, float]:
    out = {}
    for qid, docs in run.items():
        if qid not in qrels:
            continue
        rels = qrels[qid]
        dcg = sum(max(rels.get(d, 0), 0) / math.log2(i + 2) for i, d in enumerate(rank(docs)[:k]))
        ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
        idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
        out[qid] = dcg / idcg if idcg > 0 else 0.0
    return out


def recall_at_k(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], k: int = 100) -> dict[str, float]:
    out = {}
    for qid, docs in run.items():
        if qid not in qrels:
            continue
        relevant = {d for d, r in qrels[qid].items() if r >= 1}
        hit = sum(1 for d in rank(docs)[:k] if d in relevant)
        out[qid] = hit / len(relevant) if relevant else 0.0
    return out


def mean(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values) if values else 0.0
