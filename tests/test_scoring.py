"""harness.scoring (tensor evaluation) against the reference: harness.metrics on runs built by harness.retrieval.

Fast tier (no data): hypothesis layouts with few distinct embedding values, so equal scores (ties) are common,
query ids that are also document ids (identical-id documents), queries without judgements or without relevant
documents, graded and non-positive levels, judged documents missing from the corpus, tiny chunks. Per-query
values must be *bitwise* the reference's (DCG is summed in float64 rank by rank in the reference's order).

Data tier: the SciFact test split with cached MiniLM embeddings, pytrec_eval as the oracle; skipped when the
data or the cache entries are absent (it never encodes). CUDA tier: the fast-tier layouts on the GPU (skipped
without CUDA).

Also harness.progress off a terminal (plain lines at an interval; no data), at the end of the file.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import metrics, scoring
from harness.retrieval import similarity_matrix, to_run, top_k
from harness.scoring import Judgements

POOL = [f"d{i}" for i in range(24)] + ["10", "9", "a", "B", "é", "q1", "q2"]
QUERY_POOL = ["q1", "q2", "3", "d1", "d5", "a", "10"]  # some are document ids too
LEVELS = [0.0, 1.0, -1.0, 2.0, 0.5, -0.0]  # few values: many ties, also between -0.0 and 0.0
FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def layouts(draw, max_docs: int = 30):
    doc_ids = draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=max_docs, unique=True))
    query_ids = draw(st.lists(st.sampled_from(QUERY_POOL), min_size=1, max_size=6, unique=True))
    dim = draw(st.integers(1, 3))
    value = st.sampled_from(LEVELS)
    q = torch.tensor(draw(st.lists(st.lists(value, min_size=dim, max_size=dim), min_size=len(query_ids), max_size=len(query_ids))))
    d = torch.tensor(draw(st.lists(st.lists(value, min_size=dim, max_size=dim), min_size=len(doc_ids), max_size=len(doc_ids))))
    # qrels: some queries absent, some with {} or only levels <= 0; judged docs may be outside the corpus
    qrels = draw(st.dictionaries(st.sampled_from(QUERY_POOL + ["zz"]),
                                 st.dictionaries(st.sampled_from(POOL + ["gone1", "gone2"]), st.integers(-1, 3), max_size=8)))
    similarity = draw(st.sampled_from(["cos", "dot"]))
    return query_ids, doc_ids, q.float(), d.float(), qrels, similarity


def reference_run(query_ids, doc_ids, q, d, similarity, k=None, **chunks):
    s, i = top_k(q, d, k or len(doc_ids), similarity, **chunks)
    return to_run(query_ids, doc_ids, s, i)


def reference_rerank(query_ids, doc_ids, q, d, qrels, similarity, order, depths):
    """The loop of harness.train.rerank_ndcg10 / harness.measure.rerank_ndcg10, on harness.metrics."""
    out = {}
    scores = torch.cat([similarity_matrix(q[i : i + 1024], d, similarity) for i in range(0, len(q), 1024)])
    for k in depths:
        cand = order[:, : min(k, order.shape[1])]
        picked = scores.gather(1, cand).double().tolist()
        run = {qid: {doc_ids[j]: v for j, v in zip(row, vals) if doc_ids[j] != qid}
               for qid, row, vals in zip(query_ids, cand.tolist(), picked)}
        out[str(k)] = metrics.mean(metrics.ndcg_at_k(run, qrels, 10))
    return out


# -- fast tier ------------------------------------------------------------------------------------------
@FAST
@given(layouts(), st.sampled_from([1, 3, 10]), st.sampled_from([1, 2, 5, 100]), st.sampled_from([(1, 1), (2, 3), (1024, 16384)]))
def test_topk_ndcg_recall_equal_metrics(layout, k, recall_k, chunks):
    query_ids, doc_ids, q, d, qrels, similarity = layout
    qc, dc = chunks
    run = reference_run(query_ids, doc_ids, q, d, similarity, query_chunk=qc, doc_chunk=dc)
    j = Judgements(query_ids, doc_ids, qrels)
    s, top = scoring.topk(q, d, j, max(k, recall_k), similarity, query_chunk=qc, doc_chunk=dc)
    for row, qid in enumerate(query_ids):
        expected = metrics.rank(run[qid])[: max(k, recall_k)]
        got = [doc_ids[i] for i in top[row].tolist() if i >= 0]
        assert got == expected
        assert top[row, len(got):].eq(-1).all() and s[row, len(got):].eq(float("-inf")).all()
        assert s[row, : len(got)].double().tolist() == [run[qid][x] for x in expected]
    assert scoring.as_dict(j, scoring.ndcg(j, top, k)) == metrics.ndcg_at_k(run, qrels, k)
    assert scoring.as_dict(j, scoring.recall(j, top, recall_k)) == metrics.recall_at_k(run, qrels, recall_k)


@FAST
@given(layouts(), st.data())
def test_rerank_depths_equal_reference_loop(layout, data):
    query_ids, doc_ids, q, d, qrels, similarity = layout
    n = len(doc_ids)
    width = data.draw(st.integers(1, n))
    order = torch.stack([torch.tensor(data.draw(st.permutations(range(n)))[:width]) for _ in query_ids])
    depths = (1, 3, 10, 1000)
    ref = reference_rerank(query_ids, doc_ids, q, d, qrels, similarity, order, depths)
    j = Judgements(query_ids, doc_ids, qrels)
    ev = scoring.evaluate_embeddings(q, d, j, similarity, candidates=order, depths=depths)
    assert ev.rerank == ref
    # the same from the lower-level function on one gathered score matrix
    picked = scoring.score_matrix(q, d, similarity).gather(1, order)
    per_depth = scoring.rerank_ndcg(j, order, picked, depths)
    assert {str(k): scoring.mean(scoring.as_dict(j, v)) for k, v in per_depth.items()} == ref


@FAST
@given(layouts(), st.sampled_from(LEVELS))
def test_evaluate_embeddings_equals_reference(layout, shift):
    query_ids, doc_ids, q, d, qrels, similarity = layout
    from harness.telemetry import top10_overlap

    run = reference_run(query_ids, doc_ids, q, d, similarity)
    other = reference_run(query_ids, doc_ids, q + shift, d, similarity)  # a "frozen" ranking to overlap with
    reference_top10 = {qid: metrics.rank(docs)[:10] for qid, docs in other.items()}
    j = Judgements(query_ids, doc_ids, qrels)
    _, ref_top = scoring.topk(q + shift, d, j, 10, similarity)
    assert scoring.top_ids(j, ref_top) == reference_top10
    ev = scoring.evaluate_embeddings(q, d, j, similarity, reference_top=ref_top, recall_k=100)
    nd = metrics.ndcg_at_k(run, qrels, 10)
    assert ev.per_query == nd and ev.ndcg == metrics.mean(nd)
    rc = metrics.recall_at_k(run, qrels, 100)
    assert ev.per_query_recall == rc and ev.recall == metrics.mean(rc)
    assert scoring.top_ids(j, ev.top) == {qid: metrics.rank(docs)[:10] for qid, docs in run.items()}
    expected_overlap = top10_overlap(run, reference_top10)
    assert ev.overlap == expected_overlap or (math.isnan(ev.overlap) and math.isnan(expected_overlap))
    judged = [qid in qrels for qid in query_ids]
    assert ev.per_query_tensor.dtype == torch.float64 and ev.per_query_tensor.shape == (len(query_ids),)
    for ok, v, qid in zip(judged, ev.per_query_tensor.tolist(), query_ids):
        assert (v == nd[qid]) if ok else math.isnan(v)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts(), st.data())
def test_cuda_equals_reference_on_cuda(layout, data):
    """On the GPU: Judgements.to("cuda"), everything on the device, equal to the reference fed the same device's scores."""
    query_ids, doc_ids, q, d, qrels, similarity = layout
    q, d = q.cuda(), d.cuda()
    n = len(doc_ids)
    order = torch.stack([torch.tensor(data.draw(st.permutations(range(n)))) for _ in query_ids]).cuda()
    run = reference_run(query_ids, doc_ids, q, d, similarity)
    j = Judgements(query_ids, doc_ids, qrels).to("cuda")
    ev = scoring.evaluate_embeddings(q, d, j, similarity, candidates=order, depths=(1, 3, 10), recall_k=5)
    assert ev.top.is_cuda and ev.per_query_tensor.is_cuda
    assert ev.per_query == metrics.ndcg_at_k(run, qrels, 10)
    assert ev.per_query_recall == metrics.recall_at_k(run, qrels, 5)
    assert scoring.top_ids(j, ev.top) == {qid: metrics.rank(docs)[:10] for qid, docs in run.items()}
    assert ev.rerank == reference_rerank(query_ids, doc_ids, q, d, qrels, similarity, order, (1, 3, 10))


def old_score(q_ids, q_emb, d_ids, d_emb, qrels, similarity, ignore_identical_ids=True, keep_run=False):
    """harness.evaluate.score before harness.scoring (top_k + to_run + harness.metrics)."""
    from harness.evaluate import RETRIEVE_K, Scores

    s, i = top_k(q_emb, d_emb, RETRIEVE_K, similarity)
    run = to_run(q_ids, d_ids, s, i, ignore_identical_ids)
    nd, rc = metrics.ndcg_at_k(run, qrels, 10), metrics.recall_at_k(run, qrels, 100)
    return Scores(metrics.mean(nd), metrics.mean(rc), nd, rc, run if keep_run else {})


@FAST
@given(layouts(), st.booleans(), st.booleans())
def test_score_returns_what_it_returned(layout, ignore, keep_run):
    from harness.evaluate import score

    query_ids, doc_ids, q, d, qrels, similarity = layout
    new = score(query_ids, q, doc_ids, d, qrels, similarity, ignore_identical_ids=ignore, keep_run=keep_run)
    assert new == old_score(query_ids, q, doc_ids, d, qrels, similarity, ignore, keep_run)


def test_ties_break_by_doc_id_descending_and_identical_id_is_removed():
    doc_ids = ["a", "c", "q", "b", "z", "d"]
    q = torch.tensor([[1.0]])
    d = torch.tensor([[1.0], [1.0], [5.0], [1.0], [0.5], [-0.0]])
    j = Judgements(["q"], doc_ids, {"q": {"a": 1, "q": 3, "d": 2, "missing": 1}})
    s, top = scoring.topk(q, d, j, 6, "dot")
    assert scoring.top_ids(j, top) == {"q": ["c", "b", "a", "z", "d"]}  # "q" (best score) dropped: identical id
    assert top[0, -1] == -1 and s[0].tolist() == [1.0, 1.0, 1.0, 0.5, 0.0, float("-inf")]
    s, top = scoring.topk(q, d, j, 2, "dot", keep_identical=True)
    assert scoring.top_ids(j, top) == {"q": ["q", "c"]}
    # "a" sits third among equals; the ideal DCG also counts "q" (3) and "missing" (1), in no ranking
    expected = (1 / math.log2(4) + 2 / math.log2(6)) / (3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(5))
    assert scoring.ndcg(j, scoring.topk(q, d, j, 10, "dot")[1], 10).tolist() == [expected]


def test_negative_zero_ties_with_zero():
    j = Judgements(["x"], ["a", "b"], {"x": {"a": 1}})
    _, top = scoring.topk(torch.tensor([[1.0]]), torch.tensor([[0.0], [-0.0]]), j, 2, "dot")
    assert scoring.top_ids(j, top) == {"x": ["b", "a"]}  # as metrics.rank: 0.0 == -0.0, then id descending
    assert metrics.rank({"a": 0.0, "b": -0.0}) == ["b", "a"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.floats(-1e6, 1e6) | st.sampled_from([0.0, 1.0, 1e-17, 1 / math.log2(3)]), min_size=3, max_size=3),
                min_size=1, max_size=12), st.booleans())
def test_python_sum_is_pythons_sum(columns, compensated):
    """Bitwise Python's sum() of floats: plain (<= 3.11) and Neumaier-compensated (3.12+), whichever runs here,
    and both modes against a Python replica of CPython's loops."""
    def replica(xs):
        f, c = 0 + xs[0], 0.0
        for x in xs[1:]:
            t = f + x
            if compensated:
                c += (f - t) + x if abs(f) >= abs(x) else (x - t) + f
            f = t
        return f + c if compensated and c and math.isfinite(c) else f

    terms = [torch.tensor(col, dtype=torch.float64) for col in columns]
    rows = list(zip(*columns))
    assert scoring.python_sum(terms).tolist() == [sum(r) for r in rows]
    old = scoring.COMPENSATED_SUM
    try:
        scoring.COMPENSATED_SUM = compensated
        assert scoring.python_sum(terms).tolist() == [replica(r) for r in rows]
    finally:
        scoring.COMPENSATED_SUM = old


def test_nan_scores_rank_as_minus_infinity():
    j = Judgements(["x"], ["a", "b", "c", "d"], {"x": {"b": 1}})
    d = torch.tensor([[float("nan")], [1.0], [float("-inf")], [0.5]])
    s, top = scoring.topk(torch.tensor([[1.0]]), d, j, 4, "dot")
    assert scoring.top_ids(j, top) == {"x": ["b", "d", "c", "a"]} and s[0, 2:].eq(float("-inf")).all()
    _, top = scoring.topk(torch.tensor([[1.0]]), d, j, 1, "dot")  # the float32 top-k path sees the NaN first
    assert scoring.top_ids(j, top) == {"x": ["b"]}


def test_keys_order_is_score_then_id_and_decode_exactly():
    s = torch.tensor([-float("inf"), -3.5, -0.0, 0.0, 1e-30, 2.0, float("inf"), float("nan")])
    k = scoring.keys(s, torch.zeros(len(s), dtype=torch.long))
    back = scoring.key_scores(k)
    assert back.dtype == torch.float32 and back[:7].tolist() == s[:7].tolist() and back[7] == -float("inf")
    assert k[:7].tolist() == sorted(k[:7].tolist()) and k[2] == k[3]
    assert k[7] == k[0]  # NaN ranks as -inf
    ranked = scoring.keys(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0, 2, 1]))
    assert ranked.argsort(descending=True).tolist() == [1, 2, 0]


def test_judgements_layout_and_device_copy():
    qrels = {"q1": {"a": 2, "b": 0, "c": -1, "gone": 3}, "q2": {}, "zz": {"a": 1}}
    j = Judgements(["q1", "q2", "q3"], ["c", "b", "a", "q2"], qrels)
    assert j.judged.tolist() == [True, True, False]
    assert j.n_relevant.tolist() == [2.0, 0.0, 0.0]
    assert j.self_index.tolist() == [-1, 3, -1]
    assert j.id_rank.tolist() == [2, 1, 0, 3]
    assert j.dense_gain().tolist() == [[0, 0, 2, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert j.idcg(1).tolist() == [3.0, 0.0, 0.0]
    moved = j.to("cpu")
    assert moved is not j and moved.dense_gain().equal(j.dense_gain())
    assert Judgements(["q1"], ["a"], qrels, ignore_identical_ids=False).self_index.tolist() == [-1]
    with pytest.raises(ValueError, match="duplicates"):
        Judgements(["q1"], ["a", "a"], qrels)
    with pytest.raises(ValueError, match="queries x"):
        scoring.topk(torch.ones(2, 1), torch.ones(4, 1), j, 3, "dot")


def test_overlap_counts_reference_members():
    top = torch.tensor([[1, 2, 3], [4, 5, -1], [7, 8, 9]])
    ref = torch.tensor([[3, 9, 1], [5, -1, -1], [-1, -1, -1]])
    assert scoring.overlap(top, ref).tolist() == [2 / 3, 1.0, 0.0]


def test_memory_is_bounded_by_chunks():
    """A corpus scanned in chunks gives the same top as one chunk (and never a Q x N matrix). The float32
    scores may differ in the last bit (BLAS sums differently for other block shapes): that is why the
    default chunks are harness.retrieval.top_k's."""
    g = torch.Generator().manual_seed(0)
    q, d = torch.randn(50, 8, generator=g), torch.randn(3000, 8, generator=g)
    ids = [f"d{i}" for i in range(3000)]
    j = Judgements([f"q{i}" for i in range(50)], ids, {f"q{i}": {f"d{i * 7}": 1} for i in range(50)})
    whole = scoring.topk(q, d, j, 100, "dot")
    chunked = scoring.topk(q, d, j, 100, "dot", query_chunk=7, doc_chunk=257)
    assert whole[1].equal(chunked[1]) and torch.allclose(whole[0], chunked[0], rtol=1e-6, atol=0)


# -- data tier: real SciFact, cached MiniLM, pytrec_eval as the oracle ------------------------------------
class _CacheOnly:
    """Wraps an EmbeddingCache: a miss skips the test (it never encodes) and releases the entry's lock."""

    def __new__(cls):
        from harness.cache import EmbeddingCache

        class CacheOnly(EmbeddingCache):
            def get(self, key, ids):
                emb = super().get(key, ids)
                if emb is None:
                    self.release(key)
                    pytest.skip("MiniLM SciFact embeddings are not cached (run `harness eval --dataset scifact` once)")
                return emb

        return CacheOnly()


@pytest.fixture(scope="module")
def scifact_minilm():
    data_dir = Path(os.environ.get("HARNESS_DATA_DIR", ""))
    if not (data_dir / "scifact" / "corpus.jsonl").is_file():
        pytest.skip(f"no BEIR data in {data_dir!s} (HARNESS_DATA_DIR)")
    try:
        from harness.cli import make_dataset, make_encoder
        from harness.evaluate import embed_side

        encoder, dataset = make_encoder("minilm", device="cpu"), make_dataset("scifact", str(data_dir))
        cache = _CacheOnly()
        queries = embed_side(encoder, dataset, "test", "query", cache)
        docs = embed_side(encoder, dataset, "test", "doc", cache)
    except pytest.skip.Exception:
        raise
    except Exception as exc:  # encoder package or cache unusable here
        pytest.skip(f"MiniLM SciFact embeddings unavailable: {exc}")
    return queries, docs, dataset.load("test").qrels, encoder.similarity


def test_scifact_equals_pytrec_eval(scifact_minilm):
    import pytrec_eval

    queries, docs, qrels, similarity = scifact_minilm
    run = reference_run(queries.ids, docs.ids, queries.emb, docs.emb, similarity, k=1000)
    oracle = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    j = Judgements(queries.ids, docs.ids, qrels)
    ev = scoring.evaluate_embeddings(queries.emb, docs.emb, j, similarity, recall_k=100)
    assert ev.per_query.keys() == oracle.keys()
    for qid, m in oracle.items():
        assert abs(ev.per_query[qid] - m["ndcg_cut_10"]) < 1e-12, qid
        assert abs(ev.per_query_recall[qid] - m["recall_100"]) < 1e-12, qid
    assert ev.per_query == metrics.ndcg_at_k(run, qrels, 10)
    assert round(ev.ndcg, 4) == 0.6451  # published all-MiniLM-L6-v2 SciFact NDCG@10


def test_scifact_head_rerank_and_overlap_equal_reference(scifact_minilm):
    from harness.telemetry import top10_overlap

    queries, docs, qrels, similarity = scifact_minilm
    g = torch.Generator().manual_seed(1)
    mix = torch.eye(queries.emb.shape[1]) + 0.3 * torch.randn(queries.emb.shape[1], queries.emb.shape[1], generator=g)
    q, d = queries.emb @ mix, docs.emb @ mix  # a "head" that reorders the frozen ranking
    order = top_k(queries.emb, docs.emb, 1000, similarity)[1]
    frozen = reference_run(queries.ids, docs.ids, queries.emb, docs.emb, similarity, k=1000)
    run = reference_run(queries.ids, docs.ids, q, d, similarity, k=1000)
    j = Judgements(queries.ids, docs.ids, qrels)
    ref_top = scoring.topk(queries.emb, docs.emb, j, 10, similarity)[1]
    ev = scoring.evaluate_embeddings(q, d, j, similarity, candidates=order, reference_top=ref_top)
    assert ev.rerank == reference_rerank(queries.ids, docs.ids, q, d, qrels, similarity, order, (10, 100, 1000))
    assert ev.per_query == metrics.ndcg_at_k(run, qrels, 10)
    assert ev.overlap == top10_overlap(run, {qid: metrics.rank(x)[:10] for qid, x in frozen.items()})


# -- progress off a terminal (harness.progress; no data) -------------------------------------------------
def test_progress_off_a_terminal_prints_a_line_per_interval(capsys):
    from harness.progress import progress_bar

    with progress_bar("minilm: scifact corpus", 4, unit="texts", interval=0) as advance:  # stderr is no TTY here
        for _ in range(4):
            advance(1)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 5, lines
    assert lines[1].startswith("minilm: scifact corpus: 2/4 texts (50%), ")
    assert ("texts/s" in lines[1] or "s per text" in lines[1]) and "elapsed" in lines[1] and "left" in lines[1]
    assert lines[-1].startswith("minilm: scifact corpus: done, 4/4 texts (100%) in ")


def test_progress_in_a_log_is_lines_even_with_force_color():
    """Some CI systems set FORCE_COLOR, and rich then calls a piped stderr a terminal: a log still gets lines."""
    import os
    import subprocess
    import sys

    code = ("from harness.progress import progress_bar\n"
            "with progress_bar('encode', 2, unit='texts', interval=0) as advance:\n    advance(1); advance(1)\n")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "FORCE_COLOR": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1].startswith("encode: done, 2/2 texts (100%) in "), done.stderr


def test_progress_watchdog_prints_while_one_step_runs_long():
    import io
    import time

    from harness.progress import progress_bar

    out = io.StringIO()
    with progress_bar("encode", 3, interval=0.05, stream=out) as advance:
        advance(1)
        time.sleep(0.4)  # one long step: lines must keep coming
        during = out.getvalue().splitlines()
        advance(2)
    assert len(during) >= 2 and all(line.startswith("encode: 1/3 (33%), ") for line in during), during
    assert out.getvalue().splitlines()[-1].startswith("encode: done, 3/3 (100%) in ")


def test_progress_quiet_for_short_work_and_says_where_it_stopped():
    import io

    from harness.progress import progress_bar

    out = io.StringIO()
    with progress_bar("quick", 10, interval=15, stream=out) as advance:
        advance(10)
    assert out.getvalue() == ""
    with pytest.raises(RuntimeError):
        with progress_bar("broken", 10, interval=0, stream=out) as advance:
            advance(3)
            raise RuntimeError
    assert out.getvalue().splitlines()[-1].startswith("broken: stopped at 3/10 (30%) after ")
