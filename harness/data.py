"""BEIR-format datasets, loaded through ``beir``'s GenericDataLoader.

A dataset is found in ``--data-dir`` or ``$HARNESS_DATA_DIR`` (a folder holding ``<name>/``), or
downloaded with ``beir.util.download_and_unzip`` when ``download=True`` and online. Any folder with
``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` works. Only query *text* is read:
SciFact's query metadata carries gold evidence labels and must never reach a model.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from functools import lru_cache
from pathlib import Path

from harness.types import Split

DATA_ENV = "HARNESS_DATA_DIR"
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
BEIR_NAMES = (
    "scifact", "nfcorpus", "arguana", "fiqa", "scidocs", "trec-covid", "quora", "webis-touche2020",
    "dbpedia-entity", "climate-fever", "fever", "hotpotqa", "nq", "msmarco", "cqadupstack",
)
REQUIRED = ("corpus.jsonl", "queries.jsonl")


class DatasetError(Exception):
    """A dataset folder or split is missing or malformed; the message says where and what to do."""


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    value = explicit or os.environ.get(DATA_ENV)
    return Path(value).expanduser() if value else None


def check_folder(path: Path) -> None:
    missing = [f for f in REQUIRED if not (path / f).is_file()]
    if not (path / "qrels").is_dir():
        missing.append("qrels/<split>.tsv")
    if missing:
        raise DatasetError(f"{path} is not a BEIR dataset folder: missing {', '.join(missing)}")


class BeirDataset:
    """One BEIR dataset folder. ``load(split)`` returns its corpus, query texts and qrels."""

    def __init__(self, name: str, path: Path):
        check_folder(path)
        self.name = name
        self.path = path

    @classmethod
    def find(cls, name: str, data_dir_: str | os.PathLike | None = None, download: bool = False) -> "BeirDataset":
        root = data_dir(data_dir_)
        if root is not None and (root / name).is_dir():
            return cls(name, root / name)
        if download:
            from beir import util

            target = root or Path.home() / ".cache" / "retrieval-harness" / "beir"
            target.mkdir(parents=True, exist_ok=True)
            folder = util.download_and_unzip(BEIR_URL.format(name=name), str(target))
            return cls(name, Path(folder))
        where = f"{root / name}" if root else f"no data folder is set (--data-dir or ${DATA_ENV})"
        raise DatasetError(
            f"dataset {name!r} not found: {where}. Point --data-dir or ${DATA_ENV} at a folder that "
            f"holds {name}/corpus.jsonl, {name}/queries.jsonl and {name}/qrels/, or pass --download when online."
        )

    def splits(self) -> list[str]:
        return sorted(p.stem for p in (self.path / "qrels").glob("*.tsv"))

    def _check_split(self, split: str) -> None:
        if not (self.path / "qrels" / f"{split}.tsv").is_file():
            raise DatasetError(
                f"dataset {self.name!r} has no split {split!r} ({self.path / 'qrels' / (split + '.tsv')} is missing); "
                f"splits: {', '.join(self.splits()) or 'none'}"
            )

    def load(self, split: str) -> Split:
        self._check_split(split)
        return _load(str(self.path), split)

    def file_hashes(self, split: str) -> dict[str, str]:
        from harness.encoders import file_sha256

        self._check_split(split)
        return {f: file_sha256(self.path / f) for f in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv")}

    def __repr__(self) -> str:
        return f"BeirDataset({self.name!r}, {str(self.path)!r})"


@lru_cache(maxsize=8)
def _load(path: str, split: str) -> Split:
    from beir.datasets.data_loader import GenericDataLoader

    logging.getLogger("beir").setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # beir's tqdm bar; loading takes under a second
            corpus, queries, qrels = GenericDataLoader(data_folder=path).load(split=split)
    except Exception as exc:
        raise DatasetError(f"cannot read BEIR folder {path} (split {split!r}): {type(exc).__name__}: {exc}") from exc
    # GenericDataLoader keeps only each query's "text"; keep it that way (no metadata, no labels).
    return Split(corpus=corpus, queries={qid: str(text) for qid, text in queries.items()}, qrels=qrels)


def doc_text(doc: dict) -> str:
    """Title and body joined as BEIR and MTEB do for dense retrieval."""
    return (doc.get("title", "") + " " + doc.get("text", "")).strip()
