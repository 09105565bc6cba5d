"""Stored frozen-encoder baselines: mean and per-query NDCG@10 with the provenance they depend on.

One JSON file per encoder, dataset and split: ``baselines/<encoder>/<dataset>-<split>.json``.
``harness baselines update --encoder minilm --dataset scifact,nfcorpus`` regenerates them: every
number is computed first, then each file is written to a temporary sibling and swapped in with
``os.replace``; if anything fails, no file is touched and no temporary file stays behind.

A baseline is only compared with a run whose provenance matches it (encoder weights, dataset file
hashes, max length, dtype, similarity, split). A mismatch stops with ``ProvenanceError`` naming the
field, both values and the command that regenerates the baseline.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness import __version__
from harness.evaluate import evaluate, provenance
from harness.sources import make_dataset, make_encoder

FORMAT = 1
BASELINES_ENV = "HARNESS_BASELINES_DIR"
# Fields that change the numbers: a mismatch in any of them makes a comparison meaningless.
STRICT_FIELDS = ("encoder", "encoder_sha256", "max_length", "dtype", "similarity", "dataset", "split", "files_sha256")


class BaselineError(Exception):
    """A baseline is missing, unreadable or does not match the run; the message says what to do."""


class ProvenanceError(BaselineError):
    """The stored baseline was computed from something else than what the run uses."""


@dataclass
class Baseline:
    encoder: str
    dataset: str
    split: str
    ndcg10: float
    recall100: float
    n_queries: int
    per_query_ndcg10: dict[str, float]
    provenance: dict
    created: str = ""
    format: int = FORMAT
    path: Path | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("path")
        return d


def harness_own() -> Path:
    """The baselines the harness ships: its checkout's ``baselines/`` folder (an editable install's)."""
    return Path(__file__).resolve().parent.parent / "baselines"


def default_root() -> Path:
    """Where stored baselines are when no suite or flag says: ``$HARNESS_BASELINES_DIR``, else ``./baselines``
    if it exists, else the harness's own (so a package's suite needs no path to the harness's checkout)."""
    env = os.environ.get(BASELINES_ENV)
    if env:
        return Path(env)
    here = Path("baselines")
    return here if here.is_dir() or not harness_own().is_dir() else harness_own()


def suite_root(suite_file: Path, key: str | None) -> Path:
    """A suite's baselines, found the same way by every command: its ``baselines_dir`` key (relative to the
    file), else ``$HARNESS_BASELINES_DIR``, else ``../baselines`` beside the suite if it exists, else
    ``default_root()``."""
    if key is not None:
        return (suite_file.parent / key).resolve()
    if os.environ.get(BASELINES_ENV):
        return Path(os.environ[BASELINES_ENV]).resolve()
    beside = (suite_file.parent.parent / "baselines").resolve()
    return beside if beside.is_dir() else default_root().resolve()


def safe_name(name: str) -> str:
    """A file-name-safe form of an encoder, dataset or split name.

    A path (``/abs/data/scifact``, ``./models/x``, ``~/m``) becomes its last component; a hub name
    (``org/model``) becomes ``org--model``; any other character outside ``[A-Za-z0-9._-]`` becomes ``_``
    and a leading dot is dropped. A baseline file therefore always lies inside the baselines folder."""
    name = str(name).strip()
    looks_like_path = os.path.isabs(name) or name.startswith((".", "~")) or Path(name).expanduser().is_dir()
    if looks_like_path:
        name = Path(name).expanduser().resolve().name or "root"
    name = name.replace("\\", "/").strip("/").replace("/", "--")
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return name or "_"


def baseline_path(root: str | Path, encoder: str, dataset: str, split: str) -> Path:
    root = Path(root)
    path = root / safe_name(encoder) / f"{safe_name(dataset)}-{safe_name(split)}.json"
    if os.path.commonpath([os.path.abspath(root), os.path.abspath(path)]) != os.path.abspath(root):  # a last guard
        raise BaselineError(f"{path}: a baseline must lie inside {root}; use plain encoder and dataset names")
    return path


def update_command(encoder: str, dataset: str, split: str, root: str | Path | None = None) -> str:
    where = f" --baselines-dir {root}" if root is not None and Path(root) != Path("baselines") else ""
    return f"harness baselines update --encoder {encoder} --dataset {dataset} --split {split}{where}"


def load(root: str | Path, encoder: str, dataset: str, split: str) -> Baseline:
    path = baseline_path(root, encoder, dataset, split)
    if not path.is_file():
        have = [str(p.relative_to(root)) for p in stored(root)]
        raise BaselineError(
            f"no stored baseline for encoder {encoder!r}, dataset {dataset!r}, split {split!r} ({path} is missing). "
            f"Stored: {', '.join(have) or 'none'}. Create it with `{update_command(encoder, dataset, split, root)}`."
        )
    cmd = update_command(encoder, dataset, split, root)
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise BaselineError(f"{path}: unreadable baseline ({exc.strerror or exc}); check its permissions or regenerate it with `{cmd}`") from exc
    except UnicodeDecodeError as exc:
        raise BaselineError(f"{path}: not UTF-8 (byte offset {exc.start}); regenerate it with `{cmd}`") from exc
    except json.JSONDecodeError as exc:
        raise BaselineError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); regenerate it with `{cmd}`") from exc
    except RecursionError as exc:
        raise BaselineError(f"{path}: not valid JSON (nested too deeply); regenerate it with `{cmd}`") from exc
    return from_dict(raw, path, cmd)


# key -> (types it may have, what it is); every key a baseline file may hold
FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "format": (int, "the baseline format"),
    "encoder": (str, "an encoder name"),
    "dataset": (str, "a dataset name"),
    "split": (str, "a split name"),
    "ndcg10": ((int, float), "a number"),
    "recall100": ((int, float), "a number"),
    "n_queries": (int, "an integer"),
    "per_query_ndcg10": (dict, "an object of query id -> NDCG@10"),
    "provenance": (dict, "an object"),
    "created": (str, "a timestamp"),
}
REQUIRED = ("encoder", "dataset", "split", "ndcg10", "per_query_ndcg10", "provenance")


def from_dict(raw, path: Path, cmd: str) -> Baseline:
    """Validate a baseline file's JSON; every problem is one ``BaselineError`` naming the file and the key."""
    if not isinstance(raw, dict):
        raise BaselineError(f"{path}: a JSON {type(raw).__name__}, not a baseline object; regenerate it with `{cmd}`")
    if raw.get("format") != FORMAT:
        raise BaselineError(
            f"{path}: baseline format {raw.get('format')!r}, this harness reads format {FORMAT}; regenerate it with `{cmd}`"
        )
    unknown = sorted(k for k in raw if k not in FIELDS)
    if unknown:
        raise BaselineError(f"{path}: unknown key(s) {', '.join(repr(k) for k in unknown)} (known: {', '.join(FIELDS)}); "
                            f"remove them or regenerate the baseline with `{cmd}`")
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise BaselineError(f"{path}: baseline lacks key(s) {', '.join(missing)}; regenerate it with `{cmd}`")
    for key, value in raw.items():
        types, what = FIELDS[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise BaselineError(f"{path}: key {key!r} must be {what}, not {type(value).__name__}; regenerate it with `{cmd}`")
        if isinstance(value, float) and not math.isfinite(value):
            raise BaselineError(f"{path}: key {key!r} is {value}; regenerate it with `{cmd}`")
    for qid, v in raw["per_query_ndcg10"].items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise BaselineError(f"{path}: per_query_ndcg10[{qid!r}] is {v!r}, not a finite number; regenerate it with `{cmd}`")
    raw = dict(raw)
    raw.pop("format")
    raw.setdefault("recall100", float("nan"))
    raw.setdefault("n_queries", len(raw["per_query_ndcg10"]))
    return Baseline(**raw, path=path)


def current_provenance(encoder_name: str, dataset_name: str, split: str, data_dir: str | None = None) -> dict:
    """The provenance a baseline of ``encoder_name`` on ``dataset_name``/``split`` would have now."""

    encoder = make_encoder(encoder_name)
    dataset = make_dataset(dataset_name, data_dir)
    return provenance(encoder, dataset, split, encoder.similarity)


def verify(baseline: Baseline, current: dict, root: str | Path | None = None) -> list[str]:
    """Raise ``ProvenanceError`` on the first strict field that differs; return warnings for the rest."""
    stored = baseline.provenance
    cmd = update_command(baseline.encoder, baseline.dataset, baseline.split, root)
    for key in STRICT_FIELDS:
        a, b = stored.get(key), current.get(key)
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                a = {k: a.get(k) for k in diff}
                b = {k: b.get(k) for k in diff}
            raise ProvenanceError(
                f"baseline {baseline.path or ''} does not match this run: provenance field {key!r} is {a!r} in the "
                f"stored baseline but {b!r} now. Comparing them would compare unlike things. If the change is "
                f"intended, regenerate the baseline with `{cmd}`; otherwise restore the original "
                f"{'model weights' if key == 'encoder_sha256' else 'data files' if key == 'files_sha256' else key}."
            )
    warnings = []
    if stored.get("harness_version") != current.get("harness_version"):
        warnings.append(
            f"baseline {baseline.path or ''} was written by harness {stored.get('harness_version')!r}, this is "
            f"{current.get('harness_version')!r} (scores match by provenance; regenerate with `{cmd}` to refresh)"
        )
    return warnings


def load_verified(root, encoder: str, dataset: str, split: str, data_dir: str | None = None) -> tuple[Baseline, list[str]]:
    baseline = load(root, encoder, dataset, split)
    return baseline, verify(baseline, current_provenance(encoder, dataset, split, data_dir), root)


def compute(encoder_name: str, dataset_name: str, split: str, data_dir: str | None = None, **encoder_options) -> Baseline:

    encoder = make_encoder(encoder_name, **encoder_options)
    result = evaluate(encoder, make_dataset(dataset_name, data_dir), split)
    prov = dict(result.provenance, harness_version=__version__)
    return Baseline(
        encoder=encoder_name,
        dataset=dataset_name,
        split=split,
        ndcg10=result.ndcg10,
        recall100=result.recall100,
        n_queries=result.n_queries,
        per_query_ndcg10=dict(sorted(result.per_query_ndcg10.items())),
        provenance=prov,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def write_all(root: str | Path, baselines: list[Baseline]) -> list[Path]:
    """Write every baseline or none: temporary files first, then ``os.replace`` each into place."""
    root = Path(root)
    staged: list[tuple[Path, Path]] = []
    try:
        for b in baselines:
            path = baseline_path(root, b.encoder, b.dataset, b.split)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            tmp.write_text(json.dumps(b.to_dict(), indent=1, sort_keys=False) + "\n")
            staged.append((tmp, path))
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return [path for _, path in staged]


def update(
    root: str | Path, encoders: list[str], datasets: list[str], splits: list[str], data_dir: str | None = None,
    **encoder_options,
) -> list[Baseline]:
    """Recompute and atomically store the baselines of every encoder x dataset x split."""
    computed = [compute(e, d, s, data_dir, **encoder_options) for e in encoders for d in datasets for s in splits]
    paths = write_all(root, computed)
    for b, p in zip(computed, paths):
        b.path = p
    return computed


def stored(root: str | Path) -> list[Path]:
    return sorted(Path(root).glob("*/*.json"))
