"""Exact dense retrieval with bounded memory: top-k over the corpus in chunks."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def similarity_matrix(q: torch.Tensor, d: torch.Tensor, similarity: str) -> torch.Tensor:
    if similarity == "cos":
        q, d = F.normalize(q, dim=-1), F.normalize(d, dim=-1)
    elif similarity != "dot":
        raise ValueError(f"similarity must be 'cos' or 'dot', not {similarity!r}")
    return q @ d.T


@torch.inference_mode()
def top_k(
    q: torch.Tensor,
    d: torch.Tensor,
    k: int,
    similarity: str = "cos",
    doc_chunk: int = 16384,
    query_chunk: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and corpus indices of the ``k`` best documents per query, best first.

    Peak extra memory is ``query_chunk * (doc_chunk + k)`` scores, whatever the corpus size.
    """
    k = min(k, d.shape[0])
    if similarity == "cos":
        q, d = F.normalize(q, dim=-1), F.normalize(d, dim=-1)
    all_scores, all_idx = [], []
    for qs in range(0, q.shape[0], query_chunk):
        qb = q[qs : qs + query_chunk]
        best_s = torch.full((qb.shape[0], 0), float("-inf"), dtype=qb.dtype, device=qb.device)
        best_i = torch.zeros((qb.shape[0], 0), dtype=torch.long, device=qb.device)
        for ds in range(0, d.shape[0], doc_chunk):
            scores = qb @ d[ds : ds + doc_chunk].T
            s, i = scores.topk(min(k, scores.shape[1]), dim=1)
            best_s, pick = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
            best_i = torch.cat([best_i, i + ds], 1).gather(1, pick)
        all_scores.append(best_s)
        all_idx.append(best_i)
    return torch.cat(all_scores), torch.cat(all_idx)


def to_run(
    query_ids: list[str], doc_ids: list[str], scores: torch.Tensor, idx: torch.Tensor, ignore_identical_ids: bool = True
) -> dict[str, dict[str, float]]:
    """A TREC-style run ``{qid: {docid: score}}``. BEIR and MTEB drop a document whose id equals the
    query's id (``ignore_identical_ids``); we do the same by default so numbers are comparable."""
    run: dict[str, dict[str, float]] = {}
    s_list, i_list = scores.double().tolist(), idx.tolist()
    for qid, srow, irow in zip(query_ids, s_list, i_list):
        run[qid] = {doc_ids[j]: s for j, s in zip(irow, srow) if not (ignore_identical_ids and doc_ids[j] == qid)}
    return run
