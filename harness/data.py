"""BEIR-format datasets: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``, read and validated here.

A dataset is found in ``--data-dir`` or ``$HARNESS_DATA_DIR`` (a folder holding ``<name>/``), or
downloaded with ``beir.util.download_and_unzip`` when ``download=True`` and online. Any folder with
``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` works. Only query *text* is read:
SciFact's query metadata carries gold evidence labels and must never reach a model.

The files are streamed line by line (a line longer than ``MAX_LINE`` bytes is refused without being read
whole) and checked as they are read; every problem is a ``DataError`` whose message is one line,
``<file>:<line>: <problem>; <what to do>`` (docs/reliability.md):

* JSONL: each line one JSON object with a string ``_id``; a malformed line, a duplicate ``_id`` (both
  lines named), a blank line inside the file (trailing blank lines are fine), non-UTF-8 bytes.
* corpus documents: ``text`` must be a string (``null`` or missing is an error); a missing or ``null``
  ``title`` is read as the empty title (many BEIR corpora have none).
* queries: ``text`` must be a string; everything else (metadata) is dropped.
* qrels: tab-separated ``query-id, corpus-id, score`` (an integer). The first line is a header only if it
  looks like one (its first column names the query id and its score is not a number): a file without a
  header keeps its first judgement. A judgement naming a query or document that is not in the dataset, a
  score that is not an integer, the same pair judged twice with different scores, and an empty split are
  errors.

The result equals what ``beir``'s ``GenericDataLoader`` returns on well-formed data (corpus in file order,
queries restricted to the judged ones, qrels in file order).
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from harness.cache import file_sha256
from harness.types import Split

DATA_ENV = "HARNESS_DATA_DIR"
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
BEIR_NAMES = (
    "scifact", "nfcorpus", "arguana", "fiqa", "scidocs", "trec-covid", "quora", "webis-touche2020",
    "dbpedia-entity", "climate-fever", "fever", "hotpotqa", "nq", "msmarco", "cqadupstack",
)
REQUIRED = ("corpus.jsonl", "queries.jsonl")


MAX_LINE = 64 << 20  # bytes; BEIR's longest lines are a few KB
HEADER_QUERY_COLUMN = {"query-id", "query_id", "queryid", "query", "qid", "query-ids", "topic", "topic-id"}


class DatasetError(Exception):
    """A dataset folder or split is missing or malformed; the message says where and what to do."""


class DataError(DatasetError):
    """A dataset file's content is malformed: ``<file>:<line>: <problem>; <what to do>``."""


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
        if not split or "/" in split or "\\" in split or split.startswith("."):
            raise DatasetError(f"split {split!r} is not a split name (qrels/<split>.tsv); splits: {', '.join(self.splits()) or 'none'}")
        if not (self.path / "qrels" / f"{split}.tsv").is_file():
            raise DatasetError(
                f"dataset {self.name!r} has no split {split!r} ({self.path / 'qrels' / (split + '.tsv')} is missing); "
                f"splits: {', '.join(self.splits()) or 'none'}"
            )

    def load(self, split: str) -> Split:
        self._check_split(split)
        return _load(str(self.path), split, _signature(self.path, split))

    def file_hashes(self, split: str) -> dict[str, str]:

        self._check_split(split)
        return {f: file_sha256(self.path / f) for f in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv")}

    def __repr__(self) -> str:
        return f"BeirDataset({self.name!r}, {str(self.path)!r})"


def _signature(path: Path, split: str) -> tuple:
    """The three files' sha256 (about 15 ms for SciFact): the in-process cache never serves an edited file's
    old contents, whatever its timestamps say."""

    out: list[str | None] = []
    for f in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        try:
            out.append(file_sha256(path / f))
        except OSError:
            out.append(None)  # reported by the loader, naming the file
    return tuple(out)


@lru_cache(maxsize=8)
def _load(path: str, split: str, signature: tuple = ()) -> Split:
    folder = Path(path)
    corpus = read_corpus(folder / "corpus.jsonl")
    queries = read_queries(folder / "queries.jsonl")
    qrels = read_qrels(folder / "qrels" / f"{split}.tsv", queries, corpus, folder / "queries.jsonl", folder / "corpus.jsonl")
    # As GenericDataLoader: only the judged queries, in qrels order, and only their text (no metadata, no labels).
    return Split(corpus=corpus, queries={qid: queries[qid] for qid in qrels}, qrels=qrels)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` for every line of ``path``, without the line ending; one line in memory at a time."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc}); check the file and its permissions") from None
    with fh:
        n = 0
        while True:
            raw = fh.readline(MAX_LINE + 1)
            if not raw:
                return
            n += 1
            if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
                raise DataError(f"{path}:{n}: line longer than {MAX_LINE} bytes (not read whole); the file is damaged or "
                                f"not line-delimited: fix or remove that line")
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{n}: not UTF-8 (byte 0x{raw[exc.start:exc.start + 1].hex()} at column "
                                f"{exc.start + 1}); save the file as UTF-8") from None
            yield n, text.rstrip("\r\n")


def _content_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines; blank lines are allowed only at the end of the file."""
    blank = None
    for n, text in _lines(path):
        if not text.strip():
            blank = blank or n
            continue
        if blank is not None:
            raise DataError(f"{path}:{blank}: blank line inside the file; remove it (only trailing blank lines are allowed)")
        yield n, text


def _jsonl(path: Path, what: str) -> Iterator[tuple[int, str, dict]]:
    """``(line, _id, object)`` for each line; duplicates and malformed lines are ``DataError``s."""
    seen: dict[str, int] = {}
    for n, text in _content_lines(path):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not valid JSON ({exc.msg} at column {exc.colno}); fix or remove the line") from None
        except (ValueError, RecursionError) as exc:
            raise DataError(f"{path}:{n}: not valid JSON ({type(exc).__name__}); fix or remove the line") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{n}: a JSON {type(obj).__name__}, not a {what} object like "
                            f'{{"_id": "...", "text": "..."}}; fix the line')
        _id = obj.get("_id")
        if not isinstance(_id, str) or not _id.strip():
            got = "missing" if "_id" not in obj else f"{_id!r}"[:60]
            raise DataError(f"{path}:{n}: {what} without a string \"_id\" (got {got}); give every line a unique string _id")
        if _id in seen:
            raise DataError(f"{path}:{n}: duplicate _id {_id!r} (first on line {seen[_id]}); remove or rename one of the two")
        seen[_id] = n
        yield n, _id, obj


def _text(path: Path, n: int, _id: str, obj: dict, key: str, what: str, missing_ok: bool) -> str:
    value = obj.get(key)
    if value is None:
        if missing_ok:
            return ""
        how = "null" if key in obj else "missing"
        raise DataError(f"{path}:{n}: {what} {_id!r} has \"{key}\" {how}; give it a string (\"\" if it has none)")
    if not isinstance(value, str):
        raise DataError(f"{path}:{n}: {what} {_id!r} has a {type(value).__name__} \"{key}\", not a string; fix the line")
    return value


def read_corpus(path: Path) -> dict[str, dict[str, str]]:
    """``{_id: {"text": ..., "title": ...}}`` in file order; a missing or null title is read as ``""``."""
    corpus = {}
    for n, _id, obj in _jsonl(path, "document"):
        corpus[_id] = {"text": _text(path, n, _id, obj, "text", "document", False),
                       "title": _text(path, n, _id, obj, "title", "document", True)}
    if not corpus:
        raise DataError(f"{path}: no documents; the corpus needs one JSON object per line")
    return corpus


def read_queries(path: Path) -> dict[str, str]:
    """``{_id: text}``: only the text of each query, never its metadata."""
    queries = {_id: _text(path, n, _id, obj, "text", "query", False) for n, _id, obj in _jsonl(path, "query")}
    if not queries:
        raise DataError(f"{path}: no queries; the file needs one JSON object per line")
    return queries


def _is_header(cols: list[str]) -> bool:
    return cols[0].strip().lower() in HEADER_QUERY_COLUMN


def _line_of_pair(path: Path, qid: str, did: str) -> int | str:
    """The first line judging ``qid``/``did`` (read again only to name it in an error)."""
    for n, text in _lines(path):
        cols = text.split("\t")
        if len(cols) == 3 and cols[0].strip() == qid and cols[1].strip() == did:
            return n
    return "?"


def read_qrels(path: Path, queries: dict | None = None, corpus: dict | None = None,
               queries_path: Path | None = None, corpus_path: Path | None = None) -> dict[str, dict[str, int]]:
    """``{query-id: {corpus-id: score}}`` from a BEIR qrels TSV (header optional, detected, never a judgement)."""
    qrels: dict[str, dict[str, int]] = {}
    first = True
    for n, text in _content_lines(path):
        cols = text.split("\t")
        if first:
            first = False
            if _is_header(cols):
                continue
        if len(cols) != 3:
            hint = " (TREC qrels have 4 columns: drop the second)" if len(cols) == 4 else ""
            raise DataError(f"{path}:{n}: {len(cols)} tab-separated column(s), expected 3 (query-id, corpus-id, score){hint}; fix the line")
        qid, did, raw_score = cols
        qid, did = qid.strip(), did.strip()
        if not qid or not did:
            raise DataError(f"{path}:{n}: empty {'query' if not qid else 'corpus'} id; fix the line")
        try:
            score = int(raw_score)
        except ValueError:
            raise DataError(f"{path}:{n}: score {raw_score[:40]!r} is not an integer; write an integer relevance (a header "
                            f"line, if any, must be the first line and start with query-id)") from None
        if queries is not None and qid not in queries:
            raise DataError(f"{path}:{n}: query {qid!r} is not in {queries_path or 'queries.jsonl'}; add the query or remove the judgement")
        if corpus is not None and did not in corpus:
            raise DataError(f"{path}:{n}: document {did!r} is not in {corpus_path or 'corpus.jsonl'}; add the document or remove the judgement")
        judged = qrels.get(qid)
        if judged is None:
            judged = qrels[qid] = {}
        elif did in judged and judged[did] != score:
            raise DataError(f"{path}:{n}: query {qid!r} and document {did!r} judged {score} here but {judged[did]} on line "
                            f"{_line_of_pair(path, qid, did)}; keep one of the two")
        judged[did] = score
    if not qrels:
        raise DataError(f"{path}: no judgements (an empty split); add lines 'query-id<TAB>corpus-id<TAB>score' or choose another split")
    return qrels


def doc_text(doc: dict) -> str:
    """Title and body joined as BEIR and MTEB do for dense retrieval."""
    return ((doc.get("title") or "") + " " + (doc.get("text") or "")).strip()
