"""One per-epoch evaluation of a head on SciFact + NFCorpus test: today's path against harness.scoring, same run.

    HARNESS_DATA_DIR=../shared/data/beir python benchmarks/eval_speed.py [--reps 7] [--device cpu]

What the trainer does per dataset and epoch, given the head's query and document embeddings:

* today:  top_k to 1000 + to_run + metrics.ndcg_at_k@10 + metrics.recall_at_k@100 (harness.evaluate.score
          before harness.scoring), top-10 overlap with the frozen top 10, NDCG@10 reranking the frozen top
          10/100/1000 (the rerank_ndcg10 loop: one more score matrix, three runs), the top-10 id lists;
* fast:   harness.scoring.evaluate_embeddings (one pass over the score matrix) + the top-10 id lists;
* pytrec_eval: the same score matrix through runs and pytrec_eval (NDCG@10 + Recall@100, three rerank runs),
          and pytrec_eval's ``evaluate`` alone on prebuilt runs (a floor for any dict-based evaluator);
* ranx (if importable): ``evaluate`` on prebuilt Qrels/Run (NDCG@10 + Recall@100) and the rerank runs.

The "head" is a fixed random near-identity linear map of the frozen MiniLM embeddings (cache hits; nothing is
encoded: a cache miss stops the benchmark). Results are asserted equal per query (fast and today: bitwise;
pytrec_eval: 1e-12); ranx's largest difference is printed. Medians of ``--reps`` timed repetitions after one
warm-up; one-off set-up per dataset (Judgements, pytrec_eval evaluators) is timed separately.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

DATASETS = ("scifact", "nfcorpus")
DEPTHS = (10, 100, 1000)


def cached_side(encoder, dataset, side):
    from harness.cache import EmbeddingCache
    from harness.evaluate import embed_side

    class CacheOnly(EmbeddingCache):
        def get(self, key, ids):
            emb = super().get(key, ids)
            if emb is None:
                self.release(key)
                sys.exit(f"{dataset.name} {side}: MiniLM embeddings not cached in $HARNESS_CACHE_DIR; "
                         f"run `harness eval --encoder minilm --dataset {dataset.name}` first")
            return emb

    return embed_side(encoder, dataset, "test", side, CacheOnly())


def load_inputs(names, data_dir) -> dict:
    """Frozen MiniLM embeddings (cache hits), ids, qrels per dataset: everything the benchmark reads."""
    from harness.cli import make_dataset, make_encoder

    encoder = make_encoder("minilm", device="cpu")
    out = {}
    for name in names:
        dataset = make_dataset(name, data_dir)
        queries, docs = cached_side(encoder, dataset, "query"), cached_side(encoder, dataset, "doc")
        out[name] = {"q_ids": queries.ids, "d_ids": docs.ids, "q_emb": queries.emb, "d_emb": docs.emb,
                     "qrels": dataset.load("test").qrels, "similarity": encoder.similarity}
    return out


class Setup:
    """Per dataset, built once (as the trainer's EvalSet): embeddings, frozen reference, judgements."""

    def __init__(self, name, inputs, device):
        from harness import metrics, scoring
        from harness.retrieval import to_run, top_k

        x = inputs[name]
        self.name, self.similarity, self.device = name, x["similarity"], device
        self.q_ids, self.d_ids, self.qrels = x["q_ids"], x["d_ids"], x["qrels"]
        q_frozen, d_frozen = x["q_emb"].float(), x["d_emb"].float()
        g = torch.Generator().manual_seed(0)
        dim = q_frozen.shape[1]
        mix = torch.eye(dim) + 0.2 * torch.randn(dim, dim, generator=g) / dim**0.5
        self.q_cpu, self.d_cpu = q_frozen @ mix, d_frozen @ mix  # what today's path gets (evaluate_head moves to CPU)
        self.q, self.d = self.q_cpu.to(device), self.d_cpu.to(device)
        # the frozen encoder's reference, as attach_reference builds it
        self.order = top_k(q_frozen, d_frozen, DEPTHS[-1], self.similarity)[1]
        frozen = to_run(self.q_ids, self.d_ids, *top_k(q_frozen, d_frozen, DEPTHS[-1], self.similarity))
        self.reference_top10 = {qid: metrics.rank(x)[:10] for qid, x in frozen.items()}
        t0 = time.perf_counter()
        self.j = scoring.Judgements(self.q_ids, self.d_ids, self.qrels).to(device)
        self.judgements_s = time.perf_counter() - t0
        self.ref_top = scoring.topk(q_frozen.to(device), d_frozen.to(device), self.j, 10, self.similarity)[1]
        self.order_dev = self.order.to(device)
        if device.type == "cpu":
            assert scoring.top_ids(self.j, self.ref_top) == self.reference_top10


def today(s: Setup, on_device: bool = False) -> dict:
    """evaluate_head's evaluation before harness.scoring (on CPU; ``on_device``: the same code on s.device)."""
    from harness import metrics
    from harness.retrieval import similarity_matrix, to_run, top_k
    from harness.telemetry import top10_overlap

    q, d = (s.q, s.d) if on_device else (s.q_cpu, s.d_cpu)
    order = s.order.to(q.device)
    sc, idx = top_k(q, d, 1000, s.similarity)
    run = to_run(s.q_ids, s.d_ids, sc, idx)
    nd = metrics.ndcg_at_k(run, s.qrels, 10)
    out = {"per_query": nd, "ndcg": metrics.mean(nd), "overlap": top10_overlap(run, s.reference_top10), "rerank": {}}
    scores = torch.cat([similarity_matrix(q[i : i + 1024], d, s.similarity) for i in range(0, len(q), 1024)])
    for k in DEPTHS:
        cand = order[:, : min(k, order.shape[1])]
        picked = scores.gather(1, cand).double().tolist()
        rr = {qid: {s.d_ids[j]: v for j, v in zip(row, vals) if s.d_ids[j] != qid}
              for qid, row, vals in zip(s.q_ids, cand.tolist(), picked)}
        out["rerank"][str(k)] = metrics.mean(metrics.ndcg_at_k(rr, s.qrels, 10))
    out["top10"] = {qid: metrics.rank(docs)[:10] for qid, docs in run.items()}
    return out


def fast(s: Setup) -> dict:
    from harness import scoring

    ev = scoring.evaluate_embeddings(s.q, s.d, s.j, s.similarity, candidates=s.order_dev, reference_top=s.ref_top)
    return {"per_query": ev.per_query, "ndcg": ev.ndcg, "overlap": ev.overlap, "rerank": ev.rerank,
            "top10": scoring.top_ids(s.j, ev.top)}


def runs(s: Setup) -> tuple[dict, dict]:
    """The retrieval run (top 1000) and the three rerank runs, as dicts (what dict-based evaluators need)."""
    from harness.retrieval import similarity_matrix, to_run, top_k

    q, d = s.q_cpu, s.d_cpu
    run = to_run(s.q_ids, s.d_ids, *top_k(q, d, 1000, s.similarity))
    scores = torch.cat([similarity_matrix(q[i : i + 1024], d, s.similarity) for i in range(0, len(q), 1024)])
    rerank = {}
    for k in DEPTHS:
        cand = s.order[:, : min(k, s.order.shape[1])]
        picked = scores.gather(1, cand).double().tolist()
        rerank[k] = {qid: {s.d_ids[j]: v for j, v in zip(row, vals) if s.d_ids[j] != qid}
                     for qid, row, vals in zip(s.q_ids, cand.tolist(), picked)}
    return run, rerank


class Pytrec:
    def __init__(self, s: Setup):
        import pytrec_eval

        t0 = time.perf_counter()
        self.main = pytrec_eval.RelevanceEvaluator(s.qrels, {"ndcg_cut.10", "recall.100"})
        self.ndcg = pytrec_eval.RelevanceEvaluator(s.qrels, {"ndcg_cut.10"})
        self.setup_s = time.perf_counter() - t0

    def evaluate(self, run, rerank) -> dict:
        res = self.main.evaluate(run)
        out = {"per_query": {q: m["ndcg_cut_10"] for q, m in res.items()},
               "per_query_recall": {q: m["recall_100"] for q, m in res.items()}, "rerank": {}}
        for k, rr in rerank.items():
            r = self.ndcg.evaluate(rr)
            out["rerank"][str(k)] = sum(m["ndcg_cut_10"] for m in r.values()) / len(r)
        return out

    def epoch(self, s: Setup) -> dict:
        return self.evaluate(*runs(s))


def ranx_evaluate(s: Setup, qrels, run, rerank) -> dict:
    from ranx import Run, evaluate

    res = evaluate(qrels, Run(run), ["ndcg@10", "recall@100"], return_mean=False, make_comparable=True)
    ids = sorted(run)  # ranx orders queries by id
    out = {"per_query": dict(zip(ids, map(float, res["ndcg@10"]))), "per_query_recall": dict(zip(ids, map(float, res["recall@100"]))),
           "rerank": {}}
    for k, rr in rerank.items():
        out["rerank"][str(k)] = float(evaluate(qrels, Run(rr), "ndcg@10", make_comparable=True))
    return out


def timed(fn, reps):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def same(a: dict, b: dict, tol: float = 0.0) -> float:
    assert a.keys() == b.keys(), "different queries"
    worst = max((abs(a[k] - b[k]) for k in a), default=0.0)
    assert worst <= tol, f"differs by {worst}"
    return worst


def old_score(s: Setup):
    """harness.evaluate.score before harness.scoring, with keep_run=True."""
    from harness import metrics
    from harness.evaluate import Scores
    from harness.retrieval import to_run, top_k

    run = to_run(s.q_ids, s.d_ids, *top_k(s.q_cpu, s.d_cpu, 1000, s.similarity))
    nd, rc = metrics.ndcg_at_k(run, s.qrels, 10), metrics.recall_at_k(run, s.qrels, 100)
    return Scores(metrics.mean(nd), metrics.mean(rc), nd, rc, run)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--device", default="cpu", help="device of the fast path (today's path and the peers run on CPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--data-dir", default=os.environ.get("HARNESS_DATA_DIR"))
    parser.add_argument("--save-inputs", help="write the embeddings, ids and qrels to this file and stop")
    parser.add_argument("--inputs", help="read them from this file (no data folder or cache needed)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.datasets.split(",")
    inputs = torch.load(args.inputs) if args.inputs else load_inputs(names, args.data_dir)
    if args.save_inputs:
        torch.save(inputs, args.save_inputs)
        print(f"wrote {args.save_inputs}")
        return

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sets = [Setup(name, inputs, device) for name in names]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, fast path on {device} ({where}); "
          + ", ".join(f"{s.name} {len(s.q_ids)} queries x {len(s.d_ids)} docs" for s in sets))

    # equality first
    from harness.evaluate import score

    try:
        import pytrec_eval  # noqa: F401
    except ImportError:
        pytrec = {}
        print("pytrec_eval: not importable; skipped")
    else:
        pytrec = {s.name: Pytrec(s) for s in sets}
    for s in sets:
        new = fast(s)
        if device.type == "cpu":
            old = today(s)
            assert new == old, "fast != today"
            new_score = score(s.q_ids, s.q, s.d_ids, s.d, s.qrels, s.similarity, keep_run=True)
            assert new_score == old_score(s), "score() != score() before"
            print(f"{s.name}: fast == today bitwise (per-query NDCG@10, mean, top-10 overlap, rerank NDCG@10 "
                  f"{ {k: round(v, 4) for k, v in new['rerank'].items()} }, top-10 lists); harness.evaluate.score() == before "
                  f"(NDCG@10 {new_score.ndcg10:.4f}, Recall@100 {new_score.recall100:.4f}, per query, run)")
        else:
            assert new == today(s, on_device=True), "fast != today's code on the same device"
            cpu = today(s)
            diff = [q for q in new["per_query"] if new["per_query"][q] != cpu["per_query"][q]]
            print(f"{s.name}: fast on {device} == today's code on {device} bitwise; against today on CPU, "
                  f"{len(diff)} of {len(new['per_query'])} queries differ (GPU float32 scores may differ in the last bits), "
                  f"mean NDCG@10 {new['ndcg']:.6f} vs {cpu['ndcg']:.6f}")
        if pytrec:
            p = pytrec[s.name].epoch(s)
            new_score = score(s.q_ids, s.q_cpu, s.d_ids, s.d_cpu, s.qrels, s.similarity)
            worst = max(same(p["per_query"], new_score.per_query_ndcg10, 1e-12),
                        same(p["per_query_recall"], new_score.per_query_recall100, 1e-12))
            if device.type == "cpu":
                worst = max(worst, same(p["rerank"], new["rerank"], 1e-12))
            print(f"{s.name}: == pytrec_eval per query (NDCG@10, Recall@100, rerank means), largest difference {worst:.1e}")

    try:
        import ranx  # noqa: F401
        from ranx import Qrels
    except Exception as exc:  # optional peer
        ranx_ok = False
        print(f"ranx: not importable ({type(exc).__name__}: {exc}); skipped (pip install ranx)")
    else:
        ranx_ok = True
        ranx_qrels = {s.name: Qrels(s.qrels) for s in sets}
        for s in sets:
            r = ranx_evaluate(s, ranx_qrels[s.name], *runs(s))
            ref = score(s.q_ids, s.q_cpu, s.d_ids, s.d_cpu, s.qrels, s.similarity)
            d1 = [q for q in ref.per_query_ndcg10 if abs(r["per_query"][q] - ref.per_query_ndcg10[q]) > 1e-12]
            d2 = [q for q in ref.per_query_ndcg10 if abs(r["per_query_recall"][q] - ref.per_query_recall100[q]) > 1e-12]
            print(f"{s.name}: ranx differs from trec_eval on {len(d1)} queries' NDCG@10 and {len(d2)} queries' Recall@100"
                  + (f" (e.g. {d1[0]}: ranx {r['per_query'][d1[0]]:.4f}, trec_eval {ref.per_query_ndcg10[d1[0]]:.4f})" if d1 else ""))

    def both(fn):
        def run_all():
            for s in sets:
                fn(s)
            sync()
        return run_all

    prebuilt = {s.name: runs(s) for s in sets}
    rows = [
        ("today (top_k + to_run + metrics + rerank loop), CPU", both(today)),
        (f"fast (harness.scoring.evaluate_embeddings), {device.type}", both(fast)),
    ]
    if pytrec:
        rows += [("pytrec_eval epoch (runs + evaluate), CPU", both(lambda s: pytrec[s.name].epoch(s))),
                 ("pytrec_eval evaluate() alone, prebuilt runs", both(lambda s: pytrec[s.name].evaluate(*prebuilt[s.name])))]
    if ranx_ok:
        rows.append(("ranx evaluate() alone, prebuilt runs", both(lambda s: ranx_evaluate(s, ranx_qrels[s.name], *prebuilt[s.name]))))
    results = {}
    print(f"\nper-epoch evaluation of {' + '.join(s.name for s in sets)} (NDCG@10 per query, top-10, overlap, "
          f"rerank NDCG@10 at {'/'.join(map(str, DEPTHS))}): median of {args.reps} after 1 warm-up")
    for label, fn in rows:
        med, times = timed(fn, args.reps)
        results[label] = med
        print(f"  {label:<55} {med * 1000:9.1f} ms   (min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f})")
    f = results[rows[1][0]]
    print("speed-up of fast over:")
    for label, med in results.items():
        if label != rows[1][0]:
            print(f"  {label:<55} {med / f:8.1f}x")
    print("one-off per dataset: Judgements " + ", ".join(f"{s.name} {s.judgements_s * 1000:.1f} ms" for s in sets)
          + ("; pytrec_eval evaluators " + ", ".join(f"{s.name} {pytrec[s.name].setup_s * 1000:.1f} ms" for s in sets) if pytrec else ""))
    ratio = results[rows[0][0]] / f
    if ratio < 20:
        print(f"NOTE: fast path {ratio:.1f}x faster than today's (target 20x)")


if __name__ == "__main__":
    main()
