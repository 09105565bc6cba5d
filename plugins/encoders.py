"""Frozen encoders: all-mpnet-base-v2 and all-MiniLM-L6-v2 from their PyPI packages (hub names otherwise)."""
from harness import hookimpl
from harness.encoders import TransformerEncoder, minilm_path, mpnet_path


def mpnet(**options) -> TransformerEncoder:
    """sentence-transformers/all-mpnet-base-v2 (768-d, max 384 tokens, cosine)."""
    return TransformerEncoder(mpnet_path(), name="mpnet", **options)


def minilm(**options) -> TransformerEncoder:
    """sentence-transformers/all-MiniLM-L6-v2 (384-d, max 256 tokens, cosine)."""
    return TransformerEncoder(minilm_path(), name="minilm", **options)


@hookimpl
def register_encoders(register):
    register("mpnet", mpnet)
    register("minilm", minilm)
