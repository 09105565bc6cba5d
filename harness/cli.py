"""The ``harness`` command line."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import signal
import sys
import threading
import warnings

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from harness import __version__
from harness.files import print_traceback
from harness.registry import KINDS, PluginError, UnknownComponentError, registry

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
  HARNESS_BASELINES_DIR stored baselines (default ./baselines if it exists, else the harness's own)
  HARNESS_CACHE_LOCK_TIMEOUT  seconds to wait for another process encoding the same cache entry (default 3600)
exit status (every command):
  0    success (harness run: the gate passed)
  1    harness run: the gate failed (a FAIL, XPASS or ERROR); baselines update --suite: the candidate
       was refused, nothing written
  2    bad input or environment: a suite, data file, baseline, encoder folder, cache folder or plugin is
       wrong; one line on stderr names the file (and line or key) and what to do; nothing half-written
  130  interrupted by SIGINT (Ctrl-C); 143: terminated by SIGTERM. Caches and baselines are intact; a
       report folder left behind holds an INCOMPLETE marker instead of a report
  HARNESS_TRACEBACK=1 prints the Python traceback behind an exit-2 message
docs: README.md, docs/gate.md (suites, checks), docs/adding-a-head.md, docs/dynamics.md, docs/reliability.md
"""

EXIT_OK, EXIT_FAIL, EXIT_ERROR, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 2, 130, 143


def say(prefix: str, style: str, message: object, console: Console | None = None) -> None:
    """Print ``prefix message`` as one line; ``message`` is never parsed as rich markup (``[[x]]``, ``[/x]`` stay)."""
    from harness.files import one_line

    text = Text.assemble((prefix, style), " ", one_line(message)) if prefix else Text(one_line(message))
    (console or err).print(text, soft_wrap=True, highlight=False)


def error(message: object) -> None:
    """``error: message`` on one line; given the exception being handled, its traceback first when
    ``$HARNESS_TRACEBACK`` is set (every command's exit-2 path comes through here or ``main``)."""
    if isinstance(message, BaseException):
        print_traceback(message)
    say("error:", "bold red", message)


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM, so that ``finally`` blocks run as they do for Ctrl-C."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signum)
        self.signum = signum


def interrupt_code(exc: BaseException) -> tuple[int, str]:
    return (EXIT_SIGTERM, "SIGTERM") if isinstance(exc, Terminated) else (EXIT_SIGINT, "SIGINT")


@contextlib.contextmanager
def signals():
    """While a command runs, SIGTERM raises ``Terminated`` (SIGINT already raises KeyboardInterrupt); both
    handlers are restored afterwards (``main`` may run inside another program, e.g. pytest)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum, frame):
        raise Terminated(signum)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def ignore_signals() -> None:
    """While cleaning up after an interrupt, a second Ctrl-C must not leave a traceback or half the cleanup
    (``signals`` restores the handlers when the command returns)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    from harness.files import HarnessWarning

    if issubclass(category, HarnessWarning):
        say("warning:", "yellow", message)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def harness_errors() -> tuple[type[BaseException], ...]:
    """The exceptions whose message is the whole story: printed as one line, exit 2."""
    from harness.baselines import BaselineError
    from harness.cache import CacheError
    from harness.data import DatasetError
    from harness.encoders import EncoderError
    from harness.gate import GateError
    from harness.suite import SuiteError

    return (PluginError, DatasetError, EncoderError, CacheError, SuiteError, BaselineError, GateError)


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


from harness.sources import make_dataset, make_encoder  # noqa: E402,F401  (the library's; re-exported for scripts)


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
    table = Table(title=escape(f"frozen {args.encoder} · split {args.split}"))
    for col in ("dataset", "NDCG@10", "Recall@100", "queries", "docs", "encode s", "retrieve s", "score s", "cache"):
        table.add_column(col, justify="right" if col not in ("dataset", "cache") else "left")
    for r in results:
        cache = "hit" if set(r.cache.values()) == {"hit"} else f"miss ({', '.join(k for k, v in r.cache.items() if v == 'miss')})"
        table.add_row(
            escape(r.dataset), f"{r.ndcg10:.4f}", f"{r.recall100:.4f}", str(r.n_queries), str(r.n_docs),
            f"{r.seconds['encode']:.1f}", f"{r.seconds['retrieve']:.2f}", f"{r.seconds['score']:.2f}", escape(cache),
        )
    console.print(table)
    return 0


SINGULAR = {"encoders": "encoder", "datasets": "dataset", "heads": "head", "losses": "loss", "checks": "check"}
PLURAL = {v: k for k, v in SINGULAR.items()}


def cmd_plugins(args) -> int:
    from harness.registry import components

    kinds = [PLURAL.get(k, k) for k in (args.kind or KINDS)]  # "head" = "heads"
    rows = [(kind, c) for kind in kinds for c in components(kind).values()]
    if args.json:
        print(json.dumps([{"kind": k, "name": c.name, "plugin": c.plugin, "summary": c.summary} for k, c in rows], indent=2))
        return 0
    table = Table(title="registered components")
    for col in ("kind", "name", "plugin", "what it is"):
        table.add_column(col)
    for kind, c in rows:
        table.add_row(SINGULAR[kind], escape(c.name), escape(c.plugin), escape(c.summary))
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

    p = sub.add_parser("plugins", help="list every registered component and the plugin that provides it",
                       description="List every registered encoder, dataset, head, loss and check with the plugin that "
                                   "provides it (built-ins are plugins too; installed packages join through the "
                                   "'retrieval_harness' entry-point group, docs/adding-a-head.md).",
                       epilog="examples:\n  harness plugins\n  harness plugins --kind heads,losses\n"
                              "  harness plugins --kind checks --json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", type=_csv, help=f"only these kinds ({', '.join(KINDS)}; head = heads)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_plugins)

    pm = registry().pm
    for name in COMMAND_PLUGINS:  # the command line's own plugins; entry-point plugins may add commands too
        module = importlib.import_module(name)
        if not pm.is_registered(module):
            pm.register(module, name)
    pm.hook.register_commands(subparsers=sub)
    return parser


COMMAND_PLUGINS = ("harness.train_cli", "harness.gate_cli")  # built-in subcommands, registered by the CLI, not the library


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # loads the plugins: a broken one is reported like any plugin error
    except PluginError as exc:
        print_traceback(exc)
        say("plugin error:", "bold red", str(exc))
        return EXIT_ERROR
    args = parser.parse_args(argv)
    with warnings.catch_warnings(), signals():
        warnings.showwarning = _show_warning
        from harness.files import HarnessWarning

        warnings.simplefilter("default", HarnessWarning)
        try:
            return args.func(args) or 0
        except (KeyboardInterrupt, Terminated) as exc:
            ignore_signals()
            code, name = interrupt_code(exc)
            say("interrupted:", "bold red", f"{name}: `harness {args.command}` stopped before it finished; caches and baselines "
                f"are only ever replaced whole, so they are intact; run the command again")
            return code
        except Exception as exc:
            message = _message(exc)
            if message is None:
                raise
            print_traceback(exc)
            if isinstance(exc, PluginError) and not isinstance(exc, UnknownComponentError):
                say("plugin error:", "bold red", message)
            else:
                error(message)
            return EXIT_ERROR


def _message(exc: Exception) -> str | None:
    """The one-line message for an error that is the user's to fix, or None for a bug (shown as a traceback)."""
    if isinstance(exc, harness_errors()):
        return str(exc)
    if isinstance(exc, UnicodeDecodeError):
        return f"cannot read a file: not UTF-8 (byte offset {exc.start}: {exc.reason}); save it as UTF-8"
    if isinstance(exc, OSError) and exc.filename:
        hints: dict[int | None, str] = {13: "check its permissions", 30: "the file system is read-only: choose a writable folder",
                                        28: "free some disk space", 2: "check the path",
                                        17: "a file is in the way of a folder: give a folder path (e.g. --out)",
                                        20: "a part of the path is a file, not a folder: give a folder path"}
        what = hints.get(exc.errno, "check the path and its permissions")
        return f"{exc.filename}: {exc.strerror or type(exc).__name__}; {what}"
    return None


if __name__ == "__main__":  # `python -m harness.cli`
    sys.exit(main())
