"""Where the trainer's inputs come from: registered encoders and datasets, and their cached embeddings.

Library code (the trainer, baselines, checks) builds encoders and datasets here, never through the CLI.
``embedded`` memoises one side of a split for the process, so candidates and seeds share one load.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from harness.data import BeirDataset
from harness.encoders import TransformerEncoder
from harness.evaluate import embed_side
from harness.registry import get, registry


def make_encoder(name: str, **options):
    """A registered encoder, or a local sentence-transformers folder / hub name (``org/model``)."""

    if name in registry().components("encoders") or not (Path(name).is_dir() or "/" in name):
        return get("encoders", name).factory(**options)

    return TransformerEncoder(name, **options)


def make_dataset(name: str, data_dir: str | None = None, download: bool = False):
    """A registered dataset found under ``data_dir``, or any BEIR-format folder given by path."""

    if Path(name).is_dir():
        return BeirDataset(Path(name).name, Path(name))
    return get("datasets", name).factory(data_dir, download=download)


@dataclass
class Side:
    """One side of a split as the frozen encoder embeds it: ids and a float32 (n, dim) matrix."""

    ids: list[str]
    emb: torch.Tensor


@lru_cache(maxsize=32)
def embedded(encoder_name: str, dataset_name: str, data_dir: str | None, split: str, side: str) -> Side:
    """Queries (``side="query"``, those with judgements in ``split``) or the corpus, through the cache."""

    e = embed_side(make_encoder(encoder_name), make_dataset(dataset_name, data_dir), split, side)
    return Side(e.ids, e.emb.float())


@lru_cache(maxsize=32)
def qrels(dataset_name: str, data_dir: str | None, split: str) -> dict[str, dict[str, int]]:
    return make_dataset(dataset_name, data_dir).load(split).qrels


@lru_cache(maxsize=8)
def encoder_similarity(encoder_name: str) -> str:
    return make_encoder(encoder_name).similarity


@lru_cache(maxsize=8)
def encoder_fingerprint(encoder_name: str) -> str:
    return make_encoder(encoder_name).fingerprint()


def file_hashes(dataset_name: str, data_dir: str | None, split: str) -> dict[str, str]:
    return make_dataset(dataset_name, data_dir).file_hashes(split)
