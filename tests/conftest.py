"""Shared fixtures: real BEIR data and real encoders, embeddings cached once per machine (HARNESS_CACHE_DIR)."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HARNESS_DATA_DIR", str(ROOT.parent / "shared" / "data" / "beir"))
os.environ.setdefault("HARNESS_CACHE_DIR", str(ROOT / ".cache"))


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """An empty embedding cache for one test (HARNESS_CACHE_DIR points at it)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(root))
    return root


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ["HARNESS_DATA_DIR"])
    if not (path / "scifact" / "corpus.jsonl").is_file():
        pytest.fail(f"BEIR data not found in {path}: set HARNESS_DATA_DIR to the folder holding scifact/ and nfcorpus/")
    return path


@pytest.fixture(scope="session")
def scifact(data_dir):
    from harness.cli import make_dataset

    return make_dataset("scifact", str(data_dir))


@pytest.fixture(scope="session")
def nfcorpus(data_dir):
    from harness.cli import make_dataset

    return make_dataset("nfcorpus", str(data_dir))


@pytest.fixture(scope="session")
def minilm():
    from harness.cli import make_encoder

    return make_encoder("minilm", device="cpu")


@pytest.fixture(scope="session")
def mpnet():
    from harness.cli import make_encoder

    return make_encoder("mpnet", device="cpu")


@pytest.fixture(scope="session")
def real_texts(scifact, nfcorpus):
    """Real queries and documents of mixed lengths, some past the max sequence length."""
    from harness.data import doc_text

    sf, nf = scifact.load("test"), nfcorpus.load("test")
    docs = [doc_text(d) for d in list(sf.corpus.values())[:12] + list(nf.corpus.values())[:12]]
    queries = list(sf.queries.values())[:8] + list(nf.queries.values())[:8]
    return queries + docs


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (MPNet full evaluations, a Ray cluster interrupted)")


# A test that uses any of these (directly or through another fixture) needs the BEIR data or a model's weights.
NEEDS_DATA = {"data_dir", "scifact", "nfcorpus", "minilm", "mpnet", "real_texts", "real_batch", "asym_run"}


def pytest_collection_modifyitems(config, items):
    """Mark the data tier (`-m "not data"` is the fast tier: no BEIR data, no model) and skip slow tests."""
    for item in items:
        if NEEDS_DATA & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.data)
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow (minutes to tens of minutes of CPU); run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
