"""Our encoders reproduce sentence-transformers' embeddings on real BEIR texts."""
import pytest
import torch


@pytest.mark.parametrize("name, max_length, dim", [("minilm", 256, 384), ("mpnet", 384, 768)])
def test_matches_sentence_transformers(name, max_length, dim, real_texts, request):
    from sentence_transformers import SentenceTransformer

    encoder = request.getfixturevalue(name)
    assert (encoder.max_length, encoder.dim, encoder.similarity) == (max_length, dim, "cos")
    ours = encoder.encode(real_texts, batch_size=8)
    reference = SentenceTransformer(encoder.model_ref, device="cpu")
    assert reference.max_seq_length == max_length
    theirs = torch.from_numpy(reference.encode(real_texts, batch_size=8, normalize_embeddings=False))
    cosine = torch.nn.functional.cosine_similarity(ours, theirs, dim=1)
    assert cosine.min().item() >= 0.99999, cosine.min().item()
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(real_texts)), atol=1e-5)


def test_order_of_texts_does_not_change_vectors(minilm, real_texts):
    forward = minilm.encode(real_texts, batch_size=4)
    backward = minilm.encode(real_texts[::-1], batch_size=4).flip(0)
    assert torch.allclose(forward, backward, atol=1e-5)


def test_fingerprint_is_the_weights_sha256(minilm):
    import hashlib
    from pathlib import Path

    weights = Path(minilm.model_ref) / "model.safetensors"
    expected = hashlib.sha256(hashlib.sha256(weights.read_bytes()).hexdigest().encode()).hexdigest()
    assert minilm.fingerprint() == expected


def test_unknown_model_folder_is_a_clear_error(tmp_path):
    from harness.encoders import EncoderError, TransformerEncoder

    with pytest.raises(EncoderError, match="cannot load encoder"):
        TransformerEncoder(tmp_path, device="cpu").encode(["x"])
