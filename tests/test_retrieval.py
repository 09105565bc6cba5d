"""Chunked exact top-k equals a full sort, whatever the chunk sizes."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.retrieval import similarity_matrix, to_run, top_k


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 90), st.integers(1, 30), st.integers(1, 17), st.integers(1, 9), st.sampled_from(["cos", "dot"]), st.integers(0, 2**31 - 1))
def test_chunked_top_k_equals_full_sort(nq, nd, k, doc_chunk, query_chunk, sim, seed):
    g = torch.Generator().manual_seed(seed)
    q, d = torch.randn(nq, 8, generator=g), torch.randn(nd, 8, generator=g)
    s, i = top_k(q, d, k, sim, doc_chunk=doc_chunk, query_chunk=query_chunk)
    full = similarity_matrix(q, d, sim)
    expected = full.sort(dim=1, descending=True).values[:, : min(k, nd)]
    assert torch.allclose(s, expected, atol=1e-6)
    assert torch.allclose(full.gather(1, i), s, atol=1e-6)


def test_run_drops_documents_with_the_query_id_as_beir_does():
    run = to_run(["1"], ["1", "2"], torch.tensor([[0.9, 0.5]]), torch.tensor([[0, 1]]))
    assert run == {"1": {"2": 0.5}}
    assert to_run(["1"], ["1", "2"], torch.tensor([[0.9, 0.5]]), torch.tensor([[0, 1]]), ignore_identical_ids=False)["1"].keys() == {"1", "2"}
