"""Reliability of the embedding cache (docs/reliability.md, cases 1-3 and the read-only cache of case 6).

Every test uses a temporary HARNESS_CACHE_DIR; nothing here touches the shared cache. A tiny deterministic
encoder stands in for a transformer where only the cache is under test.
"""
import contextlib
import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
import torch

from harness.cache import CacheError, CacheWarning, EmbeddingCache, file_sha256, read_entry, tensor_sha256
from harness.data import BeirDataset
from harness.evaluate import embed_side

ROOT = Path(__file__).resolve().parent.parent

FAKE_ENCODER = '''
import hashlib
import time

import torch


class FakeEncoder:
    """Deterministic 16-d unit vectors from each text's sha256; counts what it encodes."""

    name, dim, max_length, similarity, dtype, pooling, normalize = "fake", 16, 32, "cos", "fp32", "mean", True

    def __init__(self, delay=0.0, log=None, **options):
        self.delay, self.log, self.encoded = delay, log, 0

    def fingerprint(self):
        return "fake-encoder-v1"

    def encode(self, texts, *, batch_size=64, description=""):
        self.encoded += len(texts)
        if self.log:
            with open(self.log, "a") as fh:
                fh.write(f"{len(texts)}\\n")
        time.sleep(self.delay)
        rows = []
        for t in texts:
            g = torch.Generator().manual_seed(int(hashlib.sha256(t.encode()).hexdigest()[:15], 16))
            rows.append(torch.nn.functional.normalize(torch.randn(self.dim, generator=g), dim=0))
        return torch.stack(rows) if rows else torch.empty(0, self.dim)
'''
_ns: dict = {}
exec(FAKE_ENCODER, _ns)
FakeEncoder = _ns["FakeEncoder"]


FIRST_DOCS = Path(__file__).parent / "fixtures" / "scifact-first-30-docs.jsonl"


def make_tiny(folder: Path, n_docs: int = 30, n_queries: int = 5) -> BeirDataset:
    """A tiny BEIR folder with real SciFact texts (its first 30 documents, kept in tests/fixtures so this needs
    no data folder) and queries judged on them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qrels").mkdir(exist_ok=True)
    with open(FIRST_DOCS) as fh:
        docs = [json.loads(next(fh)) for _ in range(n_docs)]
    with open(folder / "corpus.jsonl", "w") as out:
        for d in docs:
            out.write(json.dumps({"_id": d["_id"], "title": d["title"], "text": d["text"]}) + "\n")
    with open(folder / "queries.jsonl", "w") as out:
        for i in range(n_queries):
            out.write(json.dumps({"_id": f"q{i}", "text": f"what does document {docs[i]['_id']} say about {docs[i]['title'][:40]}"}) + "\n")
    with open(folder / "qrels" / "test.tsv", "w") as out:
        out.write("query-id\tcorpus-id\tscore\n")
        for i in range(n_queries):
            out.write(f"q{i}\t{docs[i]['_id']}\t1\n")
    return BeirDataset(folder.name, folder)


@pytest.fixture
def tiny(tmp_path):
    return make_tiny(tmp_path / "tiny")


def entries(root: Path) -> list[Path]:
    return sorted(root.rglob("*.safetensors"))


# -- case 1: checksums, damaged entries are rebuilt, never used ---------------------------------------------
def test_entries_carry_the_checksum_of_their_tensor_bytes(cache_dir, tiny):
    enc = FakeEncoder()
    cold = embed_side(enc, tiny, "test", "doc", EmbeddingCache())
    (path,) = entries(cache_dir)
    emb, meta = read_entry(path, 30)
    assert meta["sha256"] == hashlib.sha256(cold.emb.numpy().tobytes()).hexdigest() == tensor_sha256(emb)
    assert list(cache_dir.rglob("*.tmp*")) == []


def _data_offset(path: Path) -> int:
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    return 8 + n


def flip_bytes(path):
    data = bytearray(path.read_bytes())
    at = _data_offset(path) + 4 * 16 * 7 + 5  # inside row 7
    data[at] ^= 0x40
    data[at + 1] ^= 0x01
    path.write_bytes(bytes(data))


def nan_row(path):
    data = bytearray(path.read_bytes())
    at = _data_offset(path) + 4 * 16 * 3
    data[at:at + 64] = struct.pack("<16f", *[float("nan")] * 16)
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def zero_bytes(path):
    path.write_bytes(b"")


def damage_header(path):
    data = bytearray(path.read_bytes())
    data[10:30] = b"\xff\x00garbage!!\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09"
    path.write_bytes(bytes(data))


def huge_header_length(path):
    data = bytearray(path.read_bytes())
    data[:8] = struct.pack("<Q", 1 << 40)
    path.write_bytes(bytes(data))


def swap_tensor_name(path):
    data = path.read_bytes().replace(b'"embeddings"', b'"embeddingz"', 1)
    path.write_bytes(data)


@pytest.mark.parametrize("damage", [flip_bytes, nan_row, truncate, zero_bytes, damage_header, huge_header_length, swap_tensor_name])
def test_damaged_entry_is_detected_warned_and_rebuilt(cache_dir, tiny, damage):
    enc = FakeEncoder()
    cold = embed_side(enc, tiny, "test", "doc", EmbeddingCache())
    (path,) = entries(cache_dir)
    damage(path)
    enc.encoded = 0
    with pytest.warns(CacheWarning) as caught:
        again = embed_side(enc, tiny, "test", "doc", EmbeddingCache())
    messages = [str(w.message) for w in caught]
    assert any(m.startswith(f"{path}: damaged cache entry") and "encoding again" in m for m in messages), messages
    assert all("\n" not in m for m in messages)
    assert not again.cache_hit and enc.encoded == 30  # treated as a miss: re-encoded, never used
    assert torch.equal(again.emb, cold.emb)
    emb, meta = read_entry(path, 30)  # and rebuilt in place
    assert torch.equal(emb, cold.emb) and meta["sha256"] == tensor_sha256(cold.emb)
    enc.encoded = 0
    assert embed_side(enc, tiny, "test", "doc", EmbeddingCache()).cache_hit and enc.encoded == 0


def test_entry_written_before_checksums_is_verified_then_stamped(cache_dir, tiny):
    from safetensors.torch import save_file

    enc = FakeEncoder()
    cold = embed_side(enc, tiny, "test", "doc", EmbeddingCache())
    (path,) = entries(cache_dir)
    save_file({"embeddings": cold.emb}, str(path), metadata={"encoder": "fake"})  # the old format: no sha256
    enc.encoded = 0
    warm = embed_side(enc, tiny, "test", "doc", EmbeddingCache())
    assert warm.cache_hit and enc.encoded == 0 and torch.equal(warm.emb, cold.emb)
    assert read_entry(path, 30)[1]["sha256"] == tensor_sha256(cold.emb)
    # an old entry that fails the structural checks is still refused
    bad = cold.emb.clone()
    bad[2] = float("inf")
    save_file({"embeddings": bad}, str(path), metadata={"encoder": "fake"})
    with pytest.warns(CacheWarning, match="row"):
        assert not embed_side(enc, tiny, "test", "doc", EmbeddingCache()).cache_hit


def test_non_finite_vectors_are_not_cached(cache_dir):
    cache = EmbeddingCache()
    emb = torch.ones(3, 4)
    emb[1, 2] = float("nan")
    with pytest.warns(CacheWarning, match=r"not cached: the encoder returned 1 row\(s\) with NaN"):
        assert cache.put("ab" * 32, emb, {}) is None
    assert entries(cache_dir) == []


def test_damaged_hash_memo_is_ignored_and_rebuilt(cache_dir, tmp_path, monkeypatch):
    import harness.cache as hc

    monkeypatch.setattr(hc, "SMALL_FILE", 0)  # memoise every file, as for model weights
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x" * 1000)
    digest = file_sha256(f)
    (memo,) = (cache_dir / "hashes").glob("*.json")
    for garbage in (b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'{"key": 3}', b""):
        memo.write_bytes(garbage)
        with pytest.warns(CacheWarning, match=rf"{memo}: damaged cache memo"):
            assert file_sha256(f) == digest
        assert json.loads(memo.read_text())["sha256"] == digest  # rebuilt


def test_damaged_encoder_manifest_is_ignored_and_rewritten(cache_dir, minilm):
    from harness.encoders import TransformerEncoder

    enc = TransformerEncoder(minilm.model_ref, name="minilm", device="cpu")
    fp = enc.fingerprint()
    manifest = cache_dir / "encoders" / "minilm.json"
    good = json.loads(manifest.read_text())
    for garbage in ('{"fingerprint": ', '["minilm"]', json.dumps({**good, "dim": "384"})):
        manifest.write_text(garbage)
        fresh = TransformerEncoder(minilm.model_ref, name="minilm", device="cpu")
        with pytest.warns(CacheWarning, match=rf"{manifest}: damaged cache memo"):
            assert fresh.fingerprint() == fp
        assert json.loads(manifest.read_text()) == good
    # without the weights, a damaged manifest cannot vouch for anything: a clear error, not a crash
    manifest.write_text("{")
    with pytest.warns(CacheWarning), pytest.raises(Exception, match="cannot fingerprint encoder 'minilm'") as info:
        TransformerEncoder(str(cache_dir / "absent"), name="minilm", device="cpu").fingerprint()
    assert type(info.value).__name__ == "EncoderError"


# -- case 2: a file's hash is never served stale ---------------------------------------------------------
@pytest.mark.parametrize("memoised", [False, True], ids=["small-file-rehashed", "big-file-memo"])
def test_hash_changes_when_content_changes_with_size_and_mtime_restored(cache_dir, tmp_path, monkeypatch, memoised):
    import harness.cache as hc

    if memoised:
        monkeypatch.setattr(hc, "SMALL_FILE", 0)
    f = tmp_path / "queries.jsonl"
    f.write_text('{"_id": "1", "text": "aaaa"}\n')
    before = f.stat()
    first = file_sha256(f)
    f.write_text('{"_id": "1", "text": "bbbb"}\n')  # same size
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime restored
    assert f.stat().st_size == before.st_size and f.stat().st_mtime_ns == before.st_mtime_ns
    assert file_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest() != first


def test_dataset_edit_with_restored_mtime_misses_the_cache(cache_dir, tiny):
    enc = FakeEncoder()
    embed_side(enc, tiny, "test", "query", EmbeddingCache())
    q = tiny.path / "queries.jsonl"
    st = q.stat()
    q.write_text(q.read_text().replace("what does", "WHAT DOES"))
    os.utime(q, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not embed_side(enc, tiny, "test", "query", EmbeddingCache()).cache_hit


# -- case 3: two processes, one encoding ------------------------------------------------------------------
WORKER = FAKE_ENCODER + '''
import json, os, sys, time
from pathlib import Path
from harness.cache import EmbeddingCache, tensor_sha256
from harness.data import BeirDataset
from harness.evaluate import embed_side

folder, log, barrier = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
dataset = BeirDataset(folder.name, folder)
dataset.load("test")
(barrier / f"ready-{os.getpid()}").touch()
while len(list(barrier.glob("ready-*"))) < 2:  # start both at the same moment
    time.sleep(0.01)
out = embed_side(FakeEncoder(delay=2.0, log=log), dataset, "test", "doc", EmbeddingCache())
print(json.dumps({"hit": out.cache_hit, "sha": tensor_sha256(out.emb)}))
'''


def test_second_process_waits_for_the_first_ones_entry(cache_dir, tiny, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    log, barrier = tmp_path / "encoded.log", tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "HARNESS_CACHE_DIR": str(cache_dir), "PYTHONWARNINGS": "default"}
    procs = [subprocess.Popen([sys.executable, str(script), str(tiny.path), str(log), str(barrier)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert log.read_text().split() == ["30"]  # encoded once, by one process
    assert sorted(r["hit"] for r in results) == [False, True]
    assert results[0]["sha"] == results[1]["sha"]
    waiter = outs[[r["hit"] for r in results].index(True)][1]
    assert "waiting for process" in waiter and "Traceback" not in waiter
    assert len(entries(cache_dir)) == 1 and list(cache_dir.rglob("*.tmp*")) == []


def test_lock_of_a_process_that_died_mid_encoding_is_released(cache_dir, tiny, tmp_path):
    key = "cd" * 32
    holder = textwrap.dedent(f"""
        import os
        from harness.cache import EmbeddingCache
        assert EmbeddingCache().get({key!r}, ["a"]) is None  # a miss: holds the lock
        os._exit(3)  # dies without put()
    """)
    env = {**os.environ, "HARNESS_CACHE_DIR": str(cache_dir)}
    assert subprocess.run([sys.executable, "-c", holder], env=env, timeout=120).returncode == 3
    start = time.monotonic()
    cache = EmbeddingCache()
    assert cache.get(key, ["a"]) is None and time.monotonic() - start < 5
    assert cache.get(key, ["a"]) is None  # the same process asking again does not deadlock on its own lock
    assert cache.put(key, torch.ones(1, 4), {}) is not None
    assert torch.equal(cache.get(key, ["a"]), torch.ones(1, 4))


# -- case 6: a read-only cache folder ----------------------------------------------------------------------
@contextlib.contextmanager
def read_only(path: Path):
    """Make ``path`` read-only for this process: chmod for a normal user, a read-only bind mount for root."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p, m in modes.items():
                p.chmod(m)
        return
    ok = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True).returncode == 0
    if not ok:
        pytest.skip("running as root without permission to mount: cannot make a folder read-only")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only")
        yield
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def fake_plugin():
    from harness import hookimpl

    module = types.ModuleType("reliability_fake_encoder")

    def register_encoders(register):
        register("fake", FakeEncoder, description="deterministic 16-d test encoder")

    module.register_encoders = hookimpl(register_encoders)
    return module


@pytest.fixture
def fake_registry(monkeypatch):
    import harness.registry as hp

    monkeypatch.setattr(hp, "_registry", hp.build_registry((fake_plugin(),)))


def test_read_only_cache_serves_hits_and_warns_once_for_what_it_cannot_store(cache_dir, tiny):
    enc = FakeEncoder()
    cold = embed_side(enc, tiny, "test", "doc", EmbeddingCache())
    with read_only(cache_dir):
        with pytest.raises(OSError):
            (cache_dir / "probe").write_text("x")
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hit = embed_side(enc, tiny, "test", "doc", EmbeddingCache())
            miss = embed_side(enc, tiny, "test", "query", EmbeddingCache())  # not cached yet: encoded, cannot be stored
        assert hit.cache_hit and torch.equal(hit.emb, cold.emb)
        assert not miss.cache_hit and miss.emb.shape == (5, 16)
        texts = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
        assert texts and all("cannot write the cache" in t and "HARNESS_CACHE_DIR" in t for t in texts), texts


def test_read_only_cache_through_the_cli_is_a_warning_not_a_traceback(cache_dir, tiny, tmp_path, fake_registry, capsys):
    from harness.cli import main

    other = make_tiny(tmp_path / "other", n_docs=12, n_queries=4)  # never cached: must be encoded, cannot be stored
    assert main(["eval", "--encoder", "fake", "--dataset", str(tiny.path), "--json"]) == 0
    capsys.readouterr()
    with read_only(cache_dir):
        assert main(["eval", "--encoder", "fake", "--dataset", f"{tiny.path},{other.path}", "--json"]) == 0
    out = capsys.readouterr()
    results = json.loads(out.out)
    assert [r["cache"] for r in results] == [{"queries": "hit", "corpus": "hit"}, {"queries": "miss", "corpus": "miss"}]
    lines = out.err.strip().splitlines()
    assert lines and all(line.startswith("warning: ") and "cannot write the cache" in line for line in lines), lines
    assert "Traceback" not in out.err


def test_cache_dir_that_is_a_file_exits_2_with_one_line(tmp_path, tiny, fake_registry, monkeypatch, capsys):
    from harness.cli import main

    bogus = tmp_path / "not-a-folder"
    bogus.write_text("")
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(bogus))
    assert main(["eval", "--encoder", "fake", "--dataset", str(tiny.path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {bogus}: the cache folder ($HARNESS_CACHE_DIR) is a file, not a folder; point $HARNESS_CACHE_DIR at a folder"
    with pytest.raises(CacheError):
        EmbeddingCache()
