"""The embedding cache: a second evaluation encodes nothing; anything that changes vectors changes the key."""
import json
import shutil

import pytest
import torch

from harness.cache import EmbeddingCache
from harness.data import BeirDataset
from harness.evaluate import embed_side, evaluate


@pytest.fixture(scope="module")
def small_scifact(tmp_path_factory, scifact):
    """A real slice of SciFact test: 40 queries and their judged documents plus 200 others."""
    data = scifact.load("test")
    folder = tmp_path_factory.mktemp("beir") / "scifact-slice"
    (folder / "qrels").mkdir(parents=True)
    qids = sorted(data.qrels)[:40]
    keep = {d for q in qids for d in data.qrels[q]} | set(list(data.corpus)[:200])
    with open(folder / "corpus.jsonl", "w") as fh:
        for did in keep:
            fh.write(json.dumps({"_id": did, **data.corpus[did]}) + "\n")
    with open(folder / "queries.jsonl", "w") as fh:
        for q in qids:
            fh.write(json.dumps({"_id": q, "text": data.queries[q]}) + "\n")
    with open(folder / "qrels" / "test.tsv", "w") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for q in qids:
            for d, r in data.qrels[q].items():
                fh.write(f"{q}\t{d}\t{r}\n")
    return BeirDataset("scifact-slice", folder)


class CountingEncoder:
    """The real encoder, counting how many texts it is asked to encode."""

    def __init__(self, inner):
        self.inner, self.encoded = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, texts, **kw):
        self.encoded += len(texts)
        return self.inner.encode(texts, **kw)


def test_second_evaluation_is_served_from_cache(tmp_path, minilm, small_scifact):
    cache = EmbeddingCache(tmp_path)
    enc = CountingEncoder(minilm)
    first = evaluate(enc, small_scifact, "test", cache)
    assert first.cache == {"queries": "miss", "corpus": "miss"} and enc.encoded > 0
    enc.encoded = 0
    second = evaluate(enc, small_scifact, "test", cache)
    assert second.cache == {"queries": "hit", "corpus": "hit"} and enc.encoded == 0
    assert second.per_query_ndcg10 == first.per_query_ndcg10
    assert list(tmp_path.rglob("*.tmp*")) == []  # nothing half-written left behind


def test_key_changes_with_max_length_and_dataset_file(tmp_path, minilm, small_scifact):
    cache = EmbeddingCache(tmp_path)
    embed_side(minilm, small_scifact, "test", "query", cache)
    n_files = len(list(tmp_path.rglob("*.safetensors")))
    short = type(minilm)(minilm.model_ref, name="minilm", max_length=32, device="cpu")
    assert not embed_side(short, small_scifact, "test", "query", cache).cache_hit
    copy = tmp_path / "copy"
    shutil.copytree(small_scifact.path, copy)
    with open(copy / "queries.jsonl", "a") as fh:
        fh.write(json.dumps({"_id": "extra", "text": "an extra query changes the file hash"}) + "\n")
    assert not embed_side(minilm, BeirDataset("copy", copy), "test", "query", cache).cache_hit
    assert len(list(tmp_path.rglob("*.safetensors"))) == n_files + 2


def test_cached_vectors_equal_fresh_ones(tmp_path, minilm, small_scifact):
    cache = EmbeddingCache(tmp_path)
    cold = embed_side(minilm, small_scifact, "test", "query", cache)
    warm = embed_side(minilm, small_scifact, "test", "query", cache)
    assert warm.cache_hit and torch.equal(cold.emb, warm.emb)


def test_cached_embeddings_are_served_without_the_weights(tmp_path, monkeypatch, minilm, small_scifact):
    """A GPU machine gets the embedding cache, not the weights: the cache's manifest stands in for them."""
    from harness.encoders import EncoderError, TransformerEncoder

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    cache = EmbeddingCache(tmp_path / "embeddings")
    with_weights = TransformerEncoder(minilm.model_ref, name="minilm", device="cpu")
    cold = embed_side(with_weights, small_scifact, "test", "query", cache)
    manifest = json.loads((tmp_path / "encoders" / "minilm.json").read_text())
    assert manifest["fingerprint"] == minilm.fingerprint() and manifest["max_length"] == 256 and manifest["dim"] == 384

    absent = tmp_path / "no-such-model"  # neither a folder nor reachable: only the manifest can vouch for it
    without = TransformerEncoder(str(absent), name="minilm", device="cpu")
    assert (without.max_length, without.dim, without.fingerprint()) == (256, 384, minilm.fingerprint())
    warm = embed_side(without, small_scifact, "test", "query", cache)
    assert warm.cache_hit and torch.equal(warm.emb, cold.emb)
    with pytest.raises(EncoderError):
        without.encode(["needs the weights"])
    with pytest.raises(EncoderError, match="cannot fingerprint encoder 'other'.*manifest"):
        TransformerEncoder(str(absent), name="other", device="cpu").fingerprint()
