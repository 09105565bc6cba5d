"""Embedding cache for frozen encoders: safetensors files written atomically.

A key covers everything that changes the vectors: the encoder's weight fingerprint, max length,
pooling, dtype, the dataset file's sha256, the text side (query/doc) and the exact ids encoded.
``HARNESS_CACHE_DIR`` moves the cache (default ``~/.cache/retrieval-harness``).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CACHE_ENV = "HARNESS_CACHE_DIR"
FORMAT = 1


def cache_root() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "retrieval-harness"
    return Path(root)


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps({"format": FORMAT, **parts}, sort_keys=True).encode()).hexdigest()


class EmbeddingCache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else cache_root() / "embeddings"

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str, ids: list[str]) -> torch.Tensor | None:
        path = self.path(key)
        if not path.is_file():
            return None
        tensors = load_file(str(path))
        emb = tensors["embeddings"]
        if emb.shape[0] != len(ids):  # a key collision or a damaged file: re-encode
            return None
        return emb

    def put(self, key: str, emb: torch.Tensor, meta: dict) -> Path:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        try:
            save_file({"embeddings": emb.contiguous().float().cpu()}, str(tmp), metadata={k: str(v) for k, v in meta.items()})
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path
