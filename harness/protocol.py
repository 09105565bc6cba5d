"""The training protocol's data: training units, the dev split, hard negatives, and what a step trains on.

* A **unit** is one head trained and scored on its own: one per training dataset (``mode = "per_dataset"``,
  the head scored on that dataset's test split) or one for all of them (``mode = "pooled"``).
* The **dev split** is carved from each dataset's train queries, deterministically from the seed and the
  dataset name; queries judged in the evaluation split are never in it (nor trained on). Epoch and lr are
  chosen on it; the test split never selects anything.
* **Hard negatives** are mined once per training dataset from the frozen encoder's ranking (top
  ``negative_depth``, the query's judged documents and a document whose id is the query's excluded) and
  cached beside the embeddings.
* A **step** sees a batch of queries, one judged document each, ``hard_negatives`` mined documents each, and
  the other rows' documents as in-batch negatives; a column that is a judged document of the row's query is
  masked out of that row (``HeadOutput.exclude``), so a query is never pushed away from its own positives.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

import torch

from harness import sources
from harness.cache import EmbeddingCache, cache_key
from harness.config import TrainConfig
from harness.retrieval import top_k
from harness.scoring import Judgements


@dataclass
class Unit:
    """One head's training: its training datasets and the evaluation datasets it is scored on."""

    name: str
    train: list[str]
    eval: list[str]


def units(config: TrainConfig) -> list[Unit]:
    if config.mode == "pooled":
        return [Unit("pooled", list(config.train), list(config.eval))]
    return [Unit(d, [d], [d] if d in config.eval else []) for d in config.train]


def split_dev(query_ids: list[str], fraction: float, seed: int, dataset: str) -> tuple[list[str], list[str]]:
    """(train ids, dev ids): a seeded shuffle of the sorted ids, the first ``round(fraction * n)`` to dev.
    The same seed and dataset give the same split on every machine (``random.Random`` on a string seed)."""
    ids = sorted(query_ids)
    random.Random(f"dev-split:{seed}:{dataset}").shuffle(ids)
    n_dev = round(fraction * len(ids)) if fraction > 0 else 0
    if fraction > 0 and len(ids) > 1:
        n_dev = min(max(n_dev, 1), len(ids) - 1)
    dev = sorted(ids[:n_dev])
    return sorted(ids[n_dev:]), dev


def ids_digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def mine_negatives(encoder: str, dataset: str, data_dir: str | None, split: str, depth: int) -> tuple[list[str], torch.Tensor, bool]:
    """Each train query's hard negatives: corpus indices from the frozen encoder's top ``depth``, best first,
    without the query's judged documents (any relevance) or a document whose id is the query's; ``-1`` pads.
    Cached like embeddings (key: encoder weights, data files, split, depth). Returns (query ids, table, cache hit)."""

    queries = sources.embedded(encoder, dataset, data_dir, split, "query")
    docs = sources.embedded(encoder, dataset, data_dir, split, "doc")
    similarity = sources.encoder_similarity(encoder)
    key = cache_key(kind="hard_negatives", encoder=sources.encoder_fingerprint(encoder), dataset=dataset, split=split,
                    files=sources.file_hashes(dataset, data_dir, split), depth=depth, similarity=similarity,
                    ids=cache_key(ids=queries.ids), docs=cache_key(ids=docs.ids))
    def mine() -> torch.Tensor:
        qrels = sources.qrels(dataset, data_dir, split)
        _, idx = top_k(queries.emb, docs.emb, depth, similarity)
        table = idx.clone()
        for i, qid in enumerate(queries.ids):
            judged = qrels.get(qid, {})
            for j, d in enumerate(idx[i].tolist()):
                doc_id = docs.ids[d]
                if doc_id in judged or doc_id == qid:
                    table[i, j] = -1
        return table.float()  # the cache stores float32: corpus indices below 2**24 are exact

    table, hit = EmbeddingCache().get_or_compute(key, queries.ids, mine, {"kind": "hard_negatives", "dataset": dataset,
                                                                          "split": split, "depth": depth})
    return queries.ids, table.long(), hit


@dataclass
class TrainingSet:
    """One unit's training data as indices into stacked query and document embedding matrices."""

    queries: torch.Tensor  # (Q, dim): the training queries (dev queries removed)
    docs: torch.Tensor  # (N, dim): the corpora, stacked
    positives: list[torch.Tensor]  # per query: indices of its judged documents (relevance >= 1)
    negatives: torch.Tensor | None  # (Q, K) mined hard negatives, -1 padded; None without hard negatives
    pair_q: torch.Tensor  # every (query, positive) pair, capped by max_pairs: probes and positives="all"
    pair_d: torch.Tensor
    info: dict = field(default_factory=dict)
    pos_keys: torch.Tensor | None = None  # sorted query * n_docs + doc of every judged pair (built on first use)

    def __len__(self) -> int:
        return len(self.pair_q)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Query and document embeddings of pairs ``idx`` (the fixed probe)."""
        return self.queries[self.pair_q[idx]], self.docs[self.pair_d[idx]]

    def epoch(self, positives: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """This epoch's (query, document) pairs in training order."""
        if positives == "all":
            order = torch.randperm(len(self.pair_q), generator=gen)
            return self.pair_q[order], self.pair_d[order]
        qi = torch.randperm(len(self.positives), generator=gen)
        counts = torch.tensor([len(self.positives[i]) for i in qi.tolist()])
        pick = (torch.rand(len(qi), generator=gen) * counts).long()
        di = torch.stack([self.positives[q][k] for q, k in zip(qi.tolist(), pick.tolist())])
        return qi, di

    def sample_negatives(self, qi: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
        """(B, n) documents per query drawn from its mined negatives (with replacement when it has fewer than n;
        a query without any gets random documents, masked if judged)."""
        assert self.negatives is not None
        table = self.negatives[qi]
        valid = table >= 0
        counts = valid.sum(1)
        r = torch.rand(len(qi), n, generator=gen)
        random_docs = torch.randint(0, len(self.docs), (len(qi), n), generator=gen)
        # the k-th valid entry of each row: sort valid entries first, keep their order
        order = torch.argsort((~valid).int(), dim=1, stable=True)
        compact = table.gather(1, order)
        pick = (r * counts.clamp_min(1).unsqueeze(1)).long()
        chosen = compact.gather(1, pick)
        return torch.where(counts.unsqueeze(1) > 0, chosen, random_docs)

    def exclude(self, qi: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """(B, C) True where column ``c`` is a judged document of row ``b``'s query, except the row's own positive.
        A binary search in the sorted (query, document) keys of every judged pair: O(B C log P)."""
        if self.pos_keys is None:
            n = len(self.docs)
            self.pos_keys = torch.cat([q * n + d for q, d in enumerate(self.positives)]).sort().values
        keys = qi.view(-1, 1) * len(self.docs) + cols.view(1, -1)
        at = torch.searchsorted(self.pos_keys, keys).clamp_max(len(self.pos_keys) - 1)
        mask = self.pos_keys[at] == keys
        b = torch.arange(len(qi))
        mask[b, b] = False
        return mask


@dataclass
class DevQueries:
    """A dataset's dev queries: scored against its corpus with its train judgements."""

    dataset: str
    ids: list[str]
    emb: torch.Tensor
    doc_ids: list[str]
    docs: torch.Tensor
    qrels: dict[str, dict[str, int]]
    judgements: Judgements | None = None  # built on first use


def load_pairs(config: TrainConfig, gen: torch.Generator) -> TrainingSet:
    """Every (query, judged document) pair of ``config.train``'s ``train_split`` (capped by ``max_pairs``), without a
    dev split or hard negatives: for probing heads and losses on real pairs of any split."""
    import dataclasses

    plain = dataclasses.replace(config, dev_fraction=0.0, hard_negatives=0, select="last")
    return build_unit(plain, Unit("pairs", list(config.train), []), gen, hold_out_eval=False)[0]


def build_unit(config: TrainConfig, unit: Unit, gen: torch.Generator,
               hold_out_eval: bool = True) -> tuple[TrainingSet, list[DevQueries]]:
    """The training set and dev queries of one unit, with the split recorded in ``TrainingSet.info``. Queries
    judged in the evaluation split are neither trained on nor in the dev split (``hold_out_eval``)."""
    qs, ds, positives, negatives, pair_q, pair_d, devs = [], [], [], [], [], [], []
    info: dict = {"datasets": {}}
    q_off = d_off = 0
    for name in unit.train:
        queries = sources.embedded(config.encoder, name, config.data_dir, config.train_split, "query")
        docs = sources.embedded(config.encoder, name, config.data_dir, config.train_split, "doc")
        qrels = sources.qrels(name, config.data_dir, config.train_split)
        held_out = set(sources.qrels(name, config.data_dir, config.eval_split)) if hold_out_eval and name in config.eval else set()
        dpos = {d: i for i, d in enumerate(docs.ids)}
        judged = {q: sorted(dpos[d] for d, r in qrels.get(q, {}).items() if r >= 1 and d in dpos) for q in queries.ids}
        usable = [q for q in queries.ids if judged[q] and q not in held_out]
        if not usable:
            raise ValueError(f"dataset {name!r} split {config.train_split!r} has no query with a judged document (relevance >= 1)")
        train_ids, dev_ids = split_dev(usable, config.dev_fraction, config.seed, name)
        qpos = {q: i for i, q in enumerate(queries.ids)}
        keep = torch.tensor([qpos[q] for q in train_ids])
        qs.append(queries.emb[keep])
        ds.append(docs.emb)
        for k, q in enumerate(train_ids):
            positives.append(torch.tensor(judged[q], dtype=torch.long) + d_off)
        pairs = [(k, d) for k, q in enumerate(train_ids) for d in judged[q]]
        pq = torch.tensor([p[0] for p in pairs]) + q_off
        pd = torch.tensor([p[1] for p in pairs]) + d_off
        if config.max_pairs is not None and len(pairs) > config.max_pairs:
            sel = torch.randperm(len(pairs), generator=gen)[: config.max_pairs].sort().values
            pq, pd = pq[sel], pd[sel]
        pair_q.append(pq)
        pair_d.append(pd)
        mined_hit = None
        if config.hard_negatives:
            mined_ids, table, mined_hit = mine_negatives(config.encoder, name, config.data_dir, config.train_split, config.negative_depth)
            mpos = {q: i for i, q in enumerate(mined_ids)}
            rows = table[torch.tensor([mpos[q] for q in train_ids])]
            negatives.append(torch.where(rows >= 0, rows + d_off, rows))
        if dev_ids:
            dkeep = torch.tensor([qpos[q] for q in dev_ids])
            devs.append(DevQueries(name, dev_ids, queries.emb[dkeep], docs.ids, docs.emb, {q: qrels[q] for q in dev_ids}))
        info["datasets"][name] = {
            "train_queries": len(train_ids), "dev_queries": len(dev_ids), "dev_ids_sha256": ids_digest(dev_ids),
            "eval_queries_excluded": len(set(queries.ids) & held_out), "pairs": len(pq),
            "negatives_per_query": float((rows >= 0).sum(1).float().mean()) if config.hard_negatives else 0.0,
            "negatives_cache": ("hit" if mined_hit else "mined") if config.hard_negatives else None,
        }
        info.setdefault("dev_ids", {})[name] = dev_ids
        q_off += len(train_ids)
        d_off += len(docs.ids)
    tset = TrainingSet(torch.cat(qs), torch.cat(ds), positives,
                       torch.cat([_pad_to(n, max(t.shape[1] for t in negatives)) for n in negatives]) if negatives else None,
                       torch.cat(pair_q), torch.cat(pair_d), info)
    return tset, devs


def _pad_to(t: torch.Tensor, width: int) -> torch.Tensor:
    if t.shape[1] == width:
        return t
    return torch.cat([t, torch.full((t.shape[0], width - t.shape[1]), -1, dtype=t.dtype)], 1)
