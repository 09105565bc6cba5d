"""BEIR loading: real folders, clear errors, and no query metadata (SciFact's holds gold labels)."""
import pytest

from harness.cli import make_dataset
from harness.data import BeirDataset, DatasetError


def test_scifact_counts_match_beir(scifact, nfcorpus):
    test = scifact.load("test")
    assert (len(test.corpus), len(test.qrels), sum(map(len, test.qrels.values()))) == (5183, 300, 339)
    assert scifact.splits() == ["test", "train"]
    assert len(nfcorpus.load("test").qrels) == 323


def test_only_query_text_is_kept(scifact):
    queries = scifact.load("test").queries
    assert all(isinstance(text, str) for text in queries.values())
    # The file's metadata (cited doc ids, SUPPORT/CONTRADICT labels) must not leak into any query text.
    assert not any("SUPPORT" in t or "CONTRADICT" in t for t in queries.values())


def test_missing_dataset_says_where_it_looked(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset 'scifact' not found: .*scifact.*--data-dir"):
        make_dataset("scifact", str(tmp_path))


def test_missing_split_lists_the_splits(scifact):
    with pytest.raises(DatasetError, match=r"no split 'dev'.*splits: test, train"):
        scifact.load("dev")


def test_folder_without_qrels_is_rejected(tmp_path):
    (tmp_path / "corpus.jsonl").write_text("")
    with pytest.raises(DatasetError, match="missing queries.jsonl, qrels/<split>.tsv"):
        BeirDataset("x", tmp_path)
