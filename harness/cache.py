"""Embedding cache for frozen encoders: safetensors files, checksummed, written atomically, locked per entry.

A key covers everything that changes the vectors: the encoder's weight fingerprint, max length,
pooling, dtype, the dataset file's sha256, the text side (query/doc) and the exact ids encoded.
``HARNESS_CACHE_DIR`` moves the cache (default ``~/.cache/retrieval-harness``).

Integrity (docs/reliability.md):

* every entry stores the sha256 of its tensor bytes in its safetensors metadata (``sha256``); ``get``
  re-hashes on read, and also checks the header, dtype, shape and that every value is finite. A damaged
  entry (flipped bytes, NaN rows, truncated, empty, damaged header) is reported with a one-line warning
  naming the file and treated as a miss: it is re-encoded and replaced, never used. Entries written
  before checksums existed are accepted only if they pass the structural checks, and are then stamped
  with their checksum.
* concurrent processes: a miss takes an exclusive ``fcntl`` lock on the entry (``<key>.lock`` beside
  it), looks again, and holds the lock until ``put`` stores the entry (or ``release``, or the process
  ends), so a second process asking for the same entry waits for the first one's vectors instead of
  encoding them again. A hit needs no lock: entries are only ever renamed into place, whole.
* the cache's small JSON memos (``hashes/*.json``, ``encoders/*.json``) are read with ``read_memo``:
  a damaged one is reported, ignored and rebuilt.
* a cache folder that cannot be written (read-only) is not an error: hits are still served, and what
  cannot be stored is reported once per folder and recomputed next time.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from harness.files import HarnessWarning, one_line, warn, write_atomic

CACHE_ENV = "HARNESS_CACHE_DIR"
LOCK_TIMEOUT_ENV = "HARNESS_CACHE_LOCK_TIMEOUT"
FORMAT = 1  # part of every key; checksums did not change it (old entries are verified, then stamped)
LOCK_TIMEOUT = 3600.0  # seconds to wait for another process's entry before encoding it here anyway
SMALL_FILE = 32 << 20  # files below this are re-hashed on every call (~30 ms at most); bigger ones use a memo


class CacheError(Exception):
    """The cache cannot be used as configured (e.g. ``$HARNESS_CACHE_DIR`` is a file); the message says what to do."""


class CacheWarning(HarnessWarning):
    """A cache entry or memo was damaged (and is being rebuilt), or the cache could not be written."""


def cache_root() -> Path:
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "retrieval-harness").expanduser()
    if root.exists() and not root.is_dir():
        raise CacheError(f"{root}: the cache folder (${CACHE_ENV}) is a file, not a folder; point ${CACHE_ENV} at a folder")
    return root


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps({"format": FORMAT, **parts}, sort_keys=True).encode()).hexdigest()


# -- warnings -----------------------------------------------------------------------------------------
_warned_unwritable: set[str] = set()


def _unwritable(where: Path, exc: OSError, what: str) -> None:
    """Warn once per folder that the cache cannot be written there."""
    folder = str(where)
    if folder in _warned_unwritable:
        return
    _warned_unwritable.add(folder)
    reason = exc.strerror or type(exc).__name__
    warn(f"{where}: cannot write the cache ({reason}); {what}. Make the folder writable or point ${CACHE_ENV} "
         f"at a writable folder", CacheWarning)


# -- memos (small JSON files) --------------------------------------------------------------------------
def read_memo(path: Path, required: Mapping[str, type | tuple] | None = None) -> dict:
    """A cache memo (JSON object) or ``{}`` when absent; a damaged one is reported and ignored (it gets rebuilt).

    ``required`` maps keys to the types their values must have; a memo without them counts as damaged."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        warn(f"{path}: unreadable cache memo ({exc.strerror or exc}); ignoring it", CacheWarning)
        return {}
    problem = ""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        problem = "not UTF-8"
    except json.JSONDecodeError as exc:
        problem = f"not valid JSON (line {exc.lineno}: {exc.msg})"
    else:
        if not isinstance(data, dict):
            problem = f"a JSON {type(data).__name__}, not an object"
        else:
            for key, types in (required or {}).items():
                value = data.get(key)
                if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
                    problem = f"key {key!r} is missing or has the wrong type"
                    break
            else:
                return data
    warn(f"{path}: damaged cache memo ({problem}); ignoring it, it will be rebuilt", CacheWarning)
    return {}


def _tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def write_memo(path: Path, data: dict) -> bool:
    """Store a memo atomically; on a read-only cache warn once and return False."""
    try:
        write_atomic(Path(path), json.dumps(data, indent=1).encode())
        return True
    except OSError as exc:
        _unwritable(Path(path).parent, exc, "it will be recomputed next time")
        return False


# -- file hashes ------------------------------------------------------------------------------------
def _stat_key(stat: os.stat_result) -> str:
    # ctime cannot be set back by a user (touch/utime set mtime only), and the inode changes when a file is
    # replaced, so a file edited with its size and mtime restored still gets a new key.
    return f"dev={stat.st_dev}:ino={stat.st_ino}:size={stat.st_size}:mtime={stat.st_mtime_ns}:ctime={stat.st_ctime_ns}"


def _hash_file(path: Path, chunk: int = 1 << 16) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes.

    Files under 32 MiB (every BEIR file here: ~1 GB/s, 13 ms for SciFact's corpus) are hashed on every call,
    so an edited file can never be served a stale hash. Bigger ones (model weights) are remembered in
    ``hashes/<path hash>.json``, keyed by device, inode, size, mtime and ctime."""
    path = Path(path)
    stat = path.stat()
    if stat.st_size < SMALL_FILE:
        return _hash_file(path)
    memo = cache_root() / "hashes" / (hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32] + ".json")
    key = _stat_key(stat)
    known = read_memo(memo, {"key": str, "sha256": str})
    if known.get("key") == key and len(known["sha256"]) == 64:
        return known["sha256"]
    digest = _hash_file(path)
    if _stat_key(path.stat()) == key:  # unchanged while it was being hashed
        write_memo(memo, {"key": key, "sha256": digest, "path": str(path)})
    return digest


# -- per-entry locks ----------------------------------------------------------------------------------
_held: dict[str, int] = {}  # lock file -> open descriptor holding the flock, process-wide
_held_guard = threading.Lock()


def _lock_timeout() -> float:
    try:
        return float(os.environ.get(LOCK_TIMEOUT_ENV) or LOCK_TIMEOUT)
    except ValueError:
        return LOCK_TIMEOUT


def acquire(lock_path: Path, what: str = "") -> bool:
    """Take the exclusive lock ``lock_path`` (re-entrant within a process). False when it cannot be had:
    a read-only cache, or another process held it past ``$HARNESS_CACHE_LOCK_TIMEOUT`` seconds."""
    name = str(lock_path)
    with _held_guard:
        if name in _held:
            return True
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        _unwritable(lock_path.parent, exc, "entries are read without locking, and new ones are not stored")
        return False
    start, told = time.monotonic(), False
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):  # e.g. ENOLCK on a network file system
                    os.close(fd)
                    _unwritable(lock_path.parent, exc, "entries are not locked, so two processes may encode the same one")
                    return False
            waited = time.monotonic() - start
            if not told:
                told = True
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                warn(f"{lock_path}: waiting for process {holder}, which is computing {what or 'this cache entry'}", CacheWarning)
            if waited > _lock_timeout():
                os.close(fd)
                warn(f"{lock_path}: gave up waiting after {waited:.0f} s (${LOCK_TIMEOUT_ENV}); computing it here", CacheWarning)
                return False
            time.sleep(0.05 if waited < 1 else 0.25)
    except BaseException:  # interrupted while waiting
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    except OSError:
        pass
    with _held_guard:
        _held[name] = fd
    return True


def release(lock_path: Path) -> None:
    with _held_guard:
        fd = _held.pop(str(lock_path), None)
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


# -- safetensors entries ------------------------------------------------------------------------------
def tensor_sha256(emb: torch.Tensor) -> str:
    """sha256 of the raw (little-endian float32, row-major) bytes of ``emb``."""
    return hashlib.sha256(emb.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


class Damaged(Exception):
    pass


def read_entry(path: Path, n_rows: int | None = None) -> tuple[torch.Tensor, dict[str, str]]:
    """The embeddings and metadata of a cache entry; raises ``Damaged`` with the reason if anything is off."""
    from safetensors.torch import load

    data = Path(path).read_bytes()
    if len(data) < 8:
        raise Damaged(f"{len(data)} bytes, shorter than a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise Damaged(f"header claims {n} bytes but the file has {len(data) - 8} after the length field (truncated?)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Damaged(f"damaged header ({one_line(exc)})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) and meta is not None:
        raise Damaged("damaged header (__metadata__ is not a table)")
    meta = dict(meta or {})
    try:
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError and a few builtins
        raise Damaged(f"unreadable safetensors ({type(exc).__name__}: {one_line(exc)})") from None
    emb = tensors.get("embeddings")
    if emb is None:
        raise Damaged(f"no 'embeddings' tensor (has {', '.join(tensors) or 'none'})")
    if emb.dtype != torch.float32 or emb.ndim != 2:
        raise Damaged(f"'embeddings' is {emb.dtype} with shape {tuple(emb.shape)}, expected a float32 matrix")
    if n_rows is not None and emb.shape[0] != n_rows:
        raise Damaged(f"{emb.shape[0]} rows for {n_rows} ids")
    stored = meta.get("sha256")
    if stored is not None and tensor_sha256(emb) != stored:
        raise Damaged("checksum mismatch: the tensor bytes changed after the entry was written")
    bad = (~torch.isfinite(emb)).any(dim=1)
    if bad.any():
        raise Damaged(f"{int(bad.sum())} row(s) hold NaN or infinite values (first: row {int(bad.nonzero()[0])})")
    return emb, meta


def write_entry(path: Path, emb: torch.Tensor, meta: dict[str, Any]) -> None:
    """Write an entry (with its checksum) to a temporary file, fsync, and rename it into place."""
    from safetensors.torch import save

    emb = emb.detach().contiguous().float().cpu()
    metadata = {k: str(v) for k, v in meta.items() if k != "sha256"}
    metadata["sha256"] = tensor_sha256(emb)
    write_atomic(path, save({"embeddings": emb}, metadata=metadata))


class EmbeddingCache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else cache_root() / "embeddings"

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def lock_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.lock"

    def get(self, key: str, ids: list[str]) -> torch.Tensor | None:
        """The cached embeddings of ``ids`` under ``key``, or None (a miss: compute them and ``put`` them).

        A hit takes no lock (entries are only ever renamed into place, whole). A miss takes the entry's
        lock, looks again (another process may have just stored it) and, still missing, keeps the lock
        until ``put`` or ``release``: another process asking for the same entry waits for these vectors."""
        path = self.path(key)
        emb: torch.Tensor | None
        if path.is_file():
            try:
                emb, meta = read_entry(path, len(ids))
                if "sha256" in meta:
                    return emb
            except (Damaged, OSError):
                pass  # reported below, under the lock
        acquire(self.lock_path(key), f"{path.name} ({len(ids)} vectors)")
        try:
            emb = self._read(key, path, len(ids))
        except BaseException:
            self.release(key)
            raise
        if emb is not None:
            self.release(key)
        return emb

    def _read(self, key: str, path: Path, n_rows: int) -> torch.Tensor | None:
        try:
            emb, meta = read_entry(path, n_rows)
        except FileNotFoundError:
            return None
        except Damaged as exc:
            warn(f"{path}: damaged cache entry ({exc}); ignoring it and encoding again", CacheWarning)
            return None
        except OSError as exc:
            warn(f"{path}: unreadable cache entry ({exc.strerror or exc}); encoding again", CacheWarning)
            return None
        if "sha256" not in meta:  # written before checksums: verified structurally above; stamp it now
            try:
                write_entry(path, emb, meta)
            except OSError as exc:
                _unwritable(path.parent, exc, "older entries cannot be stamped with their checksum")
        return emb

    def put(self, key: str, emb: torch.Tensor, meta: dict) -> Path | None:
        """Store ``emb`` under ``key`` (atomically, with its checksum) and release the entry's lock if this process holds it.

        Returns the path, or None when nothing was stored (non-finite vectors, or a read-only cache)."""
        path = self.path(key)
        try:
            emb = emb.detach().float().cpu()
            if emb.ndim != 2:
                warn(f"{path}: not cached: the encoder returned shape {tuple(emb.shape)}, not a (rows, dim) matrix", CacheWarning)
                return None
            bad = (~torch.isfinite(emb)).any(dim=1)
            if bad.any():
                warn(f"{path}: not cached: the encoder returned {int(bad.sum())} row(s) with NaN or infinite values "
                     f"(shape {tuple(emb.shape)}); check the encoder's dtype and inputs", CacheWarning)
                return None
            try:  # no lock needed to write (a rename is atomic); the lock only makes other processes wait for this
                write_entry(path, emb, meta)
            except OSError as exc:
                _unwritable(path.parent, exc, "embeddings are computed but not stored")
                return None
            return path
        finally:
            self.release(key)

    def release(self, key: str) -> None:
        release(self.lock_path(key))

    def get_or_compute(self, key: str, ids: list[str], compute: Callable[[], torch.Tensor], meta: dict) -> tuple[torch.Tensor, bool]:
        """``(embeddings, hit)``: the cached entry, or ``compute()`` stored under ``key``; the lock is always released."""
        try:
            emb = self.get(key, ids)
            if emb is not None:
                return emb, True
            emb = compute()
            self.put(key, emb, meta)
            return emb, False
        finally:
            self.release(key)
