"""NDCG@10 and Recall@100 against pytrec_eval (trec_eval) on random runs and qrels, ties included."""
import pytrec_eval
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.metrics import ndcg_at_k, rank, recall_at_k

DOCS = [f"d{i}" for i in range(30)] + ["10", "9", "a", "B"]
QUERIES = ["q1", "q2", "3"]
# Few distinct scores, so ties are common: they must be broken exactly as trec_eval does.
scores = st.sampled_from([0.0, 0.25, 0.5, 0.5000001, 1.0, -1.0, 3.0])
runs = st.dictionaries(st.sampled_from(QUERIES), st.dictionaries(st.sampled_from(DOCS), scores, min_size=1, max_size=25), min_size=1)
qrels_st = st.dictionaries(st.sampled_from(QUERIES), st.dictionaries(st.sampled_from(DOCS), st.integers(0, 3), min_size=1, max_size=12), min_size=1)


def reference(run, qrels, measure):
    return pytrec_eval.RelevanceEvaluator(qrels, {measure}).evaluate(run)


@settings(max_examples=400, deadline=None)
@given(runs, qrels_st)
def test_ndcg_at_10_matches_pytrec_eval(run, qrels):
    ours = ndcg_at_k(run, qrels, 10)
    ref = {q: m["ndcg_cut_10"] for q, m in reference(run, qrels, "ndcg_cut.10").items()}
    assert ours.keys() == ref.keys()
    for q in ref:
        assert abs(ours[q] - ref[q]) < 1e-12, (q, ours[q], ref[q])


@settings(max_examples=400, deadline=None)
@given(runs, qrels_st, st.sampled_from([1, 3, 5, 100]))
def test_recall_matches_pytrec_eval(run, qrels, k):
    ours = recall_at_k(run, qrels, k)
    ref = {q: m[f"recall_{k}"] for q, m in reference(run, qrels, f"recall.{k}").items()}
    assert ours.keys() == ref.keys()
    for q in ref:
        assert abs(ours[q] - ref[q]) < 1e-12, (q, ours[q], ref[q])


def test_ties_break_by_document_id_descending():
    # Documents scoring the same are ranked by id in reverse string order, as trec_eval does.
    assert rank({"a": 1.0, "c": 1.0, "b": 1.0, "z": 0.5}) == ["c", "b", "a", "z"]
    # So the relevant doc "a" sits last among equals, and NDCG@1 is 0 for it.
    assert ndcg_at_k({"q": {"a": 1.0, "b": 1.0}}, {"q": {"a": 1}}, 1) == {"q": 0.0}
