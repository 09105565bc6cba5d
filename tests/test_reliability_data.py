"""Reliability of the BEIR loaders (docs/reliability.md, case 4): every malformed file is one ``DataError``
naming the file and the line; well-formed data loads exactly as beir's GenericDataLoader loads it."""
import contextlib
import io
import json
import os
import tracemalloc
from pathlib import Path

import pytest

import harness.data as hd
from harness.data import BeirDataset, DataError, DatasetError

CORPUS = [
    {"_id": "d1", "title": "Alpha", "text": "first document"},
    {"_id": "d2", "title": "Beta", "text": "second document"},
    {"_id": "d3", "title": "", "text": "third document"},
]
QUERIES = [{"_id": "q1", "text": "first?", "metadata": {"label": "SUPPORT"}}, {"_id": "q2", "text": "second?"}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\n"


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def folder(tmp_path: Path, corpus: str | bytes | None = None, queries: str | bytes | None = None,
           qrels: str | bytes | None = None, name: str = "ds") -> BeirDataset:
    root = tmp_path / name
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    for rel, content, default in (("corpus.jsonl", corpus, jsonl(CORPUS)), ("queries.jsonl", queries, jsonl(QUERIES)),
                                  ("qrels/test.tsv", qrels, QRELS)):
        content = default if content is None else content
        (root / rel).write_bytes(content.encode() if isinstance(content, str) else content)
    return BeirDataset(name, root)


def error_of(ds: BeirDataset, split: str = "test") -> str:
    with pytest.raises(DataError) as info:
        ds.load(split)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_well_formed_folder_loads(tmp_path):
    split = folder(tmp_path).load("test")
    assert split.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    assert split.queries == {"q1": "first?", "q2": "second?"}  # text only: no metadata, no labels
    assert split.corpus["d1"] == {"text": "first document", "title": "Alpha"}


# -- qrels ----------------------------------------------------------------------------------------------
def test_qrels_without_header_keep_their_first_judgement(tmp_path):
    ds = folder(tmp_path, qrels="q1\td1\t1\nq2\td2\t2\n")
    assert ds.load("test").qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}


@pytest.mark.parametrize("header", ["query-id\tcorpus-id\tscore", "query_id\tdoc_id\trelevance", "qid\tdocid\tscore\r"])
def test_qrels_header_variants_are_recognised(tmp_path, header):
    ds = folder(tmp_path, qrels=f"{header}\nq1\td1\t1\r\nq2\td2\t2\r\n")
    assert ds.load("test").qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}


def test_first_line_that_is_neither_header_nor_judgement(tmp_path):
    ds = folder(tmp_path, qrels="q1\td1\tyes\nq2\td2\t2\n")
    path = ds.path / "qrels" / "test.tsv"
    assert error_of(ds).startswith(f"{path}:1: score 'yes' is not an integer;")


def test_judgement_naming_unknown_document(tmp_path):
    ds = folder(tmp_path, qrels=QRELS + "q1\td9\t1\n")
    path = ds.path / "qrels" / "test.tsv"
    assert error_of(ds) == (f"{path}:4: document 'd9' is not in {ds.path / 'corpus.jsonl'}; add the document or remove "
                            f"the judgement")


def test_judgement_naming_unknown_query(tmp_path):
    ds = folder(tmp_path, qrels="query-id\tcorpus-id\tscore\nq7\td1\t1\n")
    assert error_of(ds).startswith(f"{ds.path / 'qrels' / 'test.tsv'}:2: query 'q7' is not in {ds.path / 'queries.jsonl'};")


@pytest.mark.parametrize("content", ["query-id\tcorpus-id\tscore\n", "", "\n\n"])
def test_empty_split(tmp_path, content):
    ds = folder(tmp_path, qrels=content)
    assert error_of(ds) == (f"{ds.path / 'qrels' / 'test.tsv'}: no judgements (an empty split); add lines "
                            f"'query-id<TAB>corpus-id<TAB>score' or choose another split")


def test_qrels_wrong_column_count_and_conflicting_duplicates(tmp_path):
    ds = folder(tmp_path, qrels=QRELS + "q1\t0\td1\t1\n")
    assert ":4: 4 tab-separated column(s), expected 3" in error_of(ds) and "TREC" in error_of(ds)
    ds = folder(tmp_path, qrels=QRELS + "q1\td1\t1\n" + "q1\td1\t0\n", name="dup")
    assert error_of(ds).endswith(":5: query 'q1' and document 'd1' judged 0 here but 1 on line 2; keep one of the two")


def test_split_name_cannot_leave_the_qrels_folder(tmp_path):
    with pytest.raises(DatasetError, match="is not a split name"):
        folder(tmp_path).load("../../etc/passwd")


# -- JSONL ------------------------------------------------------------------------------------------------
def test_malformed_line_reports_the_real_line_number(tmp_path):
    lines = jsonl(CORPUS).splitlines()
    lines.insert(2, '{"_id": "d9", "text": "unterminated')
    ds = folder(tmp_path, corpus="\n".join(lines) + "\n")
    assert error_of(ds).startswith(f"{ds.path / 'corpus.jsonl'}:3: not valid JSON (Unterminated string")


def test_trailing_blank_line_is_fine_but_a_blank_line_inside_is_not(tmp_path):
    assert len(folder(tmp_path, corpus=jsonl(CORPUS) + "\n").load("test").corpus) == 3
    assert len(folder(tmp_path, corpus=jsonl(CORPUS) + "\n  \n", name="two").load("test").corpus) == 3
    assert len(folder(tmp_path, corpus=jsonl(CORPUS).rstrip("\n"), name="none").load("test").corpus) == 3
    lines = jsonl(CORPUS).splitlines()
    ds = folder(tmp_path, corpus="\n".join(lines[:1] + [""] + lines[1:]) + "\n", name="inside")
    assert error_of(ds) == f"{ds.path / 'corpus.jsonl'}:2: blank line inside the file; remove it (only trailing blank lines are allowed)"


@pytest.mark.parametrize("which", ["corpus", "queries"])
def test_duplicate_ids_name_both_lines(tmp_path, which):
    rows = (CORPUS if which == "corpus" else QUERIES) + [{"_id": "d2" if which == "corpus" else "q1", "text": "again"}]
    ds = folder(tmp_path, **{which: jsonl(rows)})
    file = "corpus.jsonl" if which == "corpus" else "queries.jsonl"
    dup, first = ("d2", 2) if which == "corpus" else ("q1", 1)
    assert error_of(ds) == (f"{ds.path / file}:{len(rows)}: duplicate _id {dup!r} (first on line {first}); remove or rename "
                            f"one of the two")


def test_document_without_title_reads_as_empty_title(tmp_path):
    rows = [{"_id": "d1", "text": "no title"}, {"_id": "d2", "title": None, "text": "null title"}, CORPUS[2]]
    corpus = folder(tmp_path, corpus=jsonl(rows), qrels="q1\td1\t1\n").load("test").corpus
    assert corpus["d1"] == {"text": "no title", "title": ""} and corpus["d2"]["title"] == ""
    assert hd.doc_text(corpus["d1"]) == "no title"


@pytest.mark.parametrize(
    "row, problem",
    [
        ({"_id": "d1", "title": "t", "text": None}, "document 'd1' has \"text\" null; give it a string (\"\" if it has none)"),
        ({"_id": "d1", "title": "t"}, "document 'd1' has \"text\" missing;"),
        ({"_id": "d1", "title": 3, "text": "x"}, "document 'd1' has a int \"title\", not a string;"),
        ({"_id": 1, "text": "x"}, "document without a string \"_id\" (got 1)"),
        ({"text": "x"}, "document without a string \"_id\" (got missing)"),
        (["d1", "x"], "a JSON list, not a document object"),
    ],
)
def test_bad_documents(tmp_path, row, problem):
    ds = folder(tmp_path, corpus=json.dumps(row) + "\n" + jsonl(CORPUS[1:]))
    message = error_of(ds)
    assert message.startswith(f"{ds.path / 'corpus.jsonl'}:1: ") and problem in message, message


def test_query_with_null_text(tmp_path):
    ds = folder(tmp_path, queries=jsonl([QUERIES[0], {"_id": "q2", "text": None}]))
    assert error_of(ds).startswith(f"{ds.path / 'queries.jsonl'}:2: query 'q2' has \"text\" null;")


def test_non_utf8_line_is_named(tmp_path):
    data = jsonl(CORPUS).encode().replace(b"second", b"sec\xffond")
    ds = folder(tmp_path, corpus=data)
    assert error_of(ds) == f"{ds.path / 'corpus.jsonl'}:2: not UTF-8 (byte 0xff at column 44); save the file as UTF-8"


def test_utf8_bom_and_crlf_are_accepted(tmp_path):
    data = b"\xef\xbb\xbf" + jsonl(CORPUS).replace("\n", "\r\n").encode()
    assert list(folder(tmp_path, corpus=data).load("test").corpus) == ["d1", "d2", "d3"]


def test_huge_line_is_refused_without_reading_it_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(hd, "MAX_LINE", 1 << 20)
    huge = json.dumps({"_id": "d0", "text": "x" * (16 << 20)})
    ds = folder(tmp_path, corpus=huge + "\n" + jsonl(CORPUS))
    tracemalloc.start()
    try:
        message = error_of(ds)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message.startswith(f"{ds.path / 'corpus.jsonl'}:1: line longer than 1048576 bytes (not read whole)")
    assert peak < 6 << 20, peak  # a 16 MiB line, never more than ~1 MiB of it in memory


def test_long_line_under_the_limit_is_fine(tmp_path):
    rows = [{"_id": "d1", "title": "", "text": "y" * (2 << 20)}] + CORPUS[1:]
    assert len(folder(tmp_path, corpus=jsonl(rows)).load("test").corpus["d1"]["text"]) == 2 << 20


def test_an_edited_file_is_read_again(tmp_path):
    ds = folder(tmp_path)
    assert ds.load("test").qrels["q1"] == {"d1": 1}
    (ds.path / "qrels" / "test.tsv").write_text(QRELS.replace("q1\td1\t1", "q1\td3\t2"))
    assert ds.load("test").qrels["q1"] == {"d3": 2}


# -- equal to beir's loader on the real data ----------------------------------------------------------------
@pytest.mark.parametrize("name, split", [("scifact", "test"), ("scifact", "train"), ("nfcorpus", "test")])
def test_same_result_as_beir_generic_data_loader(data_dir, name, split):
    from beir.datasets.data_loader import GenericDataLoader

    ours = BeirDataset(name, data_dir / name).load(split)
    with contextlib.redirect_stderr(io.StringIO()):
        corpus, queries, qrels = GenericDataLoader(data_folder=str(data_dir / name)).load(split=split)
    assert list(ours.corpus) == list(corpus)
    assert ours.corpus == {k: {"text": v["text"], "title": v["title"] or ""} for k, v in corpus.items()}
    assert ours.queries == queries and list(ours.queries) == list(queries)
    assert ours.qrels == qrels


# -- through the command line: exit 2, one line, no traceback --------------------------------------------------
def test_cli_reports_a_data_error_as_one_line_and_exit_2(tmp_path, capsys):
    from harness.cli import main

    ds = folder(tmp_path, qrels=QRELS + "q1\td9\t1\n")
    assert main(["eval", "--encoder", "minilm", "--dataset", str(ds.path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: {ds.path / 'qrels' / 'test.tsv'}:4: document 'd9' is not in "
                                f"{ds.path / 'corpus.jsonl'}; add the document or remove the judgement"]


def test_cli_subprocess_has_no_traceback(tmp_path):
    import subprocess
    import sys

    ds = folder(tmp_path, corpus=jsonl(CORPUS) + "{oops\n")
    env = {**os.environ, "HARNESS_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "eval", "--encoder", "minilm", "--dataset", str(ds.path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"error: {ds.path / 'corpus.jsonl'}:4: not valid JSON (Expecting property name enclosed "
                                   f"in double quotes at column 2); fix or remove the line")
