"""Frozen encoders reproduce the published (MTEB) NDCG@10 on the BEIR test splits, within 0.002.

MiniLM runs in CI (its embeddings are cached and shared with the rest of the session). MPNet's full
evaluation takes ~50 minutes of CPU, so it is marked slow: `pytest --run-slow`, or on a GPU.
"""
import pytest

from harness.evaluate import evaluate

pytestmark = pytest.mark.data  # real encoders on the real BEIR data

PUBLISHED = {
    ("minilm", "scifact"): 0.6451,
    ("minilm", "nfcorpus"): 0.3159,
    ("mpnet", "scifact"): 0.6557,
    ("mpnet", "nfcorpus"): 0.3329,
}


@pytest.mark.parametrize(
    "encoder, dataset",
    [(e, d) if e == "minilm" else pytest.param(e, d, marks=pytest.mark.slow) for e, d in PUBLISHED],
)
def test_reproduces_published_ndcg10(encoder, dataset, request):
    result = evaluate(request.getfixturevalue(encoder), request.getfixturevalue(dataset), "test")
    assert abs(result.ndcg10 - PUBLISHED[encoder, dataset]) <= 0.002, result.ndcg10
