"""The ``harness`` command line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness import __version__
from harness.plugins import KINDS, PluginError

console = Console() if Console().is_terminal else Console(width=120)
err = Console(stderr=True)

DESCRIPTION = """\
Gate new retrieval embedding architectures before they are accepted.

Encoders, datasets, heads, losses and checks are pluggy plugins (see `harness plugins`).
Frozen-encoder embeddings are cached (~/.cache/retrieval-harness, or $HARNESS_CACHE_DIR), so only
the first evaluation of an encoder on a dataset pays for encoding.
"""

EPILOG = """\
a first session:
  harness eval --encoder minilm --dataset scifact --data-dir ../shared/data/beir   # frozen NDCG@10
  harness train --head asymmetric --loss infonce_dot --epochs 3                   # watch a head's dynamics
  harness run suites/smoke.toml                                                   # the gate (exit 1 = red)
  harness plugins                                                                 # what is registered, by whom
  harness COMMAND --help                                                          # each command's options
environment:
  HARNESS_DATA_DIR      folder holding BEIR datasets (<dir>/scifact/corpus.jsonl, ...)
  HARNESS_CACHE_DIR     embedding and model cache (default ~/.cache/retrieval-harness)
  HARNESS_LOAD_PLUGINS  entry-point plugins to load: unset = all, empty = none, "a,b" = only those
  HARNESS_BASELINES_DIR stored baselines (default ./baselines)
docs: README.md, docs/gate.md (suites, checks), docs/adding-a-head.md, docs/dynamics.md
"""


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def make_encoder(name: str, **options):
    """A registered encoder, or a local sentence-transformers folder / hub name (``org/model``)."""
    from harness.plugins import get, registry

    if name in registry().components("encoders") or not (Path(name).is_dir() or "/" in name):
        return get("encoders", name).factory(**options)
    from harness.encoders import TransformerEncoder

    return TransformerEncoder(name, **options)


def make_dataset(name: str, data_dir: str | None = None, download: bool = False):
    """A registered dataset found under ``data_dir``, or any BEIR-format folder given by path."""
    from harness.data import BeirDataset
    from harness.plugins import get

    if Path(name).is_dir():
        return BeirDataset(Path(name).name, Path(name))
    return get("datasets", name).factory(data_dir, download=download)


def cmd_eval(args) -> int:
    from harness.evaluate import evaluate

    results = []
    for dataset_name in args.dataset:
        encoder = make_encoder(args.encoder, dtype=args.dtype, **({"device": args.device} if args.device else {}))
        dataset = make_dataset(dataset_name, args.data_dir, args.download)
        results.append(evaluate(encoder, dataset, args.split))
    if args.json:
        payload = [r.summary() for r in results]
        print(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2))
        return 0
    table = Table(title=f"frozen {args.encoder} · split {args.split}")
    for col in ("dataset", "NDCG@10", "Recall@100", "queries", "docs", "encode s", "retrieve s", "score s", "cache"):
        table.add_column(col, justify="right" if col not in ("dataset", "cache") else "left")
    for r in results:
        cache = "hit" if set(r.cache.values()) == {"hit"} else f"miss ({', '.join(k for k, v in r.cache.items() if v == 'miss')})"
        table.add_row(
            r.dataset, f"{r.ndcg10:.4f}", f"{r.recall100:.4f}", str(r.n_queries), str(r.n_docs),
            f"{r.seconds['encode']:.1f}", f"{r.seconds['retrieve']:.2f}", f"{r.seconds['score']:.2f}", cache,
        )
    console.print(table)
    return 0


def cmd_plugins(args) -> int:
    from harness.plugins import components

    rows = [(kind, c) for kind in (args.kind or KINDS) for c in components(kind).values()]
    if args.json:
        print(json.dumps([{"kind": k, "name": c.name, "plugin": c.plugin, "summary": c.summary} for k, c in rows], indent=2))
        return 0
    table = Table(title="registered components")
    for col in ("kind", "name", "plugin", "what it is"):
        table.add_column(col)
    for kind, c in rows:
        table.add_row(kind[:-1], c.name, c.plugin, c.summary)
    console.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "eval", help="NDCG@10 and Recall@100 of a frozen encoder on BEIR datasets",
        description="Score a frozen encoder by exact dense retrieval (top 1000, as BEIR and MTEB).",
        epilog="example: harness eval --encoder minilm --dataset scifact --data-dir ../shared/data/beir",
    )
    p.add_argument("--encoder", required=True, help="registered encoder (mpnet, minilm), a model folder, or a hub name")
    p.add_argument("--dataset", required=True, type=_csv, help="comma-separated dataset names or BEIR folders")
    p.add_argument("--split", default="test", help="qrels split to score (default: test)")
    p.add_argument("--data-dir", help="folder holding BEIR datasets (default: $HARNESS_DATA_DIR)")
    p.add_argument("--download", action="store_true", help="download a missing BEIR dataset with beir.util (needs internet)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="encoder precision (part of the cache key)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plugins", help="list every registered component and the plugin that provides it")
    p.add_argument("--kind", type=_csv, help=f"only these kinds ({', '.join(KINDS)})")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_plugins)

    for extension in EXTENSIONS:
        extension(sub)
    return parser


EXTENSIONS: list = []  # functions adding subcommands (train, run, baselines), appended by their modules


def _load_extensions() -> None:
    import importlib

    for module in ("harness.train_cli", "harness.gate_cli"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def main(argv: list[str] | None = None) -> int:
    _load_extensions()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except PluginError as exc:
        err.print(f"[bold red]plugin error:[/] {exc}", highlight=False)
        return 2
    except Exception as exc:
        from harness.data import DatasetError
        from harness.encoders import EncoderError

        if isinstance(exc, (DatasetError, EncoderError)):
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            return 2
        raise


if __name__ == "__main__":  # `python -m harness.cli`: run the imported module, whose EXTENSIONS the subcommands fill
    from harness import cli as _cli

    sys.exit(_cli.main())
